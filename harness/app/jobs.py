"""The composition root's job runner: a composed config becomes a validated, preflighted job that its method runs.

This module and ``harness/app/cli.py`` are the only parts of the library that see the method registry
(``pipelines/registry.py``); everything below them reads the record a validated config carries (``hc.method``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness.config import HarnessConfig, validate
from harness.fields import ConfigError
from harness.runs.identity import DONE, finished, job_key, resolved
from pipelines.registry import METHODS

# Task data checked by a preflight in this process, by (job key, here), for the run of that job that comes next: a
# single run is checked by the command line before Hydra makes its folder, then run by Hydra in the same process, and
# it is preflighted once (see ``checked``).
_CHECKED: dict[tuple[str, bool], Any] = {}


def load(cfg: DictConfig | dict) -> HarnessConfig:
    """Validate a composed config against the method registry and resolve it (every schema default filled in)."""
    hc = validate(cfg, METHODS)
    hc.raw = resolved(hc)
    return hc


def checked(hc: HarnessConfig, here: bool = True, keep: bool = False, key: str | None = None):
    """``preflight(hc)``'s task data, the preflight run once per job: ``keep`` leaves the result for the job's run
    in this process (the command line checks a single run before Hydra runs it here), which takes it. ``key``: the
    job's key when the caller has it (for a preference file it hashes the file's content: read it once)."""
    from harness.preflight.checks import preflight

    slot = (key or job_key(hc), here)
    data = _CHECKED.pop(slot, None)
    if data is None:
        data = preflight(hc, here)
    if keep:
        _CHECKED[slot] = data
    return data


# What a job imports on its way to its first training step besides its runner's module: the trainers, W&B and the
# gold scorer are imported inside functions (light modules stay light for the config checks), so a fresh worker
# process meets them one by one, ~6 s in all on one core. ``warm_up`` imports them ahead. An entry this
# environment cannot import is skipped: the job itself then says what is missing.
WARM_MODULES = (
    "harness.app.cli",
    "harness.preflight.checks",
    "harness.runs.context",
    "harness.runs.tracking",
    "harness.eval.evaluator",
    "pipelines.trainer_run",
    "pipelines.stages.sft",
    "pipelines.stages.preferences",
    "pipelines.stages.reward_model",
    "trl.trainer.sft_trainer",
    "trl.trainer.reward_trainer",
    "trl.trainer.dpo_trainer",
    "datasets",
    "wandb",
    "wandb.sdk.launch",  # imported by every wandb.init (its job-inputs hook): ~2 s cold
    "vaderSentiment.vaderSentiment",
)


def warm_up(pipelines: tuple[str, ...] = (), freeze: bool = False) -> None:
    """Import ``WARM_MODULES`` and the runner modules of ``pipelines`` (method names) in this process: what a study's
    launcher has its worker processes do while the study's configs are still being checked, so that the first job
    starts training at once (the imports cost the same CPU either way; here one core would otherwise sit idle).

    ``freeze``: then leave everything the process holds to the garbage collector's permanent generation
    (``gc.freeze``). The imported modules are ~0.5 M objects that live as long as the process; every full collection
    traversed them all (~0.3 s each, several per job, and the models count's own ``gc.collect``): measured on a PPO
    job, its collections took 1.22 s, 0.22 s once frozen. Only for a process that holds nothing else yet, such as a
    fresh worker: a frozen object is never collected as part of a reference cycle, and ``gc.get_objects`` (the models
    count, ``harness.lm.memory.models_held``) no longer lists it."""
    runners = [METHODS[name].runner.split(":")[0] for name in pipelines if name in METHODS]
    # What the imports print (transformers announces W&B's offline mode) would have gone to the first job's job.log;
    # here it goes nowhere, at the file descriptors, so that a logging handler made now keeps the real stderr.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        for module in (*WARM_MODULES, *runners):
            with contextlib.suppress(Exception):  # an optional package missing: the job that needs it reports it
                importlib.import_module(module)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
    if freeze:
        gc.collect()  # what the imports left as garbage goes first
        gc.freeze()


def swept_pipeline_keys(overrides: list[str]) -> tuple[str, ...]:
    """``pipeline.cliprange=0.2`` -> ``cliprange``: the pipeline knobs a job's overrides set."""
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("pipeline.") and key.count(".") == 1:
            keys.append(key.split(".", 1)[1])
    return tuple(dict.fromkeys(keys))


def run_job(cfg: DictConfig, folder: Path, sweep_name: str | None = None, swept: tuple[str, ...] = ()) -> dict:
    """Validate, then run the method ``cfg.pipeline.name``. Everything a job does starts here.

    A finished job (its done.json has this config's key) is reused; a killed one continues from its last checkpoint
    (the pipelines find it in the job folder, ``harness.runs.checkpoint``), which is removed once done.json is
    written. A folder holding another job's run stops the job (``harness.runs.folder``), and so does one another
    process is running a job in. Every check comes first; only then is the folder made, locked and claimed."""
    from harness.lm import distributed
    from harness.lm.precision import pick_device
    from harness.runs import folder as run_folder
    from harness.runs import preempt

    hc = load(cfg)
    key = job_key(hc)
    label = run_folder.label_of(hc)
    preempt.install()  # SIGTERM / SIGUSR1 / SIGUSR2 from now on: save at the next safe point, then stop
    # Under accelerate launch / torchrun every process runs this job: one process group, and one job folder (the main
    # process's: each process's Hydra made its own, named by its own clock).
    distributed.init(cpu=pick_device(hc.device).type == "cpu")
    preempt.stop_if_requested()  # signalled between two jobs of a study (in this process): start nothing
    folder = Path(distributed.on_main(lambda: str(folder)))
    distributed.on_main(run_folder.check, folder, key, label, hc.overwrite)  # finished work of another job stays
    record = finished(folder, key)
    if record is not None:
        # A rerun of a finished sweep reuses this job (same resolved config) and only remakes the report.
        print(f"reusing finished job {folder}")
        return record["result"]
    task = checked(hc, key=key)  # model, data, device, folders: all before the first stage trains
    return _claim_and_run(hc, folder, key, label, task, sweep_name, swept)


def _claim_and_run(hc, folder: Path, key: str, label: str, task, sweep_name, swept) -> dict:
    """Lock and claim the job's folder, run the method, commit done.json (``run_job``, once every check passed)."""
    import contextlib

    import torch

    from harness.lm import distributed, memory
    from harness.runs import checkpoint, preempt
    from harness.runs import folder as run_folder
    from harness.runs.context import RunContext

    made = not folder.exists()
    with contextlib.ExitStack() as held:

        def claim() -> dict | None:
            # not before: a job that fails its checks leaves no folder behind; the lock is held for the job's life
            held.enter_context(run_folder.locked(folder))
            run_folder.claim(folder, key, label, hc.overwrite)
            return finished(folder, key)  # another process may have finished this job while we checked

        record = distributed.on_main(claim)
        if record is not None:
            print(f"reusing finished job {folder}")
            return record["result"]
        if hc.threads > 0:
            torch.set_num_threads(hc.threads)
        torch.manual_seed(hc.seed)
        ctx = RunContext(cfg=hc, folder=folder, sweep_name=sweep_name, swept=swept, key=key)
        memory.reset_peak(ctx.device)  # the rows' peak memory is this job's, not an earlier job's of this process
        ctx.task = task  # fills the cached property: the data the checks read is the data the job trains on
        try:
            result = hc.method.run(ctx)
        except ConfigError:  # the method's own check of its data stopped it: nothing trained, nothing written
            distributed.on_main(run_folder.unclaim, folder, made)
            raise

        def finish() -> None:
            # Renamed into place, so a kill while writing never leaves a done.json that does not parse.
            blob = json.dumps({"key": key, "result": result}, default=str, indent=2).encode()
            checkpoint.commit(folder / DONE, lambda f: f.write(blob))
            checkpoint.discard(folder)  # only now: until done.json exists, a rerun resumes from it

        distributed.on_main(finish)
    preempt.stop_if_requested()  # signalled where the job had no safe point left: it is done, the study stops here
    return result


def job_identities(cfg: DictConfig) -> dict[str, str]:
    """The job key of a composed config and the cache keys of the stages it stands on, computed without building
    anything (``scripts/job_keys.py``, the golden test)."""
    from pipelines.stages import stage_keys

    hc = load(cfg)
    return {"job": job_key(hc), **stage_keys(hc)}
