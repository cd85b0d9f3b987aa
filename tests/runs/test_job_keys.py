"""Identity preserved: every experiment's job keys and stage cache keys are the ones the code had before the method
registry and the layered library (issue 17), so existing sweeps and stage caches are reused, not rerun."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_experiments_job_and_stage_keys_match_the_golden_file(monkeypatch):
    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import job_keys

    golden = json.loads((ROOT / "tests" / "golden" / "job_keys.json").read_text())
    now = json.loads(json.dumps(job_keys.all_keys()))
    assert sorted(now) == sorted(golden), "an experiment was added or removed: regenerate the golden file knowingly"
    for name, jobs in golden.items():
        assert [j["overrides"] for j in now[name]] == [j["overrides"] for j in jobs], name
        for before, after in zip(jobs, now[name]):
            assert after == before, f"{name} {' '.join(before['overrides'])}: identity changed"


def test_asking_for_stage_keys_builds_nothing(tmp_path, monkeypatch):
    """The reward model's key stands on the preference set's and π_SFT's, all computed from the config alone."""
    from tests.conftest import compose
    from harness.app.jobs import job_identities

    keys = job_identities(compose(["pipeline=ppo", f"cache_dir={tmp_path / 'cache'}"]))
    assert set(keys) == {"job", "sft", "preferences", "reward_model"}
    assert not (tmp_path / "cache").exists()
