"""DPO, IPO and conservative DPO (cDPO) with TRL's ``DPOTrainer``, on the shared preference set.

One stage: the policy starts at π_SFT and the reference is a *separately loaded*, frozen copy of π_SFT, passed to the
trainer explicitly (TRL would otherwise reload it by ``model.config._name_or_path``). The loss on a pair (x, y_w, y_l)
is a function of h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x) (log-probs summed over the completion
tokens, EOS included):

  dpo   (sigmoid)  −log σ(βh)                                    Rafailov et al. 2023, eq. 7
  ipo   (ipo)      (h̄ − 1/(2β))², h̄ from length-averaged logps   Azar et al. 2023, eq. 17 (TRL's normalisation)
  cdpo  (sigmoid, ε > 0)  −(1−ε) log σ(βh) − ε log σ(−βh)        Mitchell 2023, "DPO with noisy preferences"
  robust (dpo with loss_type=robust)                             Chowdhury et al. 2024, eq. 8

TRL 1.16 computes the first, second and fourth itself. Its ``sigmoid`` ignores ``label_smoothing``, so cDPO would
silently train plain DPO; :class:`HarnessDPOTrainer` overrides the one loss hook TRL has (``_compute_loss``) for that
case only and takes the loss from ``pipelines.losses.dpo_family_loss``.

The set-up, the trainer arguments, the callbacks that put the trainer on the frontier, the guards, resume and the end
of a run are those of every trainer-based method: ``pipelines.trainer_run``.
"""

from __future__ import annotations

import logging
import math

from harness.lm.batching import LengthSortedMicroBatches, trainer_batches
from harness.runs import checkpoint
from harness.runs.context import RunContext
from pipelines.losses import dpo_family_loss
from pipelines.schemas import DPOPipeline
from pipelines.trainer_run import (
    GuardedTraining,
    finish,
    prepare,
    shared_args,
    trainer_callbacks,
    trainer_max_steps,
)

log = logging.getLogger("harness.dpo")


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


def _dpo_trainer_class():
    from trl import DPOTrainer

    class HarnessDPOTrainer(GuardedTraining, LengthSortedMicroBatches, DPOTrainer):
        """TRL's ``DPOTrainer`` with conservative DPO taken from ``losses.dpo_family_loss``.

        TRL 1.16's ``_compute_loss`` is the one place its loss is computed (the loss types are an inline ``elif``
        chain), and its ``sigmoid`` branch ignores ``label_smoothing``. For ``sigmoid`` with ε > 0 we therefore
        compute the loss here: the same policy forward as TRL (its fused LM head: per-token log-probs of the
        completion tokens, summed), the reference log-probs from TRL's own ``compute_ref_log_probs`` (or the
        precomputed ones), then −(1−ε) log σ(βh) − ε log σ(−βh), and TRL's pair metrics (rewards/*, logps/*).
        Every other case is TRL's code, untouched. Batches are split into length-sorted micro-batches
        (``harness.lm.batching``): the same update with less padding. A non-finite loss stops training
        (:class:`GuardedTraining`), and a resumed run sees the data in the order of an uninterrupted one
        (``LengthSortedSampler.set_epoch``).
        """

        def _compute_loss(self, model, inputs, return_outputs):
            if not (self.loss_types == ["sigmoid"] and self.label_smoothing > 0):
                return super()._compute_loss(model, inputs, return_outputs)
            if return_outputs:
                raise NotImplementedError("conservative DPO does not return model outputs")
            return self._conservative_dpo_loss(model, inputs)

        def _conservative_dpo_loss(self, model, inputs):
            mode = "train" if self.model.training else "eval"
            completion_mask = inputs["completion_mask"]  # (2B, L): 1 on completion tokens; rows = [chosen; rejected]
            model_kwargs = {
                k: v
                for k, v in inputs.items()
                if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
            }
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
            seq_len = completion_mask.shape[1] - 1
            logps = outputs.log_probs[:, -seq_len:].sum(dim=1)  # (2B,): 0 on non-completion positions
            chosen_logps, rejected_logps = logps.chunk(2, dim=0)
            if self.precompute_ref_logps:
                ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(self.ref_model, inputs)
            losses, chosen_rewards, rejected_rewards = dpo_family_loss(
                chosen_logps,
                rejected_logps,
                ref_chosen_logps,
                ref_rejected_logps,
                self.beta,
                "sigmoid",
                self.label_smoothing,
            )
            metrics = self._metrics[mode]
            metrics["rewards/chosen"].append(chosen_rewards.mean().item())
            metrics["rewards/rejected"].append(rejected_rewards.mean().item())
            metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
            metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
            metrics["logps/chosen"].append(chosen_logps.detach().mean().item())
            metrics["logps/rejected"].append(rejected_logps.detach().mean().item())
            return losses.mean()

    return HarnessDPOTrainer


def dpo_config(
    cfg: DPOPipeline,
    output_dir: str,
    *,
    seed: int,
    use_cpu: bool,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """TRL's DPOConfig from our pipeline config, on :func:`shared_args` (fp32, a checkpoint every ``checkpoint_every``
    steps, no TRL reporting). The learning rate warms up linearly over
    ``warmup_ratio`` of the steps (transformers 5 reads warmup_steps < 1 as a fraction) and then stays constant, as
    in the DPO paper's reference code.
    """
    from trl import DPOConfig

    per_device, accumulate = trainer_batches(cfg.batch_size, cfg.micro_batch_size, "pipeline")
    return DPOConfig(
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        label_smoothing=cfg.label_smoothing,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulate,
        per_device_eval_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=trainer_max_steps(cfg.max_steps),
        max_length=cfg.max_length,
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
        include_num_input_tokens_seen="non_padding",  # the compute axis: tokens through forward+backward
        prediction_loss_only=True,  # held-out evaluation needs the loss and TRL's metrics, not the logits
    )


def build_trainer(
    policy,
    reference,
    tok,
    train_dataset,
    cfg: DPOPipeline,
    output_dir: str,
    *,
    seed: int = 0,
    use_cpu: bool = True,
    callbacks: list | None = None,
    eval_dataset=None,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """A :class:`HarnessDPOTrainer` on ``train_dataset`` (columns prompt, chosen, rejected) with π_ref = ``reference``;
    trainer checkpoints in ``output_dir`` every ``checkpoint_every`` steps (0: none)."""
    trainer_cls = _dpo_trainer_class()
    args = dpo_config(
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
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tok,
        callbacks=callbacks or [],
    )


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


def run(ctx: RunContext) -> dict:
    """Train π_θ from π_SFT with the DPO-family loss on the preference set; evaluate along the way."""
    cfg: DPOPipeline = ctx.cfg.pipeline
    resume = checkpoint.last_trainer_checkpoint(ctx.folder, ctx.key)  # (folder, mark) of a killed attempt, or None
    policy, reference, tok, train, tracker, evaluation = prepare(ctx, saved=resume[1] if resume else None)
    logs, callbacks = trainer_callbacks(ctx, tracker, evaluation)
    trainer = build_trainer(
        policy,
        reference,
        tok,
        train,
        cfg,
        str(checkpoint.trainer_dir(ctx.folder)),
        seed=ctx.cfg.seed,
        use_cpu=ctx.device.type == "cpu",
        callbacks=callbacks,
        checkpoint_every=cfg.checkpoint_every,
        precision=ctx.precision,
    )
    log.info("%s (%s, β=%s, ε=%s) on %d pairs", ctx.method, cfg.loss_type, cfg.beta, cfg.label_smoothing, len(train))
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)

    facts = {
        "loss_type": cfg.loss_type,
        "beta": cfg.beta,
        "label_smoothing": cfg.label_smoothing,
        "steps": trainer.state.global_step,
        "train_pairs": len(train),
        "train_loss": result.training_loss,
        "losses_finite": all(math.isfinite(x) for x in logs.losses + [result.training_loss]),
        "train_seconds": result.metrics.get("train_runtime"),
    }
    return finish(ctx, trainer.model, reference, tok, tracker, evaluation, facts)
