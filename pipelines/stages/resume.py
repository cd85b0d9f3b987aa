"""Pre-empted stage builds resume: π_SFT's and the reward model's trainers keep their checkpoints in the stage cache.

A stage is built under a temporary name and renamed when complete (``harness.runs.cache``); its trainer writes its
``checkpoint-<step>`` folders into ``<cache>/<stage>/.resume-<key>/`` instead, which outlives a stopped build and is
removed once the artifact is committed. On SIGTERM / SIGUSR1 / SIGUSR2 (``harness.runs.preempt``) the trainer saves at
the end of its current optimizer step, :class:`StageCheckpoints` marks that checkpoint complete (a folder cut short by
a kill has no mark and is never resumed from), and the job stops with 128 + the signal. The same command again (or
any job that needs the stage) takes the build's lock and continues from the newest marked checkpoint with
``resume_from_checkpoint``: the weights, optimiser, scheduler and random states are the stopped build's, and the
length-sorted sampler gives the resumed epoch the uninterrupted order, so the artifact is the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from harness.lm import distributed
from harness.runs import checkpoint, preempt


class StageCheckpoints(TrainerCallback):
    """A stage trainer's pre-emption and resume: on a signal, save at the next optimizer step's end, mark the
    checkpoint complete, keep only it, and stop the job; :meth:`train` continues from the newest marked checkpoint in
    ``resume_dir`` (``key``: the stage's cache key, recorded in the mark)."""

    def __init__(self, key: str, resume_dir: Path) -> None:
        self.key = key
        found = checkpoint.newest_marked(resume_dir, key, resume_dir)  # logs "resuming ... from ..."
        self.resume_from, saved = (str(found[0]), found[1]) if found else (None, {})
        self.steps_before, self.loss_before = int(saved.get("step", 0)), float(saved.get("loss_sum", 0.0))
        self.trainer = None

    def train(self, trainer) -> float:
        """Train (resumed where a stopped build saved) and return the mean training loss over every step of the
        build: transformers' ``training_loss`` covers only the steps of this call."""
        self.trainer = trainer
        result = trainer.train(resume_from_checkpoint=self.resume_from)
        steps = max(1, result.global_step)
        return (self.loss_before + result.training_loss * (result.global_step - self.steps_before)) / steps

    def _loss_sum(self) -> float:
        """The sum of the per-step losses so far (transformers keeps this call's in two private fields: the logged
        part and the part since the last log)."""
        t = self.trainer
        return self.loss_before + float(getattr(t, "_total_loss_scalar", 0.0)) + float(getattr(t, "_tr_loss", 0.0))

    def on_step_end(self, args, state, control, **kwargs):
        if preempt.requested() is not None and state.global_step < state.max_steps:
            control.should_save = True  # transformers saves before the next step (save_strategy "no" or not)

    def on_save(self, args, state, control, **kwargs):
        if distributed.is_main():
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoint.mark(path, self.key, {"step": state.global_step, "loss_sum": self._loss_sum()})
            checkpoint.keep_only(path)
        if state.global_step < state.max_steps:
            preempt.stop_if_requested()  # the checkpoint is complete: hand the signal on and stop
