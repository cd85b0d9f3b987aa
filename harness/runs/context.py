"""What one job hands to its pipeline: the validated config, its folder, device, and lazily built shared parts."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import HarnessConfig
from harness.data.gold import load_gold
from harness.data.tasks import TaskData, load_task
from harness.lm.precision import pick_device
from harness.runs.tracking import Tracker

log = logging.getLogger("harness")
# Pipeline keys that set a job's budget, not the method's setting: they never label a point. (``evaluate``'s label,
# step and trust_remote_code are already in its setting "policy=<label>", or say nothing about the point.)
NOT_A_SETTING = frozenset(
    {
        "name",
        "updates",
        "max_steps",
        "epochs",
        "batch_size",
        "ns",
        "checkpoint_every",
        "label",
        "step",
        "trust_remote_code",
        "checkpoint_stamp",
    }
)


@dataclass
class RunContext:
    cfg: HarnessConfig
    folder: Path  # this job's output folder (Hydra's run or sweep sub-folder)
    sweep_name: str | None = None  # the W&B group
    swept: tuple[str, ...] = ()  # pipeline knobs set on the command line / by the study (they label the points)
    key: str = ""  # the job's identity (harness.app.job_key): its checkpoints and W&B run belong to it

    @property
    def device(self) -> torch.device:
        return pick_device(self.cfg.device)

    @property
    def precision(self) -> str:
        return self.cfg.precision

    def autocast(self):
        """The context of the methods' forward passes: bf16 autocast with ``precision=bf16`` (harness/lm/precision.py)."""
        from harness.lm.precision import autocast

        return autocast(self.device, self.cfg.precision)

    @functools.cached_property
    def task(self) -> TaskData:
        """The task's data (``run_job`` fills it with the preflight's), its prompts the preference file's when
        ``preferences.source=file``."""
        data = load_task(self.cfg.task)
        if self.cfg.preferences.source == "file":
            from harness.data.caches import with_file_prompts

            data = with_file_prompts(self.cfg, data)
        return data

    @functools.cached_property
    def gold(self):
        return load_gold(self.cfg.gold, "cpu" if self.device.type == "cpu" else str(self.device))

    @property
    def cache_root(self) -> Path:
        return Path(self.cfg.cache_dir)

    def evaluator(self, reference, tok, proxy=None):
        """The job's evaluator against ``reference`` on the task's held-out prompts (``proxy``: the learned reward on
        texts, for the rows' proxy_reward), sharing its step-0 measurement with the other jobs of this cache that
        start from the same policy (``harness.eval.evaluator.Evaluator``, ``share``)."""
        from dataclasses import asdict

        from harness.eval.evaluator import Evaluator
        from harness.runs.cache import SharedResults

        return Evaluator(
            reference,
            tok,
            self.task.eval_prompts,
            self.gold,
            self.cfg.eval,
            proxy=proxy,
            precision=self.precision,
            share=SharedResults(self.cache_root),
            gold_identity=asdict(self.cfg.gold),
        )

    @property
    def method(self) -> str:
        return self.cfg.pipeline.name

    @property
    def setting(self) -> str:
        """The method's knob(s) as "beta=0.1": its declared knob plus any other pipeline knob this job set
        (so a clip ablation's points read "kl_coef=0.05,cliprange=0.2")."""
        base = self.cfg.method.setting(self.cfg.pipeline)
        have = {part.split("=")[0] for part in base.split(",") if part}
        labelled = self.cfg.method.labelled_budget_keys
        extra = [
            f"{k}={getattr(self.cfg.pipeline, k)}"
            for k in self.swept
            if k not in have and (k not in NOT_A_SETTING or k in labelled)
        ]
        return ",".join([p for p in [base] if p] + extra)

    def tracker(self, resume: dict | None = None) -> Tracker:
        """The job's tracker; ``resume``: the run-folder progress of the checkpoint the job continues from."""
        from harness.lm.distributed import is_main
        from harness.runs.checkpoint import wandb_run_id
        from harness.runs.tracking import SilentTracker

        name = f"{self.method}" + (f"-{self.setting}" if self.setting else "") + f"-s{self.cfg.seed}"
        if not is_main():  # multi-process training: the main process alone writes the run's rows and W&B run
            return SilentTracker(self.folder, name=name)
        return Tracker(
            self.folder,
            self.cfg.logger,
            self.cfg.raw,
            method=self.method,
            name=name,
            group=self.sweep_name,
            wandb_id=wandb_run_id(self.folder, self.key),
            resume=resume,
        )
