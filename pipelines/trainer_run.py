"""The runtime every method trained through a TRL / transformers trainer shares: the DPO family (``pipelines.dpo``),
Preferred-FT and Unlikelihood (``pipelines.baselines``), KTO, online DPO, RLOO and GRPO; the offline evaluation
(``pipelines.evaluate``) uses its tracking.

* the data checks every preference-trained method runs before training (:func:`check_pairs`) and its set-up
  (:func:`prepare`: π_SFT, checked pairs, a frozen π_ref, the tracker and the evaluation);
* the trainer arguments they share (:func:`shared_args`, :func:`save_args`, :func:`trainer_max_steps`);
* the tracker with its evaluation (:func:`start_tracking`) and the end of a run (:func:`finish`);
* the callbacks that put a trainer on the frontier (:func:`trainer_callbacks`): :class:`EvaluationCallback` (the
  shared evaluator at step 0, every ``eval.every`` optimizer steps and at the end), :class:`TrackerCallback` (the
  trainer's logs, in the metric namespaces of ``pipelines.metrics``, to the tracker) and :class:`CheckpointCallback`.

Resume and guards, shared the same way: the trainer writes a checkpoint every ``pipeline.checkpoint_every`` optimizer
steps under ``<job>/checkpoint/trainer`` (:class:`CheckpointCallback` marks each complete with the run folder's
progress, ``harness.checkpoint``), and a rerun of a killed job continues from the newest with
``resume_from_checkpoint`` (the length-sorted sampler gives a resumed epoch the order of an uninterrupted run);
:class:`GuardedTraining` stops at the first non-finite loss (``harness.guards``) where transformers would average it
out of its logs and train on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from harness.eval.evaluator import Evaluator
from harness.fields import ConfigError
from harness.lm import distributed
from harness.lm.models import disable_dropout, freeze, load_pretrained_lm
from harness.lm.precision import trainer_flags
from harness.runs import checkpoint, preempt
from harness.runs.context import RunContext
from harness.runs.guards import check_finite, check_point
from harness.runs.tracking import Tracker
from pipelines.metrics import namespaced
from pipelines.stages.preferences import ensure_preferences, load_pairs
from pipelines.stages.sft import load_sft

PAIR_COLUMNS = ("prompt", "chosen", "rejected")

# ----------------------------------------------------------------------------------------------------------------
# Data checks (shared with Preferred-FT and Unlikelihood)
# ----------------------------------------------------------------------------------------------------------------


def check_pairs(data, tok, max_length: int, columns: tuple[str, ...] = PAIR_COLUMNS, where: str = "preferences.train"):
    """Stop bad preference data before training, with a one-line :class:`ConfigError` naming what is wrong.

    Checks, in order: the columns are there; the set is not empty; no text is missing (None); no prompt is empty;
    not every chosen (or every rejected) text is empty; not every pair has chosen == rejected (nothing to learn); no
    prompt fills ``max_length`` tokens (TRL would silently drop such pairs, and our own loop would have no
    completion token to train on).

    A single empty *completion* is data, not an error: it is the response that ends at once (EOS only), which π_SFT
    does sample (20 chosen and 25 rejected of the 6369 default training pairs), and preferring it is a real label.
    An all-empty completion column, on the other hand, is a broken data set.

    Args:
        data: a ``datasets.Dataset`` with (at least) ``columns``.
        tok: the policy's tokenizer (prompt lengths are counted in its tokens).
        max_length: the pipeline's maximum prompt + completion length in tokens.
        columns: the columns the method reads; chosen == rejected is checked only when both are among them.
        where: how the data is named in messages.
    Returns:
        An in-memory ``Dataset`` of just ``columns`` (so trainers' ``map`` caches never write into the shared
        stage-artifact folder).
    """
    from datasets import Dataset

    have = list(data.column_names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ConfigError(
            f"{where}: missing column(s) {', '.join(missing)} (has: {', '.join(have) or 'none'}); "
            f"the pairs need columns {', '.join(columns)}, rebuild them with pipeline=preferences"
        )
    n = len(data)
    if n == 0:
        raise ConfigError(
            f"{where}: no pairs; rebuild the preference set (pipeline=preferences) or lower preferences.min_margin"
        )
    cols = {c: list(data[c]) for c in columns}
    for c in columns:
        bad = [i for i, t in enumerate(cols[c]) if not isinstance(t, str)]
        if bad:
            raise ConfigError(
                f"{where}: {len(bad)} of {n} pairs have no {c} text (first at row {bad[0]}: {cols[c][bad[0]]!r}); "
                "drop those rows or rebuild the preference set"
            )
    if "prompt" in cols:
        empty = [i for i, t in enumerate(cols["prompt"]) if not t.strip()]
        if empty:
            raise ConfigError(
                f"{where}: {len(empty)} of {n} pairs have an empty prompt text (first at row {empty[0]}); "
                "drop those rows or rebuild the preference set"
            )
    for c in ("chosen", "rejected"):
        if c in cols and not any(t.strip() for t in cols[c]):
            raise ConfigError(
                f"{where}: every one of the {n} {c} texts is empty; check how the pairs were built "
                "(the completion columns hold the responses without the prompt)"
            )
    if "chosen" in cols and "rejected" in cols and all(c == r for c, r in zip(cols["chosen"], cols["rejected"])):
        raise ConfigError(
            f"{where}: every one of the {len(data)} pairs has chosen == rejected, so there is nothing to learn; "
            "check how the pairs were labelled (preferences.labels, preferences.min_margin)"
        )
    if "prompt" in cols:
        lengths = [len(ids) for ids in tok(cols["prompt"], add_special_tokens=False)["input_ids"]]
        too_long = [n for n in lengths if n >= max_length]
        if too_long:
            raise ConfigError(
                f"pipeline.max_length: {len(too_long)} of {len(data)} prompts have >= {max_length} tokens "
                f"(longest {max(too_long)}), leaving no room for a completion; set pipeline.max_length "
                f"above {max(too_long)} or use shorter prompts"
            )
    return Dataset.from_dict(cols)


def check_max_length(max_length: int, policy) -> None:
    """The model cannot attend past its position embeddings."""
    n_pos = getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", None)
    if n_pos is not None and max_length > n_pos:
        raise ConfigError(
            f"pipeline.max_length: {max_length} exceeds the model's {n_pos} positions; set pipeline.max_length<={n_pos}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Putting a trainer on the frontier (shared with Preferred-FT, Unlikelihood, RLOO and GRPO)
# ----------------------------------------------------------------------------------------------------------------


class FrontierEvaluation:
    """Evaluate a policy with the shared evaluator and write the result row: one point on the frontier."""

    def __init__(self, evaluator: Evaluator, tracker: Tracker, *, method: str, setting: str, seed: int) -> None:
        self.evaluator, self.tracker = evaluator, tracker
        self.method, self.setting, self.seed = method, setting, seed
        self.rows: list[dict] = []
        self.last_step: int | None = None

    def __call__(self, policy, step: int, tokens_trained: int = 0, tokens_generated: int = 0) -> dict:
        """``tokens_trained``: tokens through the policy's forward+backward so far; ``tokens_generated``: tokens
        sampled in training so far (the offline methods sample none)."""
        point = self.evaluator(
            policy,
            method=self.method,
            setting=self.setting,
            seed=self.seed,
            step=step,
            run_id=self.tracker.run_id,
            tokens_trained=tokens_trained,
            tokens_generated=tokens_generated,
        )
        check_point(point, step, unit="step")
        row = self.tracker.log_eval(point)
        self.rows.append(row)
        self.last_step = step
        logging.getLogger("harness.frontier").info(
            "%s %s step %d: gold %.3f ± %.3f, KL %.3f ± %.3f",
            self.method,
            self.setting,
            step,
            row["gold_reward"],
            row["gold_reward_sem"],
            row["kl"],
            row["kl_sem"],
        )
        return row

    def resume(self, saved: dict) -> None:
        """Continue after a checkpoint: the rows it counted (the tracker kept them) and the evaluator's clock."""
        self.rows = self.tracker.rows()
        self.last_step = self.rows[-1]["step"] if self.rows else None
        checkpoint.restore_clock(self.evaluator, saved["clock"])


def tokens_seen(state) -> dict:
    """The compute of an offline trainer: the tokens it counted through forward+backward (``num_input_tokens_seen``)."""
    return {"tokens_trained": state.num_input_tokens_seen}


class EvaluationCallback(TrainerCallback):
    """Runs a :class:`FrontierEvaluation` on ``trainer.model`` at step 0, every ``every`` optimizer steps, and at the
    end (unless the last step was just evaluated). Steps are the trainer's ``global_step``: optimizer updates.
    ``compute(state)`` gives the training compute so far (``tokens_trained``, ``tokens_generated``)."""

    def __init__(self, evaluation: FrontierEvaluation, every: int, compute=tokens_seen) -> None:
        self.evaluation, self.every, self.compute = evaluation, every, compute

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:  # a resumed run has its step-0 row already
            self.evaluation(model, step=0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluation(model, step=state.global_step, **self.compute(state))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.evaluation.last_step != state.global_step:
            self.evaluation(model, step=state.global_step, **self.compute(state))


class TrackerCallback(TrainerCallback):
    """Forwards every trainer log (TRL's rewards/chosen, rewards/margins, logps/*, the loss ...) to the tracker and
    keeps the training losses so the run can report whether they stayed finite."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = namespaced(logs or {})
        if "objective/loss" in logs:
            self.losses.append(float(logs["objective/loss"]))
        self.tracker.log(logs, step=state.global_step)


class CheckpointCallback(TrainerCallback):
    """Once transformers has written ``checkpoint-<step>`` (weights, optimiser, scheduler, RNG states, trainer
    state), commits our mark into it: the job's key, the run folder's progress (row-file lines, seconds) and the
    evaluator's clock. Only then are the older checkpoints removed, so one complete checkpoint always exists."""

    def __init__(self, key: str, tracker: Tracker, evaluation: FrontierEvaluation) -> None:
        self.key, self.tracker, self.evaluation = key, tracker, evaluation

    def on_step_end(self, args, state, control, **kwargs):
        # a safe point: pre-empted (harness.runs.preempt), the trainer saves a checkpoint now; on_save then stops
        if preempt.requested() is not None and state.global_step < state.max_steps:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if distributed.is_main():  # every process gets the call; the main process's tracker counts the rows
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoint.mark(
                path,
                self.key,
                {
                    "step": state.global_step,
                    "progress": self.tracker.progress(),
                    "clock": checkpoint.clock_state(self.evaluation.evaluator),
                },
            )
            checkpoint.keep_only(path)
        if state.global_step < state.max_steps:
            preempt.stop_if_requested()  # the checkpoint is marked complete: hand the signal on and stop


class GuardedTraining:
    """Trainer mixin: stop at the first non-finite loss, before the optimiser step that would take it in."""

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        check_finite("loss", loss, self.state.global_step + 1, unit="step")
        return loss


def parameter_change(policy, reference) -> float:
    """‖θ − θ_ref‖₂ over all parameters: 0 means training did not move the policy."""
    with torch.no_grad():
        sq = sum(
            float(((p.float() - r.float()) ** 2).sum()) for p, r in zip(policy.parameters(), reference.parameters())
        )
    return math.sqrt(sq)


def load_frozen_reference(path, tok, device, trust_remote_code: bool = False):
    """π_ref: its own copy of π_SFT, in eval mode, with no gradients."""
    return freeze(load_pretrained_lm(path, tok, trust_remote_code).to(device))


# ----------------------------------------------------------------------------------------------------------------
# Trainer arguments
# ----------------------------------------------------------------------------------------------------------------


def trainer_max_steps(max_steps: int) -> int:
    """Our ``max_steps`` (<= 0: the epochs decide) as transformers reads it: only a negative value lets the epochs
    decide there; 0 would train no step at all."""
    return max_steps if max_steps > 0 else -1


def save_args(every: int) -> dict:
    """The trainer arguments of a checkpoint every ``every`` optimizer steps (0: none). Complete checkpoints are
    pruned by :class:`CheckpointCallback`, not by ``save_total_limit``, which deletes the previous checkpoint before
    the new one is marked complete."""
    if not every:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": every, "save_total_limit": None, "save_only_model": False}


def shared_args(
    output_dir: str,
    *,
    seed: int,
    use_cpu: bool,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
) -> dict:
    """The trainer arguments every TRL-trainer method shares (DPO family, KTO, online DPO): fp32 (or, with
    ``precision=bf16``, TRL's bf16 autocast over fp32 weights: ``harness.precision``), no activation
    checkpointing, no TRL reporting (our tracker does that), checkpoints every ``checkpoint_every`` steps (0: none),
    no data-loader worker processes.

    TRL's configs default to bf16 and to activation checkpointing (recomputing activations in the backward pass),
    which is wrong on CPU and wasted time on small models, so both are off."""
    return dict(
        output_dir=output_dir,
        **trainer_flags(precision),
        activation_checkpointing=False,
        report_to="none",
        **save_args(checkpoint_every),
        logging_steps=logging_steps,
        seed=seed,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
    )


# ----------------------------------------------------------------------------------------------------------------
# A run's set-up, tracking and end
# ----------------------------------------------------------------------------------------------------------------


def prepare(ctx: RunContext, columns: tuple[str, ...] = PAIR_COLUMNS, saved: dict | None = None):
    """What every method trained on the preference set needs (DPO family, Preferred-FT, Unlikelihood): π_SFT to
    train, checked pairs, a frozen π_ref, the tracker and the evaluation — in that order, so bad data stops the job
    before a tracker or run folder exists. The policy comes with dropout off (``disable_dropout``), as PPO's does:
    every method trains π_SFT under the same conditions, whichever trainer puts it in train mode.

    ``saved``: the checkpoint record (``progress`` and ``clock``) of a run being resumed; the tracker and the
    evaluation then continue where it left them."""
    cfg = ctx.cfg.pipeline
    policy, tok, sft = load_sft(ctx)
    policy = disable_dropout(policy)
    check_max_length(cfg.max_length, policy)
    train = check_pairs(load_pairs(ensure_preferences(ctx))["train"], tok, cfg.max_length, columns=columns)
    reference = load_frozen_reference(sft.path, tok, ctx.device, ctx.cfg.model.trust_remote_code)
    tracker, evaluation = start_tracking(ctx, reference, tok, saved)
    return policy, reference, tok, train, tracker, evaluation


def start_tracking(ctx: RunContext, reference, tok, saved: dict | None = None, proxy=None):
    """The job's tracker and its :class:`FrontierEvaluation` (the shared evaluator against ``reference``; ``proxy``:
    the learned reward on texts, for the rows' proxy_reward). ``saved``: the checkpoint record of a run being
    resumed, as in :func:`prepare`."""
    tracker = ctx.tracker(resume=saved["progress"] if saved else None)
    evaluator = ctx.evaluator(reference, tok, proxy=proxy)
    evaluation = FrontierEvaluation(evaluator, tracker, method=ctx.method, setting=ctx.setting, seed=ctx.cfg.seed)
    if saved:
        evaluation.resume(saved)
    return tracker, evaluation


def trainer_callbacks(ctx: RunContext, tracker: Tracker, evaluation: FrontierEvaluation, compute=tokens_seen):
    """The callbacks every trainer-based method runs with: logs, evaluations, checkpoint marks. Returns the log
    callback (the run's facts read its losses) and the list. ``compute``: see :class:`EvaluationCallback`."""
    logs = TrackerCallback(tracker)
    return logs, [
        logs,
        EvaluationCallback(evaluation, ctx.cfg.eval.every, compute),
        CheckpointCallback(ctx.key, tracker, evaluation),
    ]


def finish(
    ctx: RunContext, policy, reference, tok, tracker, evaluation: FrontierEvaluation, facts: dict, tail: str = ""
) -> dict:
    """Save the trained policy, write the run's facts (``facts`` + how far the policy moved and its first and last
    points) to the tracker's summary, close the tracker, print one line (ending in ``tail``). Shared by every method
    trained through a TRL trainer: the DPO family, Preferred-FT, Unlikelihood, KTO, online DPO, RLOO and GRPO."""
    policy.save_pretrained(ctx.folder / "policy")
    tok.save_pretrained(ctx.folder / "policy")
    first, final = evaluation.rows[0], evaluation.rows[-1]
    facts = {
        "method": ctx.method,
        "setting": ctx.setting,
        **facts,
        "parameter_change": parameter_change(policy, reference),
        "gold_sft": first["gold_reward"],
        "gold_final": final["gold_reward"],
        "kl_final": final["kl"],
        "points": len(evaluation.rows),
        "policy": str(ctx.folder / "policy"),
    }
    tracker.summary(facts)
    tracker.finish()
    print(
        f"{ctx.method} {ctx.setting}: gold {first['gold_reward']:.3f} -> {final['gold_reward']:.3f}, "
        f"KL {final['kl']:.3f} after {facts['steps']} steps{tail}"
    )
    return facts
