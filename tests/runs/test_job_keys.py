"""Identity preserved: every experiment's job keys and stage cache keys are the ones the code had before the method
registry and the layered library (issue 17), so existing sweeps and stage caches are reused, not rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "job_keys.json").read_text())
# Every method with its defaults (_plain) and tiny_debug in the edit-test loop; the studies (~0.3 s of Hydra
# composition per job, 149 jobs) only in the whole suite.
QUICK = {"_plain", "tiny_debug"}


@pytest.fixture
def job_keys(monkeypatch):
    """scripts/job_keys.py, the module that wrote the golden file, with the default cache_dir (part of a job's key)."""
    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import job_keys

    return job_keys


def test_the_golden_file_has_every_experiment(job_keys):
    from harness.app.cli import CONF_DIR

    jobs = job_keys.experiment_jobs(CONF_DIR)
    assert sorted(jobs) == sorted(GOLDEN), "an experiment was added or removed: regenerate the golden file knowingly"
    for name, golden in GOLDEN.items():
        assert jobs[name] == [j["overrides"] for j in golden], f"{name}: its jobs changed"


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=() if name in QUICK else pytest.mark.slow) for name in sorted(GOLDEN)]
)
def test_every_jobs_job_and_stage_keys_match_the_golden_file(name, job_keys):
    """Each job composed as the study sweeper composes it (the experiment, then the entry and the seed), validated,
    and its job key and stage keys computed (as ``job_keys.all_keys`` does, one experiment here)."""
    from hydra import compose, initialize_config_dir

    from harness.app.cli import CONF_DIR
    from harness.app.jobs import job_identities

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for before in GOLDEN[name]:
            overrides = ([] if name == "_plain" else [f"experiment={name}"]) + before["overrides"]
            after = {
                "overrides": before["overrides"],
                **job_identities(compose(config_name="config", overrides=overrides)),
            }
            assert json.loads(json.dumps(after)) == before, f"{name} {' '.join(before['overrides'])}: identity changed"


def test_asking_for_stage_keys_builds_nothing(tmp_path, monkeypatch):
    """The reward model's key stands on the preference set's and π_SFT's, all computed from the config alone."""
    from harness.app.jobs import job_identities
    from tests.conftest import compose

    keys = job_identities(compose(["pipeline=ppo", f"cache_dir={tmp_path / 'cache'}"]))
    assert set(keys) == {"job", "sft", "preferences", "reward_model"}
    assert not (tmp_path / "cache").exists()
