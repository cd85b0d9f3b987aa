import threading

import pytest

from harness.config import TaskConfig
from harness.data.tasks import generate_reviews, load_task, vocabulary
from harness.runs.cache import build_or_load, key_of


def test_reviews_are_seeded_varied_and_split():
    a, b = generate_reviews(200, seed=3), generate_reviews(200, seed=3)
    assert a == b and a != generate_reviews(200, seed=4)
    assert len(vocabulary(generate_reviews(3000, 0))) >= 300  # several hundred words
    t = load_task(TaskConfig(n_train=300, n_heldout=50, n_train_prompts=40, n_eval_prompts=20))
    assert len(t.train_texts) == 300 and len(t.heldout_texts) == 50
    assert not set(t.train_texts) & set(t.heldout_texts) or len(set(t.heldout_texts) - set(t.train_texts)) > 40
    for prompt in t.train_prompts:  # prefixes of training reviews that leave at least one word to complete
        assert 2 <= len(prompt.split()) <= 8
        assert any(r.startswith(prompt) and len(r.split()) > len(prompt.split()) for r in t.train_texts)
    for prompt in t.eval_prompts:  # prefixes of held-out reviews (skipping those a training prompt equals)
        assert 2 <= len(prompt.split()) <= 8 and any(h.startswith(prompt) for h in t.heldout_texts)


def test_cache_builds_once_and_reuses(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.bin").write_text("w")
        return {"loss": 1.5}

    a = build_or_load(tmp_path, "sft", {"x": 1}, build)
    b = build_or_load(tmp_path, "sft", {"x": 1}, build)
    c = build_or_load(tmp_path, "sft", {"x": 2}, build)
    assert len(calls) == 2 and not a.reused and b.reused and a.path == b.path != c.path
    assert a.manifest()["facts"] == {"loss": 1.5} and (a.path / "weights.bin").exists()
    assert key_of({"x": 1}) == a.key


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def boom(out):
        (out / "half.bin").write_text("partial")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        build_or_load(tmp_path, "sft", {"x": 1}, boom)
    assert [p.name for p in (tmp_path / "sft").iterdir() if not p.name.endswith(".lock")] == []
    ok = build_or_load(tmp_path, "sft", {"x": 1}, lambda out: None)
    assert not ok.reused


def test_concurrent_jobs_build_the_same_artifact_once(tmp_path):
    calls = []

    def slow(out):
        import time

        calls.append(1)
        time.sleep(0.3)
        (out / "m").write_text("1")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(build_or_load(tmp_path, "prefs", {"k": 1}, slow)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum(r.reused for r in results) == 2
