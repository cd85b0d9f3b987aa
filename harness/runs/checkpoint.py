"""Resume inside a job: a killed job, run again with the same command, continues from its last checkpoint.

Everything lives in the job's folder, under ``checkpoint/``:

* our own loops (PPO, Unlikelihood) keep one file, ``checkpoint/state.pt`` (``save`` / ``load``): models,
  optimisers, every random generator, counters and the run folder's progress. It is written under a temporary name,
  flushed to disk and renamed over the previous one, so a kill at any moment leaves the old checkpoint or the new one,
  never a torn one. It is read with ``torch.load(weights_only=True)``: plain tensors and containers, no code.
* the trainer-based methods (DPO family, Preferred-FT) let transformers write ``checkpoint/trainer/checkpoint-<step>``
  and resume with ``resume_from_checkpoint``. A folder counts only once our ``harness.json`` has been committed into
  it (``mark``), after transformers finished writing it: one cut short by a kill is skipped.

Each checkpoint records the job's key (``harness.app.job_key``): a rerun with another configuration starts afresh
instead of continuing the wrong run. It also records how many lines each row file had (``Tracker.progress``): the
resumed run cuts the files back to those counts, so no line is ever written twice. When the job has finished and its
``done.json`` is written, ``discard`` removes the folder (but for checkpoints set aside as damaged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from harness.runs.cache import DAMAGED, aside_path, key_of
from harness.runs.tracking import progress_on_disk

log = logging.getLogger("harness.runs.checkpoint")
FOLDER = "checkpoint"
STATE = "state.pt"  # our own loops' checkpoint
TRAINER = "trainer"  # transformers' output_dir: checkpoint-<step> folders
MARK = "harness.json"  # committed into a trainer checkpoint once it is complete


def folder(job: str | Path) -> Path:
    return Path(job) / FOLDER


def trainer_dir(job: str | Path) -> Path:
    return folder(job) / TRAINER


def commit(path: Path, write: Callable) -> None:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file beside it, which is flushed to disk and
    renamed over ``path``. The rename is the moment a checkpoint becomes the one a rerun resumes from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # a killed attempt's, never renamed (one job per folder)
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def wandb_run_id(job: str | Path, key: str) -> str:
    """The job's W&B run id: the same for every attempt of one job (folder and configuration), so a killed and
    resumed job is one W&B run; another folder or configuration is another run."""
    return key_of({"folder": str(Path(job).resolve()), "job": key})


# ------------------------------------------------------------------------------------------- random generators
def rng_state() -> dict:
    """Python's, numpy's and torch's global generators (CUDA's too where there is one), in types
    ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- the run's clock
def clock_state(evaluator) -> dict:
    """Training and evaluation seconds so far (the rows' ``compute_wall_s`` counts training only)."""
    return {"train_s": evaluator.training_seconds(), "eval_s": evaluator.eval_seconds}


def restore_clock(evaluator, clock: dict) -> None:
    """Continue the evaluator's clock where the checkpoint left it: the time between the kill and the rerun is not
    training time."""
    evaluator.eval_seconds = clock["eval_s"]
    evaluator.started = time.time() - clock["train_s"] - clock["eval_s"]


# ------------------------------------------------------------------------------------------ our own loops' file
def save(job: str | Path, key: str, state: dict) -> Path:
    """Commit ``state`` (plain tensors and containers) as the job's checkpoint, replacing the previous one."""
    path = folder(job) / STATE
    commit(path, lambda f: torch.save({**state, "key": key}, f))
    return path


def load(job: str | Path, key: str) -> dict | None:
    """The job's checkpoint, or None to start afresh: there is none, it belongs to another configuration, or the row
    files it counts are no longer all there (someone removed lines: continuing would leave a gap)."""
    path = folder(job) / STATE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch raises on a torn or foreign file, the file is not usable
        set_aside(path, f"cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")
        return None
    if not isinstance(state, dict):
        set_aside(path, f"holds a {type(state).__name__}, not a checkpoint")
        return None
    if not _usable(state, key, job, path):
        return None
    log.info("resuming %s from its checkpoint (%s)", job, path)
    return state


def set_aside(path: Path, why: str) -> Path:
    """Move a damaged checkpoint out of the way (``<name>.damaged-<time>``, never deleted: it may be evidence of what
    went wrong) with one warning; the job goes on from the previous good checkpoint, or from scratch."""
    aside = aside_path(path)
    os.rename(path, aside)
    log.warning("checkpoint %s is damaged (%s); set aside as %s, resuming without it", path, why, aside.name)
    return aside


def trainer_checkpoint_problem(path: Path) -> str | None:
    """What makes a marked trainer checkpoint unusable (its mark not JSON, its trainer state or weights missing or
    cut short), read from the files' headers; None when it can be resumed from."""
    from harness.fields import ConfigError
    from harness.runs.weights import check_weights

    try:
        json.loads((path / MARK).read_text())
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
    if not any((path / w).is_file() for w in weights):
        return "its model weights are missing"
    try:
        check_weights(path, "checkpoint")
    except ConfigError as e:
        return str(e).split(": ", 1)[-1]
    return None


def _usable(state: dict, key: str, job, path: Path) -> bool:
    if state.get("key") != key:
        log.warning("%s: checkpoint of another configuration, starting afresh", path)
        return False
    if not progress_on_disk(Path(job), state.get("progress")):
        log.warning("%s: the run's row files are shorter than the checkpoint records, starting afresh", path)
        return False
    return True


# --------------------------------------------------------------------------------------- trainer checkpoints
def mark(checkpoint_dir: str | Path, key: str, meta: dict) -> None:
    """Declare transformers' ``checkpoint_dir`` complete, with what the run folder looked like at that step."""
    blob = json.dumps({**meta, "key": key}).encode()
    commit(Path(checkpoint_dir) / MARK, lambda f: f.write(blob))


def last_trainer_checkpoint(job: str | Path, key: str) -> tuple[Path, dict] | None:
    """The newest complete trainer checkpoint of this configuration and its ``mark`` record, or None."""
    return newest_marked(trainer_dir(job), key, job)


def newest_marked(checkpoints: Path, key: str, job: str | Path) -> tuple[Path, dict] | None:
    """The newest complete (marked) ``checkpoint-<step>`` in ``checkpoints`` of configuration ``key`` whose row files
    in ``job`` are intact, and its ``mark`` record; None when there is none (a stage build: ``job`` holds no rows)."""
    found = []
    for path in Path(checkpoints).glob("checkpoint-*"):
        if (path / MARK).exists() and re.fullmatch(r"checkpoint-\d+", path.name):  # not one set aside
            found.append((int(path.name.split("-")[-1]), path))
    for _, path in sorted(found, reverse=True):
        problem = trainer_checkpoint_problem(path)
        if problem:  # the previous one, if any, is next in line
            set_aside(path, problem)
            continue
        meta = json.loads((path / MARK).read_text())
        if _usable(meta, key, job, path):
            log.info("resuming %s from %s", job, path)
            return path, meta
    return None


def keep_only(checkpoint_dir: str | Path) -> None:
    """Remove every other trainer checkpoint of the job (called once ``checkpoint_dir`` is marked complete, so there
    is always one to resume from)."""
    keep = Path(checkpoint_dir)
    for path in keep.parent.glob("checkpoint-*"):
        if path != keep and re.fullmatch(r"checkpoint-\d+", path.name):  # one set aside as damaged stays
            shutil.rmtree(path, ignore_errors=True)


def discard(job: str | Path) -> None:
    """A finished job needs no checkpoint: its done.json and policy/ are what a rerun reuses. Checkpoints set aside as
    damaged stay (``set_aside``: never deleted); the folder goes once nothing else is in it."""
    root = folder(job)
    for d in (trainer_dir(job), root):
        if not d.is_dir() or d.is_symlink():
            continue
        for path in list(d.iterdir()):
            if DAMAGED in path.name or path == trainer_dir(job):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: a damaged checkpoint is kept in it
            d.rmdir()
