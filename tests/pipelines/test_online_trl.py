"""RLOO and GRPO through TRL: each of rloo, grpo, rloo_gt, grpo_gt end to end on the tiny config (the policy moves,
losses finite, rows with DPO's schema), and the advantages the trainers used against the papers' formulas worked out
by hand on a fixed batch of rewards."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from harness.fields import ConfigError

TINY = [
    "pipeline.max_steps=2",
    "pipeline.batch_size=8",
    "pipeline.num_generations=4",
    "pipeline.max_new_tokens=8",
    "eval.every=1",
    "threads=1",
]
METHODS = ("rloo", "grpo", "rloo_gt", "grpo_gt")


def _rows(folder):
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def online_runs(tiny_cache, tmp_path_factory):
    """Every online method, and one DPO job for the row schema, on the tiny config: {method: (facts, rows)}."""
    from harness.app.jobs import run_job
    from tests.conftest import compose

    out = tmp_path_factory.mktemp("online")
    runs = {}
    for method, extra in [(m, TINY) for m in METHODS] + [
        ("dpo", ["pipeline.max_steps=1", "pipeline.batch_size=8", "threads=1"])
    ]:
        cfg = compose(
            [
                f"pipeline={method}",
                "experiment=tiny_debug",
                f"cache_dir={tiny_cache}",
                "logger.wandb_mode=disabled",
                *extra,
            ]
        )
        facts = run_job(cfg, out / method)
        runs[method] = (facts, _rows(out / method), out / method)
    return runs


@pytest.mark.parametrize("method", METHODS)
def test_online_methods_train_and_write_dpo_shaped_rows(method, online_runs):
    facts, rows, folder = online_runs[method]
    assert (
        facts["steps"] == 2
        and facts["episodes"] == 16
        and facts["losses_finite"]
        and math.isfinite(facts["train_loss"])
    )
    assert facts["parameter_change"] > 0  # the policy moved away from π_SFT = π_ref
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {r["method"] for r in rows} == {method}
    assert {r["setting"] for r in rows} == {"beta=0.05"}
    dpo_keys = set(online_runs["dpo"][1][0])
    assert all(set(r) == dpo_keys for r in rows)  # the frontier reads these rows like DPO's
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5) and rows[-1]["kl"] > rows[0]["kl"]
    # compute axis: the completions TRL sampled (8 tokens each at most), counted as they were scored
    assert 0 < rows[-1]["compute_tokens_generated"] <= 2 * 8 * 8 and rows[-1]["compute_tokens_trained"] > 0
    assert (rows[-1]["proxy_reward"] is None) == method.endswith("_gt")  # r_φ on the samples, where there is one
    assert (folder / "policy" / "config.json").exists()


def test_online_knobs_are_checked_before_training():
    from pipelines.schemas import GRPOPipeline, RLOOPipeline

    with pytest.raises(ConfigError, match="pipeline.num_generations"):
        RLOOPipeline(name="rloo", num_generations=1)
    with pytest.raises(ConfigError, match="pipeline.batch_size: 10 completions do not make whole groups of 4"):
        GRPOPipeline(name="grpo", batch_size=10)
    with pytest.raises(ConfigError, match="pipeline.loss_type"):
        GRPOPipeline(name="grpo", loss_type="sapo")
    with pytest.raises(ConfigError, match="pipeline.name"):
        RLOOPipeline(name="grpo")


# ----------------------------------------------------------------------------------------------------------------
# The advantages TRL used = the papers' formulas, by hand, on a fixed batch of rewards
# ----------------------------------------------------------------------------------------------------------------

CORPUS = [
    "the film was great and the acting was superb",
    "a dull plot with awful pacing",
    "I loved every minute of it",
    "the story is boring but the music is fine",
    "an excellent cast in a terrible script",
]
PROMPTS = ["the film", "a dull plot", "I loved", "the story is"]
K = 4
REWARDS = [0.1, 0.7, 0.3, 0.3, 1.0, -0.5, 0.25, 2.0]  # one batch: 2 prompts x 4 completions


def _tiny_policy(tmp_path):
    """A tiny GPT-2 saved to ``tmp_path`` (TRL loads π_ref from there) and loaded back as the policy."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.lm.models import load_pretrained_lm, train_tokenizer

    tok = train_tokenizer(CORPUS, 120)
    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(conf).save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    return load_pretrained_lm(tmp_path / "sft", tok), tok


def _fixed_rewards(seen: list):
    def score(prompts, completions, completion_ids, **kwargs):
        seen.append(list(prompts))
        return REWARDS[: len(prompts)]

    return score


def _sequence_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) over the completion tokens, from plain logits."""
    from harness.lm.sampling import positions

    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits.double()
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    logps = torch.log_softmax(logits[:, P - 1 : P - 1 + T], -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return (logps * completion_mask).sum(-1).tolist()


def _run_one_generation(cfg, tmp_path, before_update=None):
    """Train one step on a fixed batch of rewards; return (what TRL's scoring step returned, prompts the reward saw)."""
    from pipelines.online_rl import build_trainer

    policy, tok = _tiny_policy(tmp_path)
    if cfg.beta > 0:  # move the policy off π_ref so the KL term is not zero
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    seen, captured = [], {}
    trainer = build_trainer(policy, tok, PROMPTS, _fixed_rewards(seen), cfg, str(tmp_path / "out"), seed=0)
    scoring = trainer._generate_and_score_completions

    def spy(inputs):  # the trainer's own scoring step, observed on its way to the loss
        out = scoring(inputs)
        captured.update(out)
        if before_update is not None:
            captured["by_hand"] = before_update(out, trainer, tok)
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()
    groups = [seen[0][i : i + K] for i in range(0, len(seen[0]), K)]
    assert len(seen) == 1 and len(seen[0]) == len(REWARDS) and all(len(set(g)) == 1 for g in groups)  # whole groups
    return captured


def test_rloo_uses_the_leave_one_out_advantage(tmp_path):
    """A_i = r_i − (1/(k−1)) Σ_{j≠i} r_j (Ahmadian et al. 2024, eq. 8), within each prompt's k completions."""
    from pipelines.schemas import RLOOPipeline

    cfg = RLOOPipeline(name="rloo", beta=0.0, batch_size=8, num_generations=K, max_steps=1, max_new_tokens=6)
    out = _run_one_generation(cfg, tmp_path)
    expected = []
    for g in range(0, len(REWARDS), K):
        group = REWARDS[g : g + K]
        expected += [r - (sum(group) - r) / (K - 1) for r in group]
    assert out["advantages"].tolist() == pytest.approx(expected, abs=1e-6)


def test_rloo_puts_the_sequence_kl_into_the_reward(tmp_path):
    """With β > 0: r_i − β Σ_t log π_θ/π_ref(y_t), then leave-one-out; both log-probs computed here from the models."""
    from pipelines.schemas import RLOOPipeline

    beta = 0.1
    cfg = RLOOPipeline(name="rloo", beta=beta, batch_size=8, num_generations=K, max_steps=1, max_new_tokens=6)

    def by_hand(out, trainer, tok):
        from harness.lm.models import load_pretrained_lm

        tensors = (out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
        pi = _sequence_logps(trainer.model, *tensors)  # the policy before its update
        ref = _sequence_logps(load_pretrained_lm(tmp_path / "sft", tok), *tensors)
        shaped = [r - beta * (p - q) for r, p, q in zip(REWARDS, pi, ref)]
        adv = []
        for g in range(0, len(shaped), K):
            group = shaped[g : g + K]
            adv += [r - (sum(group) - r) / (K - 1) for r in group]
        return adv, [p - q for p, q in zip(pi, ref)]

    out = _run_one_generation(cfg, tmp_path, by_hand)
    expected, kl = out["by_hand"]
    assert max(abs(x) for x in kl) > 0.1  # the KL term matters in this batch
    assert out["advantages"].tolist() == pytest.approx(expected, abs=1e-6)


def test_grpo_uses_the_group_normalised_advantage(tmp_path):
    """A_i = (r_i − mean_g r) / (std_g r + 1e-4), std with Bessel's correction (Shao et al. 2024, §4.1.2; TRL's ε)."""
    from pipelines.schemas import GRPOPipeline

    cfg = GRPOPipeline(name="grpo", beta=0.0, batch_size=8, num_generations=K, max_steps=1, max_new_tokens=6)
    out = _run_one_generation(cfg, tmp_path)
    expected = []
    for g in range(0, len(REWARDS), K):
        group = REWARDS[g : g + K]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        expected += [(r - mean) / (std + 1e-4) for r in group]
    assert out["advantages"].tolist() == pytest.approx(expected, abs=1e-6)
