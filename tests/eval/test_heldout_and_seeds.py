"""Held-out prompts that are held out (every task), response lengths that fit, seeds that vary what they should,
clustered SEMs, per-prompt evidence and the compute axis in every row."""

import json

import numpy as np
import pytest

from harness.config import TaskConfig
from harness.data.tasks import load_task
from harness.eval.evaluator import clustered_sem, sampling_seed
from harness.fields import MAX_NEW_TOKENS, ConfigError

# Openings that repeat across reviews, so short prefixes collide between the training and held-out splits.
OPENINGS = ["The plot was", "I loved the", "This movie is", "The acting felt", "A truly great"]


def _repetitive_reviews(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    words = "good bad dull bright quiet long warm cold fine odd".split()
    return [f"{OPENINGS[i % len(OPENINGS)]} {' '.join(rng.choice(words, size=6))} review {i}." for i in range(n)]


def _assert_disjoint(t) -> None:
    assert t.eval_prompts and not set(t.eval_prompts) & set(t.train_prompts)
    assert len(set(t.eval_prompts)) == len(t.eval_prompts)  # distinct: the bootstrap's units are independent
    for p in t.eval_prompts:
        assert any(h.startswith(p) for h in t.heldout_texts)


def test_default_task_eval_prompts_share_nothing_with_training():
    t = load_task(TaskConfig())  # the embedded default: 23 of 128 were training prompts before
    assert len(t.eval_prompts) == 128
    _assert_disjoint(t)


def test_local_task_eval_prompts_share_nothing_with_training(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in _repetitive_reviews(400)))
    cfg = TaskConfig(name="local", path=str(path), n_train=300, n_heldout=80, n_train_prompts=300, n_eval_prompts=40)
    _assert_disjoint(load_task(cfg))


def test_imdb_format_task_eval_prompts_share_nothing_with_training(tmp_path):
    from datasets import Dataset, DatasetDict

    texts = _repetitive_reviews(500)
    DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts[:400], "label": [i % 2 for i in range(400)]}),
            "test": Dataset.from_dict({"text": texts[400:], "label": [i % 2 for i in range(100)]}),
        }
    ).save_to_disk(str(tmp_path / "imdb"))
    cfg = TaskConfig(
        name="imdb", path=str(tmp_path / "imdb"), n_train=400, n_heldout=100, n_train_prompts=400, n_eval_prompts=50
    )
    _assert_disjoint(load_task(cfg))


def test_too_few_distinct_heldout_prompts_is_a_one_line_error():
    with pytest.raises(ConfigError, match="task.n_eval_prompts") as e:
        load_task(TaskConfig(n_train=300, n_heldout=3, n_train_prompts=40, n_eval_prompts=500))
    assert "\n" not in str(e.value)


def test_default_reviews_fit_in_max_new_tokens():
    """π_SFT imitates the corpus, so the corpus's completions must fit: after a 2–8-word prompt, >= 99% of held-out
    reviews finish (EOS included) within MAX_NEW_TOKENS tokens (at 24 tokens and 2–4 sentences, 41% of π_SFT's
    samples were cut off)."""
    import random

    from harness.data.tasks import _prompt
    from harness.lm.models import train_tokenizer

    t = load_task(TaskConfig())
    tok = train_tokenizer(t.train_texts, 1024)
    rng = random.Random(0)
    lengths = []
    for text in t.heldout_texts:
        prompt = _prompt(text, 2, 8, rng)
        if prompt is None:  # too short to be a prompt source: never completed
            continue
        lengths.append(len(tok(text[len(prompt) :], add_special_tokens=False)["input_ids"]) + 1)
    assert np.mean(np.array(lengths) > MAX_NEW_TOKENS) <= 0.01


def test_clustered_sem_counts_prompts_not_samples():
    rng = np.random.default_rng(0)
    per_prompt = rng.normal(size=50)
    values = np.repeat(per_prompt, 4)  # 4 identical samples per prompt: no more information than 50 values
    idx = np.repeat(np.arange(50), 4)
    assert clustered_sem(values, idx, 50) == pytest.approx(per_prompt.std(ddof=1) / np.sqrt(50))
    assert clustered_sem(values, idx, 50) > 1.9 * values.std(ddof=1) / np.sqrt(200)  # the naive SEM is ~half


def test_sampling_seed_derives_from_the_run_seed():
    assert sampling_seed(1234, 0) == sampling_seed(1234, 0)
    assert len({sampling_seed(1234, s) for s in range(5)}) == 5
    assert sampling_seed(1234, 0) != sampling_seed(99, 0)


def test_best_of_n_varies_with_the_seed(run_pipeline, tiny_cache):
    cache = tiny_cache  # the seed is not part of a stage's identity (stages_per_seed=false): both reuse π_SFT
    rows = []
    for seed in (0, 1):
        _, folder = run_pipeline(
            "best_of_n", f"seed={seed}", "pipeline.ns=[1,4]", "pipeline.scorer=gold", cache=cache, folder=f"bon{seed}"
        )
        rows.append([json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()])
        evidence = [json.loads(line) for line in (folder / "evidence.jsonl").read_text().splitlines()]
        assert [(e["setting"], e["step"]) for e in evidence] == [(r["setting"], r["step"]) for r in rows[-1]]
        for e, r in zip(evidence, rows[-1]):
            assert np.mean(e["gold"]) == pytest.approx(r["gold_reward"], abs=1e-5)
            assert e["kl"] == pytest.approx([r["kl"]] * len(e["kl"]), abs=1e-6)

    # The draws differ with the seed. Not the gold alone: the tiny π_SFT's samples are nearly random tokens, which
    # VADER mostly scores neutral, so both seeds' per-prompt gold can coincide (seen once the packed SFT rounded
    # π_SFT differently) while the samples do not.
    def drawn(r):
        return (r["gold_reward"], r["response_tokens"], r["truncated_frac"])

    assert [drawn(r) for r in rows[0]] != [drawn(r) for r in rows[1]]


def test_stages_per_seed_rebuilds_preferences_and_reward_model(run_pipeline, tiny_cache_copy):
    cache = tiny_cache_copy  # a copy: this test adds artifacts and counts them
    small = ["reward_model.epochs=1"]
    shared = [
        run_pipeline("reward_model", f"seed={s}", *small, cache=cache, folder=f"shared{s}")[0]["path"] for s in (0, 1)
    ]
    assert shared[0] == shared[1]
    own = [
        run_pipeline("reward_model", f"seed={s}", "stages_per_seed=true", *small, cache=cache, folder=f"own{s}")[0]
        for s in (0, 1)
    ]
    assert own[0]["path"] != own[1]["path"]
    prefs = sorted(p for p in (cache / "preferences").iterdir() if (p / "artifact.json").exists())
    # seed 0's own set is seeded like the shared one (stage seed 0 = task.seed), so it is the same artifact
    assert own[0]["path"] == shared[0] and len(prefs) == 2
    facts = [json.loads((p / "artifact.json").read_text())["facts"] for p in prefs]
    assert sorted(f["stage_seed"] for f in facts) == [0, 1]


def test_rows_carry_truncation_and_compute(run_pipeline, tiny_cache):
    _, folder = run_pipeline("dpo", "pipeline.max_steps=4", "pipeline.batch_size=16", "eval.every=2", cache=tiny_cache)
    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(0.0 <= r["truncated_frac"] <= 1.0 for r in rows)
    trained = [r["compute_tokens_trained"] for r in rows]
    assert trained[0] == 0 and trained[1] > 0 and trained[2] > trained[1]
    assert all(r["compute_tokens_generated"] == 0 for r in rows)  # offline: DPO samples nothing while training
    assert rows[0]["compute_wall_s"] <= rows[-1]["compute_wall_s"]
    evidence = [json.loads(line) for line in (folder / "evidence.jsonl").read_text().splitlines()]
    assert len(evidence) == len(rows) and len(evidence[0]["gold"]) == 8  # tiny_debug: 8 evaluation prompts
    for e, r in zip(evidence, rows):
        assert np.mean(e["gold"]) == pytest.approx(r["gold_reward"], abs=1e-5)
        assert np.mean(e["kl"]) == pytest.approx(r["kl"], rel=1e-4, abs=1e-6)
        assert np.mean(e["truncated"]) == pytest.approx(r["truncated_frac"])
