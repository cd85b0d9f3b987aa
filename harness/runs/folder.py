"""A run folder belongs to one job: finished work in it is never overwritten by another job, and one process at a time
runs a job in it.

* ``job.json`` records the job a folder belongs to: its job key (``harness.runs.identity.job_key``, the key ``done.json``
  and the checkpoints carry) and a label a person reads ("dpo beta=0.1 seed 0"). A folder from before job.json is known
  by what it holds: its done.json's key, else its checkpoint's, else only that it holds a run.
* A folder *holds a run* when it has a done.json, a row in a row file or a checkpoint. Into such a folder another job
  stops with one line naming both jobs and the two ways on: another folder, or ``overwrite=true``, which moves the old
  run aside to ``<folder>/.replaced-<time>/`` (nothing is deleted; the report skips those folders). The same job again
  is reused (done.json) or resumed (its checkpoint), as before.
* While a job runs, its process holds ``flock`` on ``<folder>/.run.lock`` (released by the kernel when the process
  dies, so a killed job never blocks its rerun); a second process into the folder stops with one line instead of
  writing the same rows again or resuming from a checkpoint the first is still writing.

The order, in ``harness.app.jobs.run_job``: ``check`` (with the job's other checks, before anything is made), then
``locked`` and ``claim``, which checks again under the lock, so a job failing its checks leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.fields import ConfigError
from harness.runs.identity import DONE
from harness.runs.tracking import ROW_FILES

JOB = "job.json"
LOCK = ".run.lock"
REPLACED = ".replaced-"  # prefix of the folders an overwritten run is moved into
CHECKPOINT = "checkpoint"  # harness.runs.checkpoint.FOLDER (not imported: that module needs torch)


@dataclass(frozen=True)
class Owner:
    """The job a run folder holds a run of: its key (None when the folder does not say) and a readable label."""

    key: str | None
    label: str

    def describe(self) -> str:
        return f"{self.label}, key {self.key}" if self.key else self.label


def label_of(hc) -> str:
    """ "dpo beta=0.1 seed 0": the method, its knob(s) and the seed, what a person tells jobs apart by."""
    setting = hc.method.setting(hc.pipeline) if hc.method is not None else ""
    return " ".join(part for part in (hc.pipeline.name, setting, f"seed {hc.seed}") if part)


def _json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or unreadable: it says nothing about the folder's job
        return None
    return record if isinstance(record, dict) else None


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds work a job produced: a done.json, a row, or a checkpoint (a job.json alone is a claim
    whose job wrote nothing yet; Hydra's .hydra/ and log are remade by every command)."""
    if (folder / DONE).exists() or (folder / CHECKPOINT).exists():
        return True
    for name in ROW_FILES:
        try:
            if (folder / name).stat().st_size > 0:
                return True
        except OSError:
            continue
    return False


def _checkpoint_key(folder: Path) -> str | None:
    """The job key a checkpoint in ``folder`` records (folders from before job.json): a trainer checkpoint's mark,
    else our own loops' state.pt."""
    for mark in sorted((folder / CHECKPOINT / "trainer").glob("checkpoint-*/harness.json")):
        key = (_json(mark) or {}).get("key")
        if key:
            return key
    state = folder / CHECKPOINT / "state.pt"
    if state.exists():
        try:
            import torch

            key = torch.load(state, map_location="cpu", weights_only=True).get("key")
        except Exception:  # noqa: BLE001 - a damaged state says nothing: the folder is protected as an unknown run
            return None
        return key if isinstance(key, str) else None
    return None


def _old_label(folder: Path) -> str:
    """A label for a run folder from before job.json, from the config.yaml it saved."""
    import yaml

    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        return f"{saved['pipeline']['name']} seed {saved['seed']}"
    except Exception:  # noqa: BLE001 - no config saved, or not ours: the folder is still protected
        return "an earlier run"


def owner(folder: Path) -> Owner | None:
    """The job ``folder`` belongs to: its job.json, else (older folders) what its done.json or checkpoint records,
    else an unknown job when it holds a run; None for a folder no job has claimed."""
    record = _json(folder / JOB)
    if record and record.get("key"):
        return Owner(str(record["key"]), str(record.get("label") or "a job"))
    key = (_json(folder / DONE) or {}).get("key") or (
        _checkpoint_key(folder) if (folder / CHECKPOINT).exists() else None
    )
    if key or holds_run(folder):
        return Owner(key, _old_label(folder))
    return None


def conflict(folder: Path, key: str) -> Owner | None:
    """The other job whose run ``folder`` holds, or None: no run there, or one of job ``key`` (reused or resumed)."""
    if not holds_run(folder):
        return None
    holder = owner(folder)
    return holder if holder is not None and holder.key != key else None


def check(folder: Path, key: str, label: str, overwrite: bool, where: str = "hydra.run.dir", job: str = "") -> None:
    """Stop (one ConfigError line) when ``folder`` holds another job's run and ``overwrite`` is not set. ``where``: the
    key that chose the folder; ``job``: how a study names the job (appended)."""
    holder = conflict(Path(folder), key)
    if holder is None or overwrite:
        return
    raise ConfigError(
        f"{where}: {folder} holds a run of another job ({holder.describe()}); this command runs {label} (key {key}){job}; "
        f"run it in another folder ({where}=<another folder>) or add overwrite=true to move the old run aside to "
        f"{folder}/{REPLACED}<time>/ (nothing is deleted)"
    )


def move_aside(folder: Path) -> Path | None:
    """Move the run ``folder`` holds into ``folder/.replaced-<time>/`` (a rename on the same filesystem: nothing is
    copied or deleted); the lock file and earlier replaced runs stay. Returns where it went (None: nothing there)."""
    entries = [p for p in folder.iterdir() if p.name != LOCK and not p.name.startswith(REPLACED)]
    if not entries:
        return None
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    dest, n = folder / f"{REPLACED}{stamp}", 1
    while dest.exists():  # two overwrites in one second
        n += 1
        dest = folder / f"{REPLACED}{stamp}-{n}"
    dest.mkdir()
    for path in entries:
        os.rename(path, dest / path.name)
    return dest


def move_other_run(folder: Path, key: str) -> Path | None:
    """``overwrite=true``: move another job's run in ``folder`` aside (see ``move_aside``); returns where it went."""
    holder = conflict(folder, key)
    if holder is None:
        return None
    dest = move_aside(folder)
    print(f"overwrite=true: moved the run of {holder.describe()} in {folder} aside to {dest}", flush=True)
    return dest


def check_sweep(jobs: list[tuple[Path | None, str, str, bool]], where: str = "hydra.sweep.dir") -> None:
    """``check`` every job of a sweep, given as (folder, key, label, overwrite) in launch order (a folder None: not
    known before the job runs), before any starts; then, every check passed, move other jobs' runs aside where
    ``overwrite``, before Hydra writes into those folders."""
    for n, (folder, key, label, overwrite) in enumerate(jobs, 1):
        if folder is not None:
            check(folder, key, label, overwrite, where, f" [job {n}]")
    for folder, key, _, overwrite in jobs:
        if folder is not None and overwrite:
            move_other_run(folder, key)


def claim(folder: Path, key: str, label: str, overwrite: bool, where: str = "hydra.run.dir") -> None:
    """Make ``folder`` job ``key``'s (call it holding ``locked(folder)``): check again (another process may have run
    a job here since ``check``), move another job's run aside when ``overwrite``, and record the job in job.json."""
    check(folder, key, label, overwrite, where)
    move_other_run(folder, key)  # there is one only with overwrite=true
    record = _json(folder / JOB)
    if record and record.get("key") == key and record.get("label") == label:
        return
    tmp = folder / f".{JOB}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"key": key, "label": label}, indent=2) + "\n")
    os.replace(tmp, folder / JOB)  # renamed into place: never a job.json that does not parse


def unclaim(folder: Path, made: bool) -> None:
    """Leave ``folder`` as it was found by a job that stopped on a user error before it wrote anything (a check inside
    the method, e.g. of the preference data): its claim goes, and the folder too when the job made it and nothing else
    is in it. A folder holding any work is left as it is."""
    if holds_run(folder):
        return
    (folder / JOB).unlink(missing_ok=True)
    if made:
        (folder / LOCK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else was written there, keep it
            folder.rmdir()


@contextlib.contextmanager
def locked(folder: Path, where: str = "hydra.run.dir"):
    """Hold ``folder``'s run lock (making the folder) for the ``with`` block; another process holding it is a
    one-line ConfigError naming the folder and the fix."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise ConfigError(
                f"{where}: {folder} is in use: another process{f' (pid {holder})' if holder else ''} is running a job "
                f"in it; wait for it to end, or run this job in another folder ({where}=<another folder>)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)  # who holds it, for the message above
        yield
    finally:
        os.close(fd)  # releases the lock
