"""Preferred-FT, Unlikelihood and Best-of-N on the tiny config, their data checks, and their small pure pieces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness.eval.row import MEASURED_KEYS
from harness.fields import ConfigError

TRAINING = ["pipeline.max_steps=4", "eval.every=2", "threads=1"]


def _rows(folder):
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# end to end on the tiny config
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, setting", [("preferred_ft", ""), ("unlikelihood", "alpha=0.5")])
def test_trained_baselines_move_the_policy_and_write_rows(method, setting, run_pipeline, tiny_cache):
    facts, folder = run_pipeline(method, *TRAINING, cache=tiny_cache, folder=method)
    assert facts["steps"] == 4 and facts["losses_finite"] and math.isfinite(facts["train_loss"])
    assert facts["parameter_change"] > 0
    rows = _rows(folder)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert {r["method"] for r in rows} == {method} and {r["setting"] for r in rows} == {setting}
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 0
    assert (folder / "policy" / "config.json").exists()


def test_best_of_n_writes_one_row_per_n(run_pipeline, tiny_cache):
    facts, folder = run_pipeline("best_of_n", "pipeline.ns=[1,2,4,8]", "threads=1", cache=tiny_cache, folder="bon")
    rows = _rows(folder)
    assert [r["setting"] for r in rows] == ["N=1", "N=2", "N=4", "N=8"]
    assert all(r["method"] == "best_of_n" and r["step"] == 0 and r["kl_sample"] is None for r in rows)
    assert [r["kl"] for r in rows] == pytest.approx([math.log(n) - (n - 1) / n for n in (1, 2, 4, 8)])
    proxy = [r["proxy_reward"] for r in rows]
    assert proxy == sorted(proxy)  # nested prefixes: the reward model's pick can only get better with N
    assert all(0 <= r["gold_reward"] <= 1 for r in rows)

    _, folder = run_pipeline(
        "best_of_n", "pipeline.ns=[1,4]", "pipeline.scorer=gold", "threads=1", cache=tiny_cache, folder="bon_gold"
    )
    gold = [r["gold_reward"] for r in _rows(folder)]
    assert gold[1] >= gold[0]  # the oracle picks by gold itself


@pytest.mark.battery
def test_best_of_n_preempted_mid_sampling_stops_and_its_rerun_gives_the_uninterrupted_rows(
    run_pipeline, tiny_cache, monkeypatch, tmp_path
):
    """SIGTERM during the second of four sampling batches: the job stops after that batch with no row (every N shares
    the one draw), and the same command draws again to the rows of an uninterrupted run."""
    import os
    import signal

    import pipelines.baselines as baselines
    from harness.runs import preempt

    args = ("best_of_n", "pipeline.ns=[1,2,4,8]", "eval.batch_size=32", "threads=1")
    real, calls = baselines.sample, []

    def signalled_sample(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(baselines, "sample", signalled_sample)
    with pytest.raises(preempt.Preempted):
        run_pipeline(*args, cache=tiny_cache, folder="bon")
    assert len(calls) == 2 and not any((tmp_path / "bon" / name).exists() for name in ("points.jsonl", "done.json"))
    monkeypatch.setattr(baselines, "sample", real)
    preempt.reset()
    run_pipeline(*args, cache=tiny_cache, folder="bon")
    run_pipeline(*args, cache=tiny_cache, folder="clean")
    drop = MEASURED_KEYS | {"run_id"}
    rows = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "bon")]
    assert len(rows) == 4 and rows == [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "clean")]


# ----------------------------------------------------------------------------------------------------------------
# data checks
# ----------------------------------------------------------------------------------------------------------------


def _pairs(**change):
    from datasets import Dataset, DatasetDict

    data = {
        "prompt": ["A fine film", "The plot"],
        "chosen": [" was lovely.", " is great."],
        "rejected": [" was bad.", " is dull."],
    }
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    return DatasetDict(train=Dataset.from_dict(data), test=Dataset.from_dict(data))


@pytest.mark.parametrize(
    "method, pairs, match",
    [
        ("unlikelihood", _pairs(rejected=None), r"missing column\(s\) rejected"),
        ("unlikelihood", _pairs(rejected=[" was lovely.", " is great."]), r"chosen == rejected"),
        ("preferred_ft", _pairs(chosen=None), r"missing column\(s\) chosen"),
        ("preferred_ft", _pairs(prompt=["", "The plot"]), r"empty prompt text"),
        ("preferred_ft", _pairs(chosen=["", " "]), r"every one of the 2 chosen texts is empty"),
    ],
)
def test_baselines_check_the_data_before_training(
    method, pairs, match, run_pipeline, tiny_cache, monkeypatch, tmp_path
):
    import pipelines.trainer_run

    monkeypatch.setattr(
        pipelines.trainer_run, "load_pairs", lambda art: pairs
    )  # baselines read pairs through trainer_run.prepare
    with pytest.raises(ConfigError, match=match) as e:
        run_pipeline(method, *TRAINING, cache=tiny_cache, folder="bad")
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()


def test_preferred_ft_needs_no_rejected_column():
    from harness.lm.models import train_tokenizer
    from pipelines.trainer_run import check_pairs

    tok = train_tokenizer(["a fine film was lovely", "the plot is great"] * 3, 280)
    out = check_pairs(_pairs(rejected=None)["train"], tok, 64, columns=("prompt", "chosen"))
    assert out.column_names == ["prompt", "chosen"] and len(out) == 2


# ----------------------------------------------------------------------------------------------------------------
# pure pieces
# ----------------------------------------------------------------------------------------------------------------


def test_best_of_n_kl_and_nested_picks():
    from pipelines.baselines import best_of_n_kl, pick_best

    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    scores = np.array([[[0.1, 0.5, 0.3, 0.9]], [[0.7, 0.2, 0.8, 0.1]]])  # (prompts=2, groups=1, N_max=4)
    assert pick_best(scores, 1).tolist() == [[0], [0]]
    assert pick_best(scores, 2).tolist() == [[1], [0]]
    assert pick_best(scores, 4).tolist() == [[3], [2]]


def test_pair_batch_aligns_labels_with_the_completion():
    from harness.lm.models import train_tokenizer
    from pipelines.baselines import EncodedPairs, encoded_batch

    tok = train_tokenizer(["the film was great", "the film was dull", "a plot"] * 5, 270)
    b = encoded_batch(EncodedPairs.of(tok, ["the film"], [" was great"], [" was dull"], 64), tok.pad_token_id, "cpu")
    assert b["input_ids"].shape[0] == 2 and b["labels"].shape == b["completion_mask"].shape
    for row, completion in enumerate([" was great", " was dull"]):
        ids = b["labels"][row][b["completion_mask"][row] > 0].tolist()
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == completion
    assert torch.equal(b["attention_mask"][:, 1:].float() * b["completion_mask"], b["completion_mask"])


def test_pairs_encoded_once_are_the_pairs_encoded_one_by_one():
    """``EncodedPairs.of`` (two batched tokenizer calls a side) gives each pair the ids and completion start of
    tokenizing it alone, cut at max_length, and widths of the uncut pairs (what orders the length-sorted batches)."""
    from harness.lm.models import train_tokenizer
    from pipelines.baselines import EncodedPairs

    tok = train_tokenizer(["the film was great", "the film was dull", "a plot that drags on and on"] * 5, 270)
    prompts, chosen, rejected = (
        ["the film", "a", "the"],
        [" was great", " plot that drags on", ""],
        [" was dull", "", " film"],
    )

    def alone(prompt: str, completion: str) -> tuple[list[int], int]:
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(prompt + completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        start = next((i for i, (a, b) in enumerate(zip(p_ids, ids)) if a != b), min(len(p_ids), len(ids)))
        return ids, start

    for max_length in (64, 4):
        pairs = EncodedPairs.of(tok, prompts, chosen, rejected, max_length)
        for i, p in enumerate(prompts):
            (c_ids, c_start), (r_ids, r_start) = alone(p, chosen[i]), alone(p, rejected[i])
            assert pairs.chosen[i] == (c_ids[:max_length], c_start)
            assert pairs.rejected[i] == (r_ids[:max_length], r_start)
            assert pairs.widths[i] == max(len(c_ids), len(r_ids))  # prompt + the longer completion + EOS, uncut
    assert max(len(ids) for ids, _ in pairs.chosen + pairs.rejected) == 4 < max(pairs.widths)  # the cut applied
    part = pairs.take([2, 0])
    assert part.chosen == [pairs.chosen[2], pairs.chosen[0]] and part.widths == [pairs.widths[2], pairs.widths[0]]


def test_an_empty_completion_is_data_not_an_error():
    """π_SFT does sample the response that ends at once (EOS only); preferring it is a real label."""
    from harness.lm.models import train_tokenizer
    from pipelines.trainer_run import check_pairs

    tok = train_tokenizer(["a fine film was lovely", "the plot is great"] * 3, 280)
    out = check_pairs(_pairs(chosen=["", " is great."])["train"], tok, 64)
    assert out["chosen"] == ["", " is great."]
