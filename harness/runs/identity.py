"""A job's identity: the resolved config it runs, the key that names it, and the record of a finished job.

The key is what makes a finished job reusable (``done.json``) and a killed one resumable (its checkpoints carry it):
what the job computes, never how it runs (threads, permissions, checkpoint cadence: the NOT_IDENTITY fields).
``tests/runs/test_job_keys.py`` holds every experiment's keys to a golden file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.config import SECTION_TYPES, HarnessConfig
from harness.fields import out_of_identity
from harness.runs.cache import key_of

DONE = "done.json"  # written when a job finished; holds its config key and result


SECTIONS = (*SECTION_TYPES, "pipeline")  # the config's sections, the method's own last


def resolved(hc: HarnessConfig) -> dict:
    """The full config as run: YAML values plus every schema default, so a run folder says everything."""
    out = {k: dataclasses.asdict(getattr(hc, k)) for k in SECTIONS}
    out.update(
        seed=hc.seed,
        cache_dir=hc.cache_dir,
        device=hc.device,
        threads=hc.threads,
        stages_per_seed=hc.stages_per_seed,
        precision=hc.precision,
    )
    out["experiment_name"] = hc.raw.get("experiment_name")
    # (the study's job list and seed list are the sweep's, not the job's: a job stays "finished" when the study grows)
    from harness.runs.secrets import redact

    return redact(out)  # saved with the run and sent to W&B: no secret an interpolation pulled in


def job_key(hc: HarnessConfig) -> str:
    """The job's identity is what it computes: neither the thread count (how fast) nor a permission such as
    ``trust_remote_code`` (how it may run), so a rerun under another launcher still reuses the finished job."""
    ident = {k: v for k, v in hc.raw.items() if k != "threads"}
    for name in SECTIONS:
        section = getattr(hc, name)
        skip = {f.name for f in dataclasses.fields(section) if out_of_identity(f, getattr(section, f.name))}
        ident[name] = {k: v for k, v in ident[name].items() if k not in skip}
    if hc.preferences.source == "file":  # the file's content, not its name: an edited file makes a new job
        from harness.data.preference_file import content_hash

        ident["preferences"] = {**ident["preferences"], "file_sha256": content_hash(hc.preferences.path)}
    return key_of(ident)


def finished(folder: Path, key: str) -> dict | None:
    """The ``done.json`` record of ``folder`` if it holds a finished run of the job ``key``, else None."""
    try:
        record = json.loads((folder / DONE).read_text())
    except (OSError, ValueError):  # none yet, or unreadable: the job has not (provably) finished
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


# Bytes of a job folder's name: below the 255 most filesystems allow for one name, with room for a suffix another
# tool may add (".replaced-<time>", a lock file's name).
FOLDER_NAME_BYTES = 200


def fitting_name(name: str, limit: int = FOLDER_NAME_BYTES) -> str:
    """A study job's folder name (its overrides, ``hydra.job.override_dirname``) that the filesystem can hold: unchanged
    when it fits (every name of today's studies), else a readable prefix cut at an override boundary plus a hash of the
    whole, e.g. ``pipeline.beta=0.1,pipeline=dpo,...-3f2a9c1e04b7``. The full overrides stay in the job folder's
    ``.hydra/overrides.yaml`` (Hydra writes it for every job)."""
    import hashlib

    raw = name.encode()
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    head = raw[: limit - len(digest) - 5].decode(errors="ignore")
    head = head.rsplit(",", 1)[0] if "," in head else head  # a whole override, where one fits
    return f"{head},...-{digest}"
