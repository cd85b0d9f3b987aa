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

π_ref's log-probs of the pairs are computed once and shared by every DPO-family job on the same π_SFT and preference
set (``pipelines.stages.reference_logps``; :class:`SharedReferenceLogps`), unless ``reference_logps=per_batch``.

The set-up, the trainer arguments, the callbacks that put the trainer on the frontier, the guards, resume and the end
of a run are those of every trainer-based method: ``pipelines.trainer_run``.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch

from harness.lm.batching import LengthSortedMicroBatches, LengthSortedSampler, example_width, trainer_batches
from harness.lm.lm_head import DenseLMHead
from harness.runs import checkpoint
from harness.runs.context import RunContext
from pipelines.losses import dpo_family_loss
from pipelines.schemas import DPOPipeline
from pipelines.stages import reference_logps as shared_logps
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


class SharedReferenceLogps:
    """DPOTrainer mixin: π_ref's log-probs of the training pairs from the shared stage
    (``pipelines.stages.reference_logps``) instead of TRL's pass over this job's data, which would also leave
    ``datasets`` cache files next to the data's. Active when the trainer is given a ``shared_reference`` (TRL's
    ``precompute_ref_log_probs`` is then on, so its loss reads the ``ref_*_logps`` columns added here)."""

    def __init__(self, *args, shared_reference: shared_logps.SharedReference | None = None, **kwargs) -> None:
        self.shared_reference = shared_reference  # before DPOTrainer.__init__, which runs the precompute
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if name != "train" or self.shared_reference is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        rows = self.rows_read_in_training(dataset)
        examples = dataset.select(rows).select_columns(list(shared_logps.TOKEN_COLUMNS)).to_list()

        def compute():
            widths = [example_width(e) for e in examples]
            logps = shared_logps.compute_reference_logps(
                examples, widths, batch_size, self.data_collator, self._reference_logps_of
            )
            return (rows, *logps)

        computation = self.reference_computation(rows, examples, batch_size, len(dataset))
        art = shared_logps.ensure_reference_logps(self.shared_reference, computation, compute)
        # read back in the job that computed them too: every job trains on the very same stored values
        return shared_logps.with_reference_columns(dataset, *shared_logps.load_reference_logps(art))

    def rows_read_in_training(self, dataset) -> list[int]:
        """The rows of the tokenised training set that training will read: the first ``max_steps`` optimiser batches
        of the length-sorted sampler's first pass (seeded: the same rows for every β, and for a resumed run). Every
        row when the job reads a pass or more, or when the order is drawn only once training starts (transformers'
        own sampler: several processes)."""
        a = self.args
        every_row = list(range(len(dataset)))
        pairs = a.max_steps * a.per_device_train_batch_size * a.gradient_accumulation_steps  # max_steps < 0: epochs
        if not 0 < pairs < len(dataset):
            return every_row
        sampler = self._get_train_sampler(dataset)
        if not isinstance(sampler, LengthSortedSampler):
            return every_row
        return sorted(itertools.islice(iter(sampler), pairs))

    def reference_computation(self, rows: list[int], examples: list[dict], batch_size: int, n_rows: int) -> dict:
        """What the stored numbers depend on besides π_SFT's and the preference set's keys (the stage's identity)."""
        a = self.args
        return {
            "rows": {"n": len(rows), "of": n_rows, "sha256": shared_logps.sha256_of(rows)},
            "tokens": shared_logps.sha256_of([[e[c] for c in shared_logps.TOKEN_COLUMNS] for e in examples]),
            "reference_weights": self._precompute_model_hash,  # TRL's hash of π_ref's weights
            "collator": {
                "max_length": a.max_length,
                "truncation_mode": a.truncation_mode,
                "pad_to_multiple_of": a.pad_to_multiple_of,
            },
            "ld_alpha": a.ld_alpha,
            "batch_size": batch_size,
            "precision": {"bf16": a.bf16, "fp16": a.fp16},
            "device": self.accelerator.device.type,
            "threads": torch.get_num_threads(),
            "versions": shared_logps.versions(),
        }

    def _reference_logps_of(self, batch: dict):
        return self.compute_ref_log_probs(self.ref_model, {k: v.to(self.accelerator.device) for k, v in batch.items()})

    def compute_loss(self, model, inputs, *args, **kwargs):
        if self.precompute_ref_logps and torch.isnan(inputs["ref_chosen_logps"]).any():
            # with_reference_columns leaves NaN where nothing was computed: rows_read_in_training missed a row
            raise RuntimeError(
                "a training batch holds a pair whose reference log-probs were not precomputed; "
                "rerun with pipeline.reference_logps=per_batch and report it"
            )
        return super().compute_loss(model, inputs, *args, **kwargs)


def _dpo_trainer_class():
    from trl import DPOTrainer

    class HarnessDPOTrainer(GuardedTraining, DenseLMHead, LengthSortedMicroBatches, SharedReferenceLogps, DPOTrainer):
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

        @property
        def lm_head_fields(self):  # what TRL 1.16's DPO metrics read (log Σp² for its WPO weights)
            return ("entropy", "mean_logits", "is_top1") + (("log_sum_sq_probs",) if self.use_weighting else ())

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
    precompute_ref_log_probs: bool = False,
):
    """TRL's DPOConfig from our pipeline config, on :func:`shared_args` (fp32, a checkpoint every ``checkpoint_every``
    steps, no TRL reporting). The learning rate warms up linearly over
    ``warmup_ratio`` of the steps (transformers 5 reads warmup_steps < 1 as a fraction) and then stays constant, as
    in the DPO paper's reference code. ``precompute_ref_log_probs``: TRL's loss reads π_ref's log-probs from the data
    (:class:`SharedReferenceLogps` puts them there) instead of running π_ref on every batch.
    """
    from trl import DPOConfig

    per_device, accumulate = trainer_batches(cfg.batch_size, cfg.micro_batch_size, "pipeline")
    return DPOConfig(
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        label_smoothing=cfg.label_smoothing,
        precompute_ref_log_probs=precompute_ref_log_probs,
        # π_ref's no-grad pass over the pairs takes them a batch at a time, as an evaluation would (it needs no room
        # for gradients; larger batches of similar length: ~8% less time than micro-batches on the embedded default)
        precompute_ref_batch_size=cfg.batch_size,
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
    shared_reference: shared_logps.SharedReference | None = None,
):
    """A :class:`HarnessDPOTrainer` on ``train_dataset`` (columns prompt, chosen, rejected) with π_ref = ``reference``;
    trainer checkpoints in ``output_dir`` every ``checkpoint_every`` steps (0: none). ``shared_reference``: where
    π_ref's log-probs of the pairs are shared (``pipelines.stages.reference_logps``); None: π_ref runs on every
    batch."""
    trainer_cls = _dpo_trainer_class()
    args = dpo_config(
        cfg,
        output_dir,
        seed=seed,
        use_cpu=use_cpu,
        logging_steps=logging_steps,
        checkpoint_every=checkpoint_every,
        precision=precision,
        precompute_ref_log_probs=shared_reference is not None,
    )
    return trainer_cls(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tok,
        callbacks=callbacks or [],
        shared_reference=shared_reference,
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
        shared_reference=shared_logps.shared_reference(ctx),
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
