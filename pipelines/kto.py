"""KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization") with TRL's ``KTOTrainer``.

The offline method that needs no pairs: each example is a (prompt, completion) with a binary label, desirable or
undesirable. Loss per example, with r_θ(x, y) = log π_θ(y|x) − log π_ref(y|x) (summed over the completion tokens, EOS
included) and the reference point z_ref = max(0, mean over mismatched (x, y') of the same micro-batch of r_θ(x, y'))
(no gradient through it):

  desirable     λ_D (1 − σ(β (r_θ(x, y) − z_ref)))                    paper eq. 7 (TRL's ``loss_type="kto"``)
  undesirable   λ_U (1 − σ(β (z_ref − r_θ(x, y))))

TRL 1.16 has ``KTOTrainer`` in its stable API (``from trl import KTOTrainer``; ``trl.experimental.kto`` is a deprecated
alias of the same class). We use it as it is, with the harness's reference, callbacks, checkpoints and guard
(``pipelines.trainer_run``); the examples come from the same cached preference set every other method trains on
(:func:`unpaired_examples`).

Two constraints of TRL's trainer shape the data path. (1) z_ref's mismatched pairs are built once, before training,
by rotating the completions by one inside each consecutive block of ``per_device_train_batch_size`` examples, and the
trainer insists on sequential sampling so that the blocks are the batches; so :func:`unpaired_examples` fixes a
seeded random order up front and the length-sorted micro-batches of DPO (``harness.lm.batching``) are not used: sorting
by length would change which completions estimate each block's z_ref. (2) With micro-batches (gradient
accumulation) a block is a micro-batch, so z_ref is estimated per micro-batch (``pipeline.micro_batch_size``
examples), the losses are averaged over the batch as usual.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from harness.lm.batching import micro_batches
from harness.runs import checkpoint
from harness.runs.context import RunContext
from pipelines.schemas import KTOPipeline
from pipelines.trainer_run import (
    GuardedTraining,
    finish,
    prepare,
    shared_args,
    trainer_callbacks,
)

log = logging.getLogger("harness.kto")


def unpaired_examples(prompts: list[str], chosen: list[str], rejected: list[str], seed: int) -> dict[str, list]:
    """KTO's unpaired examples from preference pairs: each pair (x, y_w, y_l) gives (x, y_w) desirable and (x, y_l)
    undesirable, in one seeded random order.

    Why this derivation: it is the one of the KTO paper's experiments on paired data (and TRL's
    ``unpair_preference_dataset``), and it keeps KTO on exactly the data DPO sees: the same completions, each as often
    as in the pairs, so a budget in examples is twice a budget in pairs. Nothing is de-duplicated: in the all-pairs
    preference set (6 pairs from 4 samples per prompt) the best sample is desirable in 3 examples, the worst
    undesirable in 3, and a middle one appears with both labels (desirable against a worse sample, undesirable against
    a better one), so its two losses pull against each other in proportion to how often it won, as its pairs do in
    DPO. De-duplicating would have to pick one label for such a sample, and would reweight the data away from DPO's.

    The order is fixed here, not by the trainer, because TRL's KTO trains in dataset order (see the module
    docstring); drawing it from ``seed`` mixes labels and prompts in every block.

    Args:
        prompts, chosen, rejected: the pairs' columns, equal lengths n.
        seed: seeds the order.
    Returns:
        Columns ``prompt``, ``completion``, ``label`` (bool, True = desirable), 2n rows.
    """
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(
            f"unpaired_examples: columns of unequal length ({len(prompts)}, {len(chosen)}, {len(rejected)})"
        )
    prompt = list(prompts) + list(prompts)
    completion = list(chosen) + list(rejected)
    label = [True] * len(chosen) + [False] * len(rejected)
    order = np.random.default_rng(seed).permutation(len(prompt)).tolist()
    return {
        "prompt": [prompt[i] for i in order],
        "completion": [completion[i] for i in order],
        "label": [label[i] for i in order],
    }


def kto_config(
    cfg: KTOPipeline,
    output_dir: str,
    *,
    seed: int,
    use_cpu: bool,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """TRL's KTOConfig from our pipeline config, on :func:`pipelines.trainer_run.shared_args`; warm-up then a constant
    learning rate, as DPO."""
    from trl import KTOConfig

    accumulate = micro_batches(cfg.batch_size, cfg.micro_batch_size, "pipeline.micro_batch_size")
    return KTOConfig(
        loss_type="kto",
        beta=cfg.beta,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size // accumulate,
        gradient_accumulation_steps=accumulate,
        per_device_eval_batch_size=cfg.batch_size // accumulate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_ratio,
        weight_decay=0.0,
        train_sampling_strategy="sequential",  # TRL's requirement: the blocks that estimate z_ref are the batches
        **shared_args(
            output_dir,
            seed=seed,
            use_cpu=use_cpu,
            logging_steps=logging_steps,
            checkpoint_every=checkpoint_every,
            precision=precision,
        ),
        include_num_input_tokens_seen="non_padding",  # the compute axis: tokens through forward+backward
        prediction_loss_only=True,
    )


def build_trainer(
    policy,
    reference,
    tok,
    examples,
    cfg: KTOPipeline,
    output_dir: str,
    *,
    seed: int = 0,
    use_cpu: bool = True,
    callbacks: list | None = None,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """TRL's ``KTOTrainer`` (with the harness's non-finite-loss guard) on ``examples`` (columns prompt, completion,
    label) with π_ref = ``reference``."""
    from datasets import Dataset
    from trl import KTOTrainer

    trainer_cls = type("HarnessKTOTrainer", (GuardedTraining, KTOTrainer), {})
    args = kto_config(
        cfg,
        output_dir,
        seed=seed,
        use_cpu=use_cpu,
        logging_steps=logging_steps,
        checkpoint_every=checkpoint_every,
        precision=precision,
    )
    return trainer_cls(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_dict(examples),
        processing_class=tok,
        callbacks=callbacks or [],
    )


def run(ctx: RunContext) -> dict:
    """Train π_θ from π_SFT with KTO on the unpaired examples of the preference set; evaluate along the way."""
    cfg: KTOPipeline = ctx.cfg.pipeline
    resume = checkpoint.last_trainer_checkpoint(ctx.folder, ctx.key)  # (folder, mark) of a killed attempt, or None
    policy, reference, tok, train, tracker, evaluation = prepare(ctx, saved=resume[1] if resume else None)
    examples = unpaired_examples(train["prompt"], train["chosen"], train["rejected"], ctx.cfg.seed)
    logs, callbacks = trainer_callbacks(ctx, tracker, evaluation)
    trainer = build_trainer(
        policy,
        reference,
        tok,
        examples,
        cfg,
        str(checkpoint.trainer_dir(ctx.folder)),
        seed=ctx.cfg.seed,
        use_cpu=ctx.device.type == "cpu",
        callbacks=callbacks,
        checkpoint_every=cfg.checkpoint_every,
        precision=ctx.precision,
    )
    log.info(
        "KTO (β=%s, λ_D=%s, λ_U=%s) on %d examples from %d pairs",
        cfg.beta,
        cfg.desirable_weight,
        cfg.undesirable_weight,
        len(examples["label"]),
        len(train),
    )
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    facts = {
        "beta": cfg.beta,
        "desirable_weight": cfg.desirable_weight,
        "undesirable_weight": cfg.undesirable_weight,
        "steps": trainer.state.global_step,
        "train_pairs": len(train),
        "train_examples": len(trainer.train_dataset),
        "train_loss": result.training_loss,
        "losses_finite": all(math.isfinite(x) for x in logs.losses + [result.training_loss]),
        "train_seconds": result.metrics.get("train_runtime"),
    }
    return finish(ctx, trainer.model, reference, tok, tracker, evaluation, facts)
