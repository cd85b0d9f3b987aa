"""Every method of the registry runs on the real pretrained model (SmolLM2-135M-Instruct, ``experiment=
smollm2_debug``): its stages build, its job trains a step or two and writes evaluation rows with a finite KL to π_SFT
and a gold reward. A few steps each, so the suite can afford them; what they show is that the code paths hold on a
llama model with a 49k vocabulary and pad = EOS, not what the methods reach (``experiment=real_model`` does)."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from pipelines.registry import METHODS
from tests.conftest import compose

# The budget of each method: one or two optimizer steps on a handful of examples, 8-token responses.
PAIRS = ["pipeline.max_steps=1", "pipeline.batch_size=4", "pipeline.micro_batch_size=0", "pipeline.max_length=40"]
ONLINE = ["pipeline.max_steps=1", "pipeline.batch_size=4", "pipeline.num_generations=2", "pipeline.max_new_tokens=8"]
PPO = [
    "pipeline.updates=1",
    "pipeline.batch_size=4",
    "pipeline.num_minibatches=1",
    "pipeline.ppo_epochs=1",
    "pipeline.max_new_tokens=8",
]
BUDGETS = {
    "sft": [],
    "preferences": [],
    "reward_model": [],
    "ppo": PPO,
    "ppo_gt": PPO,
    "dpo": PAIRS,
    "ipo": PAIRS,
    "cdpo": PAIRS,
    "kto": [*PAIRS[:2], "pipeline.micro_batch_size=4", PAIRS[3]],
    "unlikelihood": PAIRS,
    "preferred_ft": PAIRS,
    "rloo": ONLINE,
    "rloo_gt": ONLINE,
    "grpo": ONLINE,
    "grpo_gt": ONLINE,
    "online_dpo": ["pipeline.updates=1", "pipeline.batch_size=2", "pipeline.max_new_tokens=8"],
    "best_of_n": ["pipeline.ns=[1,2]"],
    "evaluate": [],  # the policy: π_SFT's folder (a causal LM saved with save_pretrained), given below
}


def test_the_budgets_name_every_method_of_the_registry():
    assert sorted(BUDGETS) == sorted(METHODS)


@pytest.fixture(scope="module")
def stages(smollm2_cache, tmp_path_factory):
    """π_SFT, the preference set and the reward model on SmolLM2 (one ``pipeline=reward_model`` job), in a cache of
    this module's own (the converted base model linked in, not copied)."""
    from harness.app.jobs import run_job

    cache = tmp_path_factory.mktemp("smollm2_methods") / "cache"
    shutil.copytree(smollm2_cache, cache, copy_function=os.link, ignore=shutil.ignore_patterns("*.lock"))
    run_job(_config("reward_model", cache), tmp_path_factory.mktemp("smollm2_stages_job"))
    return cache


def _config(method: str, cache, *overrides: str):
    return compose([f"pipeline={method}", "experiment=smollm2_debug", f"cache_dir={cache}", "threads=2", *overrides])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", sorted(BUDGETS))
def test_every_registry_method_runs_on_the_real_model(method, stages, tmp_path):
    from harness.app.jobs import run_job

    extra = list(BUDGETS[method])
    if method == "evaluate":
        (sft,) = [p for p in (stages / "sft").iterdir() if (p / "artifact.json").exists()]
        extra.append(f"policy={sft}")
    result = run_job(_config(method, stages, *extra), tmp_path / "job")
    assert isinstance(result, dict)
    if method in ("preferences", "reward_model"):
        return  # a stage: built (or reused) and described, no evaluation of its own
    rows = [json.loads(line) for line in (tmp_path / "job" / "points.jsonl").read_text().splitlines()]
    assert rows, f"{method} wrote no evaluation row"
    for row in rows:
        assert math.isfinite(row["kl"]) and row["kl"] >= 0, row
        assert math.isfinite(row["gold_reward"]), row
