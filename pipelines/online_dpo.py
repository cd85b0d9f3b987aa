"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback") with TRL's
``OnlineDPOTrainer`` (``trl.experimental.online_dpo``, TRL 1.16).

Each update: for each of ``batch_size`` prompts, sample two completions from the *current* policy (temperature
``temperature``, up to ``max_new_tokens``, stop at EOS); the learned Bradley–Terry reward model r_φ (from the stage
cache, as ``ppo`` uses it) scores both and the higher is chosen (a tie goes to the first sample, TRL's rule); the
DPO loss −log σ(β h) on that pair against the frozen π_ref = π_SFT; one AdamW step. The shared evaluator runs from
the same callback as DPO's (``pipelines.trainer_run``), so the rows are DPO's rows.

TRL's trainer serves on CPU with our models (transformers' ``generate`` samples, no vLLM needed), with two
adaptations, each at one of its hooks:

1. **The judge is a function, not the reward model.** Given a reward *model*, TRL scores the decoded text
   ``prompt + completion`` without EOS (``batch_decode(..., skip_special_tokens=True)``, ``add_special_tokens=False``),
   so r_φ would be read at the last response token. Our r_φ was trained by TRL's RewardTrainer, which appends EOS,
   and reads its score at that EOS (``pipelines.stages.reward_model``). So the judge is :class:`RewardModelJudge`, TRL's
   callable reward interface around ``TextScorer``, which appends EOS as in training, exactly as the evaluator's
   proxy_reward and PPO's truncated responses are scored.
2. **Log-probs with position ids.** TRL's ``_forward`` runs the left-padded prompt + completion without position ids,
   and GPT-2 (our ``tiny`` model, and gpt2-large) then counts positions from the first *pad* token, so a padded
   prompt's completion is scored at shifted positions: not the distribution ``generate`` sampled from (it derives
   positions from the attention mask), nor the one the evaluator measures. :class:`HarnessOnlineDPOTrainer`
   overrides ``_forward`` with ``harness.lm.sampling.response_logits`` (positions that skip the padding) and
   ``losses.sequence_logps``; it also counts the tokens through the policy's forward+backward for the rows'
   compute axis (``generate``'s samples carry no ``input_ids`` for transformers to count).

No micro-batching: under gradient accumulation TRL's ``training_step`` backpropagates each micro-batch's mean loss
unscaled (the accelerator is built with ``num_steps=1``), which sums rather than averages the gradients; with one
batch per step the update is the batch's own.

Budget, as PPO's: ``updates`` optimizer steps of ``batch_size`` prompts, i.e. ``updates x 2 x batch_size`` sampled
episodes (20 x 64 by default, PPO's 20 updates x 64 episodes) and ``updates x batch_size`` pairs.
"""

from __future__ import annotations

import logging
import math

import torch

from harness.lm.models import disable_dropout
from harness.lm.sampling import Samples, response_logits
from harness.runs import checkpoint
from harness.runs.context import RunContext
from pipelines.losses import sequence_logps
from pipelines.schemas import OnlineDPOPipeline
from pipelines.trainer_run import (
    GuardedTraining,
    finish,
    load_frozen_reference,
    shared_args,
    start_tracking,
    trainer_callbacks,
)

log = logging.getLogger("harness.online_dpo")


class RewardModelJudge:
    """TRL's reward-function interface over r_φ: ``(prompts, completions, **kwargs) -> list[float]``, each score
    r_φ(prompt + completion + EOS) (``pipelines.stages.reward_model.TextScorer``)."""

    __name__ = "reward_model"  # TRL names reward functions by __name__ in its logs

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> list[float]:  # noqa: ARG002
        return [float(x) for x in self.scorer([p + c for p, c in zip(prompts, completions)])]


def _online_dpo_trainer_class():
    from trl.experimental.online_dpo import OnlineDPOTrainer

    class HarnessOnlineDPOTrainer(GuardedTraining, OnlineDPOTrainer):
        """TRL's ``OnlineDPOTrainer`` with log-probs at the right positions (see the module docstring, 2.) and the
        harness's non-finite-loss guard; sampling, judging, the chosen/rejected assignment and the loss are TRL's."""

        def _forward(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs=None):
            """(B, T) log π(y_t | x, y_<t) of the completion tokens, 0 on padding (TRL masks it out as well)."""
            if vision_inputs is not None:
                raise NotImplementedError("the harness trains text-only policies")
            B = prompt_ids.shape[0]
            s = Samples(
                prompt_ids,
                prompt_mask,
                completion_ids,
                completion_mask.float(),
                ended=torch.zeros(B, dtype=torch.bool, device=prompt_ids.device),
                prompt_index=torch.arange(B, device=prompt_ids.device),
            )
            if torch.is_grad_enabled():  # the policy's training forward (the reference runs under no_grad)
                self.state.num_input_tokens_seen += int(s.attention_mask.sum())
            return sequence_logps(response_logits(model, s), completion_ids, completion_mask)

    return HarnessOnlineDPOTrainer


def online_dpo_config(
    cfg: OnlineDPOPipeline,
    output_dir: str,
    *,
    max_length: int,
    seed: int,
    use_cpu: bool,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """TRL's OnlineDPOConfig from our pipeline config, on :func:`pipelines.trainer_run.shared_args`: DPO's sigmoid loss,
    pure sampling (no top-k/top-p) at ``temperature``, no missing-EOS penalty (PPO's default: every method is
    compared on the same objective), warm-up then a constant learning rate (as DPO). ``max_length``: the model's
    positions, so TRL never cuts a prompt (the preflight checks prompt + ``max_new_tokens`` fit)."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    return OnlineDPOConfig(
        beta=[cfg.beta],
        loss_type="sigmoid",
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        max_steps=cfg.updates,
        max_new_tokens=cfg.max_new_tokens,
        max_length=max_length,
        temperature=cfg.temperature,
        top_p=1.0,
        top_k=0,
        missing_eos_penalty=None,
        use_vllm=False,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_ratio,
        weight_decay=0.0,
        **shared_args(
            output_dir,
            seed=seed,
            use_cpu=use_cpu,
            logging_steps=logging_steps,
            checkpoint_every=checkpoint_every,
            precision=precision,
        ),
        include_num_input_tokens_seen="no",  # counted in _forward instead (the batches hold prompt strings only)
    )


def model_positions(policy) -> int:
    return (
        getattr(policy.config, "max_position_embeddings", None)
        or getattr(policy.config, "n_positions", None)
        or 1_000_000
    )


def build_trainer(
    policy,
    reference,
    tok,
    judge,
    prompts: list[str],
    cfg: OnlineDPOPipeline,
    output_dir: str,
    *,
    seed: int = 0,
    use_cpu: bool = True,
    callbacks: list | None = None,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """A :class:`HarnessOnlineDPOTrainer` on ``prompts`` with π_ref = ``reference`` and ``judge`` as the reward."""
    from datasets import Dataset

    args = online_dpo_config(
        cfg,
        output_dir,
        max_length=model_positions(policy),
        seed=seed,
        use_cpu=use_cpu,
        logging_steps=logging_steps,
        checkpoint_every=checkpoint_every,
        precision=precision,
    )
    return _online_dpo_trainer_class()(
        model=policy,
        ref_model=reference,
        reward_funcs=judge,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
        processing_class=tok,
        callbacks=callbacks or [],
    )


def run(ctx: RunContext) -> dict:
    """Train π_θ from π_SFT with online DPO judged by r_φ; evaluate along the way. A killed job continues from its
    last trainer checkpoint, as DPO's."""
    from pipelines.stages.reward_model import TextScorer, load_reward_model
    from pipelines.stages.sft import load_sft

    cfg: OnlineDPOPipeline = ctx.cfg.pipeline
    resume = checkpoint.last_trainer_checkpoint(ctx.folder, ctx.key)  # (folder, mark) of a killed attempt, or None
    policy, tok, sft = load_sft(ctx)
    policy = disable_dropout(policy)  # as every method's policy (pipelines.trainer_run.prepare)
    reference = load_frozen_reference(sft.path, tok, ctx.device, ctx.cfg.model.trust_remote_code)
    reward_model, _, _ = load_reward_model(ctx)
    judge = RewardModelJudge(TextScorer(reward_model, tok))
    tracker, evaluation = start_tracking(ctx, reference, tok, resume[1] if resume else None, proxy=judge.scorer)
    logs, callbacks = trainer_callbacks(ctx, tracker, evaluation)
    trainer = build_trainer(
        policy,
        reference,
        tok,
        judge,
        ctx.task.train_prompts,
        cfg,
        str(checkpoint.trainer_dir(ctx.folder)),
        seed=ctx.cfg.seed,
        use_cpu=ctx.device.type == "cpu",
        callbacks=callbacks,
        checkpoint_every=cfg.checkpoint_every,
        precision=ctx.precision,
    )
    log.info("online DPO (β=%s): %d updates x %d prompts x 2 samples", cfg.beta, cfg.updates, cfg.batch_size)
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    steps = trainer.state.global_step
    facts = {
        "beta": cfg.beta,
        "steps": steps,
        "pairs": steps * cfg.batch_size,
        "episodes": steps * cfg.batch_size * 2,
        "train_loss": result.training_loss,
        "losses_finite": all(math.isfinite(x) for x in logs.losses + [result.training_loss]),
        "train_seconds": result.metrics.get("train_runtime"),
    }
    return finish(ctx, trainer.model, reference, tok, tracker, evaluation, facts)
