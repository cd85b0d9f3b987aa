"""The stage-artifact cache: SFT model, preference set, reward model, keyed by the config that determines them.

An artifact lives at ``<cache>/<stage>/<key>`` where key = sha256 of its identity (the config sections that
determine it, including the keys of the artifacts it was built from). It is built under a temporary name and
renamed when complete, so a crash never leaves a half artifact that looks finished; a file lock per key keeps two
jobs of a sweep from building the same one (the second waits, then reuses).

Under multi-process training (``harness.distributed``) the processes of one job build a missing stage together (its
trainer is data-parallel across them, so they must all run it): the main process holds the lock and decides, every
process builds into its own temporary folder, and the main process's becomes the artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from harness import distributed

log = logging.getLogger(__name__)
MANIFEST = "artifact.json"


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


def build_or_load(root: str | Path, stage: str, identity: dict, build: Callable[[Path], dict | None]) -> Artifact:
    """Return the artifact for ``identity``, calling ``build(tmp_dir)`` only if no complete one exists.

    ``build`` writes into the folder it is given and may return a dict of facts (metrics) kept in the manifest.
    """
    key = key_of(identity)
    base = Path(root) / stage
    final = base / key
    if distributed.agree((final / MANIFEST).exists()):
        return Artifact(stage, key, final, reused=True)
    base.mkdir(parents=True, exist_ok=True)
    # One lock per job: its main process's (the job's other processes follow the main process's decisions).
    with FileLock(str(base / f"{key}.lock")) if distributed.is_main() else contextlib.nullcontext():
        if distributed.on_main((final / MANIFEST).exists):  # another job built it while we waited
            return Artifact(stage, key, final, reused=True)
        tmp = base / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            facts = build(tmp) or {}

            def commit() -> None:
                (tmp / MANIFEST).write_text(json.dumps({"stage": stage, "key": key, "identity": identity, "facts": facts}, indent=2, default=str))
                if final.exists():  # an incomplete leftover without a manifest
                    shutil.rmtree(final)
                os.rename(tmp, final)

            distributed.on_main(commit)  # the others wait here until the artifact is in place
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(stage, key, final, reused=False)
