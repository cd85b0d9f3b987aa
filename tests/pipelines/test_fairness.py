"""Every method trains under the same conditions (issue 8, item 5): no dropout in any trained policy (DPO's trainer,
Preferred-FT's SFTTrainer and Unlikelihood's own loop put the policy in train mode; PPO's policy and critic), and
Preferred-FT on the chosen completion of every training pair, as DPO sees the pairs. The PPO-specific parts (critic on
the normalised score, EOS appended to truncated responses, k1 only in the reward, no missing-EOS penalty by default)
are tested in tests/pipelines/test_ppo.py and tests/pipelines/test_losses.py."""

from __future__ import annotations

import json

import pytest
import torch

from harness.app.jobs import load as validate
from harness.runs.context import RunContext
from tests.conftest import compose


def context(pipeline: str, cache, folder, *overrides: str) -> RunContext:
    cfg = compose(
        [
            f"pipeline={pipeline}",
            "experiment=tiny_debug",
            f"cache_dir={cache}",
            "logger.wandb_mode=disabled",
            "threads=1",
            *overrides,
        ]
    )
    return RunContext(cfg=validate(cfg), folder=folder)


def dropout_settings(config: dict) -> dict:
    """The config's dropout probabilities (GPT-2: resid_pdrop, embd_pdrop, attn_pdrop, summary_first_dropout)."""
    return {k: v for k, v in config.items() if (k.endswith("dropout") or k.endswith("pdrop")) and isinstance(v, float)}


def train_mode_logits_twice(model, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Two forward passes in train mode (what a trainer runs): equal iff no dropout mask is drawn."""
    ids = torch.tensor([tok("The plot was great and the cast", add_special_tokens=False)["input_ids"]])
    model.train()
    with torch.no_grad():
        out = model(input_ids=ids.to(next(model.parameters()).device)).logits
        return out, model(input_ids=ids.to(out.device)).logits


@pytest.mark.parametrize("pipeline", ["dpo", "unlikelihood", "preferred_ft"])
def test_prepare_hands_over_a_policy_without_dropout(pipeline, tiny_cache, tmp_path):
    """``pipelines.trainer_run.prepare`` is the shared set-up of the DPO family, Preferred-FT and Unlikelihood."""
    from pipelines.stages.sft import load_sft
    from pipelines.trainer_run import prepare

    ctx = context(pipeline, tiny_cache, tmp_path)
    sft, tok, _ = load_sft(ctx)
    assert any(v > 0 for v in dropout_settings(sft.config.to_dict()).values())
    a, b = train_mode_logits_twice(sft, tok)
    assert not torch.equal(a, b), "π_SFT as loaded has dropout: without it this test would not bite"

    policy = prepare(ctx)[0]
    a, b = train_mode_logits_twice(policy, tok)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    settings = dropout_settings(policy.config.to_dict())
    assert settings and all(v == 0.0 for v in settings.values()), settings


def test_ppo_policy_and_critic_have_no_dropout(tiny_cache, tmp_path):
    """PPO runs in eval mode anyway; its policy and critic also have every dropout p = 0 (and a saved policy's config
    says so), so a ``train()`` anywhere cannot bring it back. ppo_gt: the same PPO, no reward model to build."""
    from pipelines.ppo import build_roles

    ctx = context("ppo_gt", tiny_cache, tmp_path, "pipeline.batch_size=16")
    roles = build_roles(ctx)
    roles.ppo(ctx.cfg.pipeline)
    for model in (roles.policy, roles.critic):
        a, b = train_mode_logits_twice(model, roles.tok)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert all(v == 0.0 for v in dropout_settings(model.config.to_dict()).values())


def test_preferred_ft_trains_on_the_chosen_completion_of_every_pair(run_pipeline, tiny_cache, tmp_path):
    """One example per training pair (duplicate chosen completions kept, as the DPO paper's SFT on y_w), and the saved
    policy has no dropout."""
    from pipelines.stages.preferences import ensure_preferences, load_pairs

    facts, folder = run_pipeline(
        "preferred_ft", "pipeline.max_steps=2", "eval.every=2", "threads=1", cache=tiny_cache, folder="preferred_ft"
    )
    pairs = load_pairs(ensure_preferences(context("preferred_ft", tiny_cache, tmp_path / "ctx")))["train"]
    distinct = set(zip(pairs["prompt"], pairs["chosen"]))
    assert len(distinct) < len(pairs), "the tiny set repeats chosen completions: without that this test would not bite"
    assert facts["train_examples"] == facts["train_pairs"] == len(pairs)

    saved = json.loads((folder / "policy" / "config.json").read_text())
    settings = dropout_settings(saved)
    assert settings and all(v == 0.0 for v in settings.values()), settings


def test_a_truncated_completion_is_trained_on_with_eos_by_dpo_and_the_reward_model(tiny_cache, tmp_path):
    """Truncation is treated alike in every stage: a completion cut at max_new_tokens enters the pairs as text, and
    both TRL trainers that learn from the pairs train on it with EOS appended; PPO scores its truncated rollouts with
    EOS appended too (tests/pipelines/test_ppo.py::test_reward_model_scores_a_truncated_response_with_eos_appended)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from harness.lm.models import load_scalar_model
    from pipelines.dpo import build_trainer
    from pipelines.stages.preferences import ensure_preferences, load_pairs
    from pipelines.stages.sft import load_sft
    from pipelines.trainer_run import load_frozen_reference

    ctx = context("dpo", tiny_cache, tmp_path)
    policy, tok, sft = load_sft(ctx)
    pairs = load_pairs(ensure_preferences(ctx))["train"]
    assert {"chosen_truncated", "rejected_truncated"} <= set(pairs.column_names)
    cut = "The plot was great and the"  # a completion that stopped mid-sentence, as a truncated sample does
    data = Dataset.from_dict({"prompt": ["I saw it."] * 2, "chosen": [" " + cut] * 2, "rejected": [" Bad."] * 2})
    dpo = build_trainer(
        policy, load_frozen_reference(sft.path, tok, ctx.device), tok, data, ctx.cfg.pipeline, str(tmp_path / "dpo")
    )
    rm_args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        report_to=[],
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_length=64,
    )
    rm = RewardTrainer(model=load_scalar_model(sft.path, tok), args=rm_args, train_dataset=data, processing_class=tok)
    for trainer in (dpo, rm):
        row = trainer.train_dataset[0]
        chosen = next(row[k] for k in ("chosen_ids", "chosen_input_ids") if k in row)
        assert chosen[-1] == tok.eos_token_id
