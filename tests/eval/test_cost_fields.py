"""Every result row records its job's cost (issue 26, item 5): seconds per training step, the job's peak memory and
the models it holds. The memory functions are measured against a known allocation; the rows of real tiny jobs are
checked for the models each method holds (PPO: policy, reference, critic, reward model)."""

from __future__ import annotations

import json

import pytest
import torch

from harness.lm import memory

CPU = torch.device("cpu")


def test_the_peak_is_the_jobs_own_after_a_reset():
    memory.reset_peak(CPU)
    before, kind = memory.peak_memory(CPU)
    assert kind == "resident"  # Linux: the high-water mark can be reset
    block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
    during, _ = memory.peak_memory(CPU)
    assert during >= before + 200
    del block
    memory.reset_peak(CPU)
    after, _ = memory.peak_memory(CPU)
    assert after < during - 200  # an earlier job's peak does not carry into the next one


def test_models_held_counts_each_model_once_and_parameters_once_per_tensor():
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16, num_labels=1)
    before = {id(m) for m in memory.models_held()}
    lm, scalar = GPT2LMHeadModel(config), GPT2ForSequenceClassification(config)
    new = [m for m in memory.models_held() if id(m) not in before]
    assert sorted(type(m).__name__ for m in new) == ["GPT2ForSequenceClassification", "GPT2LMHeadModel"]
    # the LM head is tied to the embedding: one tensor, counted once
    assert memory.parameters_of([lm]) == sum(p.numel() for p in lm.parameters())
    assert memory.parameters_of([lm, lm]) == memory.parameters_of([lm])
    assert memory.parameters_of([lm, scalar]) == sum(p.numel() for p in lm.parameters()) + sum(
        p.numel() for p in scalar.parameters()
    )


@pytest.mark.parametrize(
    "method, overrides, held",
    [
        ("ppo", ["pipeline.updates=2", "pipeline.batch_size=16"], 4),  # policy, reference, critic, reward model
        ("ppo_gt", ["pipeline.updates=2", "pipeline.batch_size=16"], 3),  # the gold reward is VADER, no model
        ("dpo", ["pipeline.max_steps=2", "pipeline.batch_size=16"], 2),  # policy, reference
    ],
)
def test_every_row_records_its_jobs_cost(method, overrides, held, run_pipeline, tiny_cache):
    _, folder = run_pipeline(method, *overrides, "eval.every=1", cache=tiny_cache)
    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["models_held"] == held, (method, r["models_held"])
        assert r["model_parameters"] > 0 and r["peak_memory_kind"] == "resident"
        assert r["peak_memory_mb"] > 50  # a Python process with torch holds more than this
    assert rows[0]["step_s"] is None  # no step taken yet
    assert all(r["step_s"] > 0 for r in rows[1:])
    assert rows[2]["step_s"] == pytest.approx(rows[2]["compute_wall_s"] / 2, rel=1e-3, abs=1e-3)


def test_best_of_n_rows_record_their_cost_too(run_pipeline, tiny_cache):
    """Best-of-N writes its rows without the evaluator (one per N, from one set of samples): they carry the cost."""
    _, folder = run_pipeline("best_of_n", "pipeline.ns=[1,2]", cache=tiny_cache)
    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["models_held"] >= 2 and r["model_parameters"] > 0  # π_SFT and the reward model at least
        assert r["peak_memory_kind"] == "resident" and r["peak_memory_mb"] > 50
