"""Every experiment's jobs and their identities: the job key (``done.json``, what makes a finished job reusable) and
the stage cache keys of π_SFT, the preference set and the reward model each job stands on.

    .venv/bin/python scripts/job_keys.py > tests/golden/job_keys.json

The golden file was written (at commit `c7988fb`, by the same computation through that commit's modules) *before* the method registry and the layered library (issue 17);
``tests/runs/test_job_keys.py`` recomputes it with today's code, so a refactor that changed an identity (and would make
every existing sweep and stage cache rerun) fails there. Computing the keys builds nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def experiment_jobs(conf_dir: str) -> dict[str, list[list[str]]]:
    """experiment name -> its jobs as the study sweeper makes them (entries x seeds), each a list of overrides."""
    import yaml

    out = {}
    for path in sorted(Path(conf_dir, "experiment").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        study = data.get("study") or [[]]
        seeds = data.get("seeds") or [None]
        out[path.stem] = [
            [str(o) for o in entry] + ([f"seed={s}"] if s is not None else []) for entry in study for s in seeds
        ]
    # every method with its defaults, no experiment (what `python -m harness pipeline=<name>` runs)
    out["_plain"] = [
        [f"pipeline={p.stem}"] + (["policy=org/some-model"] if p.stem == "evaluate" else [])
        for p in sorted(Path(conf_dir, "pipeline").glob("*.yaml"))
    ]
    return out


def all_keys() -> dict:
    from hydra import compose, initialize_config_dir

    from harness.app.cli import CONF_DIR
    from harness.app.jobs import job_identities

    os.environ.pop("HARNESS_CACHE_DIR", None)  # the default cache_dir is part of the job's identity
    out = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name, jobs in experiment_jobs(CONF_DIR).items():
            rows = []
            for overrides in jobs:
                cfg = compose(
                    config_name="config", overrides=([] if name == "_plain" else [f"experiment={name}"]) + overrides
                )
                rows.append({"overrides": overrides, **job_identities(cfg)})
            out[name] = rows
    return out


if __name__ == "__main__":
    json.dump(all_keys(), sys.stdout, indent=1, sort_keys=True)
    print()
