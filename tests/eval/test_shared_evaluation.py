"""The step-0 evaluation shared between jobs through the cache: the row a job writes is the same whether it measured
or loaded, the key changes with anything the measurement depends on, a damaged file is measured again, and two real
jobs on one cache measure π_SFT once."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from harness.config import EvalConfig
from harness.eval.evaluator import Evaluator, fingerprint
from harness.eval.row import MEASURED_KEYS
from harness.runs.cache import SharedResults
from tests.eval.test_evaluator import four_token_lm

PROMPTS = ["a b", "b", "a a b", "b b"]


@pytest.fixture(scope="module")
def tiny():
    return four_token_lm(n_positions=32)


def gold(texts):
    return np.array([t.count("a") / max(1, len(t.split())) for t in texts])


def make(tiny, share, proxy=None):
    tok, sft = tiny
    cfg = EvalConfig(samples_per_prompt=3, max_new_tokens=6, batch_size=5)
    return Evaluator(copy.deepcopy(sft), tok, PROMPTS, gold, cfg, proxy=proxy, share=share, gold_identity={"k": 1})


def row(point) -> dict:
    return {k: v for k, v in point.row().items() if k not in MEASURED_KEYS} | {"evidence": point.evidence}


def evaluate(ev, policy, step=0, seed=0):
    return ev(policy, method="m", setting="", seed=seed, step=step, run_id="r")


def test_a_loaded_step0_row_equals_a_measured_one_and_each_job_scores_its_own_proxy(tiny, tmp_path, caplog):
    _, sft = tiny
    alone = row(evaluate(make(tiny, None), copy.deepcopy(sft)))
    share = SharedResults(tmp_path)
    first = row(evaluate(make(tiny, share), copy.deepcopy(sft)))
    assert len(list((tmp_path / "evaluations").glob("*.pt"))) == 1
    with caplog.at_level(logging.INFO, logger="harness.eval"):
        second_ev = make(tiny, share, proxy=lambda texts: np.array([len(t) for t in texts], dtype=float))
        second = evaluate(second_ev, copy.deepcopy(sft))
    assert "reused" in caplog.text
    assert first == alone
    assert row(second) | {"proxy_reward": None} == alone
    assert second.proxy_reward == pytest.approx(np.mean([len(t) for t in second_ev.last_texts]))
    assert second_ev.last_texts == make(tiny, None).measure(sft, 0, torch.device("cpu"))["texts"]


def test_only_step_0_is_shared(tiny, tmp_path):
    _, sft = tiny
    ev = make(tiny, SharedResults(tmp_path))
    evaluate(ev, copy.deepcopy(sft), step=5)
    assert not (tmp_path / "evaluations").exists()


def test_the_key_holds_every_weight_the_seed_and_the_thread_count(tiny, tmp_path):
    _, sft = tiny
    ev = make(tiny, SharedResults(tmp_path))
    cpu = torch.device("cpu")
    base = ev.shared_key(sft, 0, cpu)
    nudged = copy.deepcopy(sft)
    with torch.no_grad():
        nudged.transformer.h[0].mlp.c_fc.bias[3] += 1e-7  # one float, by its last bits
    assert fingerprint(nudged) != fingerprint(sft)
    assert ev.shared_key(nudged, 0, cpu) != base
    assert ev.shared_key(sft, 1, cpu) != base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert ev.shared_key(sft, 0, cpu) != base
    finally:
        torch.set_num_threads(threads)
    assert ev.shared_key(copy.deepcopy(sft), 0, cpu) == base
    other_gold = Evaluator(ev.reference, ev.tok, PROMPTS, gold, ev.cfg, share=ev.share, gold_identity={"k": 2})
    assert other_gold.shared_key(sft, 0, cpu) != base
    other_eval = Evaluator(ev.reference, ev.tok, PROMPTS, gold, EvalConfig(), share=ev.share, gold_identity={"k": 1})
    assert other_eval.shared_key(sft, 0, cpu) != base


def test_a_damaged_shared_file_is_set_aside_and_measured_again(tiny, tmp_path, caplog):
    _, sft = tiny
    share = SharedResults(tmp_path)
    expected = row(evaluate(make(tiny, share), copy.deepcopy(sft)))
    (path,) = (tmp_path / "evaluations").glob("*.pt")
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again = row(evaluate(make(tiny, share), copy.deepcopy(sft)))
    assert again == expected
    assert "damaged" in caplog.text
    assert len(list((tmp_path / "evaluations").glob("*.damaged-*"))) == 1
    assert path.exists()  # measured again and shared again


@pytest.mark.slow
def test_two_jobs_on_one_cache_measure_pi_sft_once(tiny_cache_copy, run_pipeline):
    """π_SFT's own job measures its step-0 evaluation; a DPO job on the same cache (a policy with its dropout set to
    0, which eval mode makes no different) loads it and writes the same row."""
    import json

    shared = tiny_cache_copy / "evaluations"
    _, sft = run_pipeline("sft", "threads=1", cache=tiny_cache_copy, folder="sft")
    made = {p: p.stat().st_mtime_ns for p in shared.glob("*.pt")}  # π_SFT's (and other tests' on the session cache)
    assert made
    _, dpo = run_pipeline("dpo", "threads=1", "pipeline.max_steps=1", cache=tiny_cache_copy, folder="dpo")
    assert {p: p.stat().st_mtime_ns for p in shared.glob("*.pt")} == made  # loaded, not measured again
    sft_row = json.loads((sft / "points.jsonl").read_text())
    dpo_row = json.loads((dpo / "points.jsonl").read_text().splitlines()[0])
    same = ("kl", "kl_sem", "kl_sample", "gold_reward", "gold_reward_sem", "response_tokens", "truncated_frac")
    assert {k: dpo_row[k] for k in same} == {k: sft_row[k] for k in same}
