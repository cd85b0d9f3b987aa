"""The stage-artifact cache: SFT model, preference set, reward model, keyed by the config that determines them.

An artifact lives at ``<cache>/<stage>/<key>`` where key = sha256 of its identity (the config sections that
determine it, including the keys of the artifacts it was built from). It is built under a temporary name and
renamed when complete, so a crash never leaves a half artifact that looks finished; a file lock per key keeps two
jobs of a sweep from building the same one (the second waits, then reuses), in other processes too and, on a
filesystem shared by several machines, on other machines.

The lock is filelock's FileLock: flock(2) on the ``<key>.lock`` file, released by the kernel when its holder dies, so a
killed builder never blocks the next one. On NFS, Linux serves flock through the server's byte-range locks (NFSv4, or
NFSv3 with lockd), which hold across machines; but a mount with ``local_lock=flock``/``all`` or ``nolock`` (or Lustre
without ``-o flock``) keeps flock local to each machine, and two machines would both build. There set
``HARNESS_CACHE_LOCK=soft``: filelock's SoftFileLock, an exclusively created marker file, which any filesystem with
atomic exclusive create (NFSv3 and later) shares. Its cost: a holder that crashed on another machine leaves its marker
(filelock reclaims one whose holder died on this machine), and that key waits until its ``<key>.lock`` is removed.

Under multi-process training (``harness.lm.distributed``) the processes of one job build a missing stage together (its
trainer is data-parallel across them, so they must all run it): the main process holds the lock and decides, every
process builds into its own temporary folder, and the main process's becomes the artifact.

An artifact is checked when read back (its manifest, and what its stage's ``check`` looks at: weights from their
headers, JSON that parses, datasets that load): one damaged since it was built (a copy that stopped, a full disk, a
file removed by hand) is set aside as ``<key>.damaged-<time>`` (renamed, never deleted: it may show what went wrong)
with one warning, and built again. It is our cache: rebuilding costs time, using a damaged one costs a traceback or
wrong results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, SoftFileLock

from harness.lm import distributed
from harness.runs import preempt

log = logging.getLogger(__name__)
MANIFEST = "artifact.json"
DAMAGED = ".damaged-"  # what a damaged artifact or checkpoint set aside is renamed to: <name>.damaged-<time>
LOCKS = {"flock": FileLock, "soft": SoftFileLock}  # HARNESS_CACHE_LOCK (see above); flock unless set


def stage_lock(path: Path):
    """The lock that guards one artifact's build (``HARNESS_CACHE_LOCK`` picks its kind)."""
    kind = os.environ.get("HARNESS_CACHE_LOCK") or "flock"
    if kind not in LOCKS:
        from harness.fields import ConfigError

        raise ConfigError(
            f"HARNESS_CACHE_LOCK: '{kind}' is no lock kind; use one of {', '.join(LOCKS)} (soft: a "
            "filesystem where flock does not hold across machines)"
        )
    return LOCKS[kind](str(path))


def key_of(identity: dict) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    reused: bool

    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


def resume_folder(root: str | Path, stage: str, key: str) -> Path:
    """Where a stage build keeps what it resumes from (its trainer's checkpoints) until its artifact is committed."""
    return Path(root) / stage / f".resume-{key}"


def damage(path: Path, check: Callable[[Path], str | None] | None = None) -> str | None:
    """What makes the finished artifact at ``path`` unusable: a manifest that does not parse, or what the stage's
    ``check`` finds (None from it: whole); None when the artifact is whole."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
        return f"{MANIFEST} cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("facts"), dict):
        return f"{MANIFEST} is not a manifest (a JSON object with facts)"
    return check(path) if check is not None else None


def aside_path(path: Path) -> Path:
    """Where a damaged ``path`` goes: ``<name>.damaged-<time>`` beside it, a name not taken yet."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}{DAMAGED}{stamp}"), 1
    while aside.exists():  # set aside twice in one second
        n += 1
        aside = path.with_name(f"{path.name}{DAMAGED}{stamp}-{n}")
    return aside


def set_aside(path: Path, stage: str, why: str) -> Path:
    """Move the damaged artifact ``path`` to ``<key>.damaged-<time>`` beside it (a rename: nothing is deleted), with
    one warning; the caller builds it again."""
    aside = aside_path(path)
    os.rename(path, aside)
    log.warning("cached %s %s is damaged (%s); set aside as %s, building it again", stage, path, why, aside.name)
    return aside


def build_or_load(
    root: str | Path,
    stage: str,
    identity: dict,
    build: Callable[..., dict | None],
    check: Callable[[Path], str | None] | None = None,
    resumable: bool = False,
) -> Artifact:
    """Return the artifact for ``identity``, calling ``build(tmp_dir)`` only if no complete one exists.

    ``build`` writes into the folder it is given and may return a dict of facts (metrics) kept in the manifest.
    ``check(path)`` says what is wrong with a finished artifact read back (None: whole); a damaged one is set aside
    and built again.
    ``resumable``: ``build(tmp_dir, resume_dir)`` instead, where ``resume_dir`` (``resume_folder``) outlives a killed
    or pre-empted build (a rerun's build continues from what it holds) and is removed once the artifact is committed.

    A pre-emption signal (``harness.runs.preempt``) received during a build that had no safe point left stops the job
    right after the artifact is committed: the work is kept, and the next stage does not start.
    """
    key = key_of(identity)
    base = Path(root) / stage
    final = base / key
    if distributed.agree((final / MANIFEST).exists()) and distributed.on_main(damage, final, check) is None:
        return Artifact(stage, key, final, reused=True)
    base.mkdir(parents=True, exist_ok=True)
    # One lock per job: its main process's (the job's other processes follow the main process's decisions).
    with stage_lock(base / f"{key}.lock") if distributed.is_main() else contextlib.nullcontext():

        def built_or_cleared() -> bool:
            """True when another job built it while we waited; else clear a killed builder's half (we hold the
            lock: nobody else is building), before this job's processes make their own folders."""
            if (final / MANIFEST).exists():
                why = damage(final, check)  # again under the lock: another job may have rebuilt it meanwhile
                if why is None:
                    return True
                set_aside(final, stage, why)
            for stale in base.glob(f".tmp-{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            return False

        if distributed.on_main(built_or_cleared):
            return Artifact(stage, key, final, reused=True)
        tmp = base / f".tmp-{key}-{socket.gethostname()}-{os.getpid()}"  # host too: machines share the cache
        tmp.mkdir(parents=True)
        resume = resume_folder(root, stage, key)
        try:
            facts = (build(tmp, resume) if resumable else build(tmp)) or {}

            def commit() -> None:
                (tmp / MANIFEST).write_text(
                    json.dumps(
                        {"stage": stage, "key": key, "identity": identity, "facts": facts}, indent=2, default=str
                    )
                )
                if final.exists():  # an incomplete leftover without a manifest
                    shutil.rmtree(final)
                os.rename(tmp, final)
                shutil.rmtree(resume, ignore_errors=True)  # only now: until the artifact exists, a rerun needs it

            distributed.on_main(commit)  # the others wait here until the artifact is in place
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    preempt.stop_if_requested()  # the artifact is in place: a job signalled while building it stops here
    return Artifact(stage, key, final, reused=False)


class SharedResults:
    """Results that jobs share through the cache (``harness.eval.evaluator.SharedMeasurements``): ``<cache>/<kind>/<key>.pt``,
    written whole (a temporary file, renamed), with the stages' per-key lock held while one job makes it.

    Unlike a stage, a result is a convenience: one that cannot be read is set aside with one warning and made again,
    and a cache that cannot be written only means the next job makes it again too (one warning)."""

    def __init__(self, root: str | Path, kind: str = "evaluations") -> None:
        self.base = Path(root) / kind

    def lock(self, key: str):
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            return stage_lock(self.base / f"{key}.lock")
        except OSError as e:
            log.warning("%s: cannot share results there (%s); this job measures on its own", self.base, e)
            return contextlib.nullcontext()

    def load(self, key: str) -> dict | None:
        import torch

        path = self.base / f"{key}.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # a cut or foreign file: any unpickling error
            set_aside(path, self.base.name, f"does not load ({type(e).__name__})")
            return None

    def save(self, key: str, payload: dict) -> None:
        import torch

        tmp = self.base / f".tmp-{key}-{socket.gethostname()}-{os.getpid()}.pt"
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.base / f"{key}.pt")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("%s: cannot share results there (%s); the next job measures again", self.base, e)
