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
        skip = {f.name for f in dataclasses.fields(getattr(hc, name)) if f.metadata.get("identity") is False}
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
