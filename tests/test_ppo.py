"""PPO and PPO-GT on the tiny_debug config: end to end through the real Hydra config, one update's effect on every
role, where the rewards land inside a real rollout, and the configuration errors that stop a run before it starts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.app import run_job
from harness.config import ConfigError, validate
from harness.evaluator import EvalPoint
from harness.run import RunContext
from tests.conftest import compose

ROW_KEYS = set(EvalPoint.__dataclass_fields__)
# A few small updates: enough to move every trained role, seconds per run.
SMALL = ["pipeline.updates=3", "pipeline.batch_size=16", "pipeline.max_new_tokens=12", "eval.every=2", "threads=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One stage cache (π_SFT, preferences, reward model) shared by every test here; built on first use."""
    return tmp_path_factory.mktemp("ppo_cache")


def config(pipeline: str, cache: Path, *overrides: str):
    return compose([f"pipeline={pipeline}", "experiment=tiny_debug", f"cache_dir={cache}", "logger.wandb_mode=disabled",
                    *SMALL, *overrides])


def context(pipeline: str, cache: Path, folder: Path, *overrides: str) -> RunContext:
    torch.manual_seed(0)
    return RunContext(cfg=validate(config(pipeline, cache, *overrides)), folder=folder)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model, before: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("pipeline", ["ppo", "ppo_gt"])
def test_pipeline_writes_points_and_saves_a_trained_policy(pipeline, cache, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / pipeline
    summary = run_job(config(pipeline, cache), folder)

    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]  # step 0, every eval.every=2 updates, and the end
    for r in rows:
        assert set(r) == ROW_KEYS and r["method"] == pipeline and r["setting"] == "kl_coef=0.05"
        assert math.isfinite(r["kl"]) and 0 <= r["gold_reward"] <= 1
        assert (r["proxy_reward"] is not None) == (pipeline == "ppo")  # the RM's score, only where there is an RM
    assert rows[0]["kl"] == 0.0  # π_θ = π_SFT before the first update
    updates = [json.loads(line) for line in (folder / "updates.jsonl").read_text().splitlines()]
    assert [u["update"] for u in updates] == [1, 2, 3] and all("objective/kl" in u for u in updates)

    for k in ("loss/policy", "loss/value", "objective/kl", "objective/scores", "policy/clipfrac", "val/clipfrac"):
        assert math.isfinite(summary["last_update"][k]), k
    assert summary["policy"] == str(folder / "policy") and summary["gold_reward"] == rows[-1]["gold_reward"]
    trained = AutoModelForCausalLM.from_pretrained(summary["policy"])
    sft_path = Path(validate(config(pipeline, cache)).cache_dir) / "sft"
    (sft,) = [p for p in sft_path.iterdir() if (p / "artifact.json").exists()]
    start = AutoModelForCausalLM.from_pretrained(str(sft))
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


# ------------------------------------------------------------------------------------------ one update, every role
@pytest.mark.parametrize("pipeline", ["ppo", "ppo_gt"])
def test_one_update_trains_policy_and_critic_only(pipeline, cache, tmp_path):
    from pipelines.ppo import build_roles

    ctx = context(pipeline, cache, tmp_path)
    roles = build_roles(ctx)
    policy, critic = roles.policy, roles.critic
    ppo = roles.ppo(ctx.cfg.pipeline)
    frozen = [roles.reference] + ([roles.reward.model] if pipeline == "ppo" else [])
    before = {"policy": snapshot(policy), "critic": snapshot(critic), **{f"frozen{i}": snapshot(m) for i, m in enumerate(frozen)}}

    stats = ppo.step(ctx.task.train_prompts[:16])

    assert all(math.isfinite(v) for k, v in stats.items() if k != "val/explained_variance"), stats
    assert changed(policy, before["policy"]), "the policy did not move"
    assert changed(critic, before["critic"]), "the critic did not move"
    for i, m in enumerate(frozen):
        assert not changed(m, before[f"frozen{i}"]), "a frozen role moved"
    assert all(not m.training for m in (policy, critic, roles.reference)), "dropout must stay off"
    if pipeline == "ppo_gt":  # the gold scores are standardised with π_SFT's first rollout
        mean, std = ppo.score_norm
        assert 0 <= mean <= 1 and 0 < std <= 1


@pytest.mark.parametrize("minibatches", [1, 2])
def test_reusing_the_rollout_forward_changes_nothing(minibatches, cache, tmp_path):
    """The first minibatch's forward, run during the rollout, gives the same update as running it again."""
    from pipelines.ppo import build_roles

    ctx = context("ppo", cache, tmp_path, f"pipeline.num_minibatches={minibatches}")
    runs = []
    for reuse in (True, False):
        roles = build_roles(ctx)
        ppo = roles.ppo(ctx.cfg.pipeline, seed=3)
        ppo.reuse_first_pass = reuse
        stats = [ppo.step(ctx.task.train_prompts[i:i + 16]) for i in (0, 16)]
        runs.append((stats, roles.policy.state_dict(), roles.critic.state_dict()))
    (stats_a, pol_a, crit_a), (stats_b, pol_b, crit_b) = runs
    for a, b in zip(stats_a, stats_b):
        for k in ("loss/policy", "loss/value", "policy/approxkl", "objective/kl", "objective/scores"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    for a, b in ((pol_a, pol_b), (crit_a, crit_b)):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_critic_head_gives_a_value_at_every_position(cache, tmp_path):
    """The critic's per-position values equal its own sequence-classification output read at each prefix's end."""
    from harness.sampling import Samples
    from pipelines.ppo import build_roles, critic_values

    ctx = context("ppo", cache, tmp_path)
    roles = build_roles(ctx)
    critic, tok = roles.critic, roles.tok
    ids = tok("The plot was great and the cast", add_special_tokens=False)["input_ids"]
    P = 3
    s = Samples(query=torch.tensor([ids[:P]]), query_mask=torch.ones(1, P, dtype=torch.long),
                response=torch.tensor([ids[P:]]), response_mask=torch.ones(1, len(ids) - P),
                ended=torch.tensor([False]), prompt_index=torch.tensor([0]))
    with torch.no_grad():
        values = critic_values(critic, s)  # (1, T): value at the position that predicts response token t
        for t in range(len(ids) - P):
            pooled = critic(input_ids=torch.tensor([ids[:P + t]])).logits[0, 0]  # state = prompt + first t tokens
            torch.testing.assert_close(values[0, t], pooled, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- rewards inside a real rollout
def test_rollout_puts_score_on_last_token_and_kl_on_every_response_token(cache, tmp_path):
    from pipelines.ppo import build_roles

    ctx = context("ppo", cache, tmp_path, "pipeline.kl_coef=0.3")
    roles = build_roles(ctx)
    policy, reference, reward, tok = roles.policy, roles.reference, roles.reward, roles.tok
    # Make EOS likely (the same bias in π_θ and π_ref, so they stay equal) so the batch mixes finished responses,
    # right-padded after EOS, with truncated ones.
    for m in (policy, reference):
        bias = torch.zeros(m.config.vocab_size)
        bias[tok.eos_token_id] = 4.0
        m.lm_head.bias = torch.nn.Parameter(bias, requires_grad=m is policy)
    ppo = roles.ppo(ctx.cfg.pipeline)
    with torch.no_grad():  # move π_θ off π_ref so the KL term is not 0
        for p in policy.transformer.h.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ro, stats = ppo.rollout(ctx.task.train_prompts[:32])
    s, mask = ro.samples, ro.masks
    lengths = mask.sum(-1).long()
    T = mask.shape[1]
    assert s.ended.any() and (~s.ended).any() and (lengths < T).any(), "need finished, padded and truncated rows"
    beta = ctx.cfg.pipeline.kl_coef

    # The score: r_φ read at the last non-pad token of prompt + response, standardised with its statistics on π_SFT
    # samples, minus the missing-EOS penalty.
    mean, std = roles.score_norm
    for b in range(len(lengths)):
        q = s.query[b][s.query_mask[b].bool()]
        seq = torch.cat([q, s.response[b, :lengths[b]]]).unsqueeze(0)
        with torch.no_grad():
            rm_at_last = reward.model(input_ids=seq).logits[0, 0]
        expected = (rm_at_last - mean) / std - ctx.cfg.pipeline.missing_eos_penalty * (not s.ended[b])
        torch.testing.assert_close(ro.scores[b], expected, atol=1e-5, rtol=1e-5)

    # Per-token reward: −β·KL_t on every response token, + score on the last one, 0 on padding.
    assert ro.kl[mask.bool()].abs().sum() > 0
    k1 = (ro.logprobs - ro.ref_logprobs) * mask
    torch.testing.assert_close(ro.kl, k1)
    for b, n in enumerate(lengths.tolist()):
        expected = -beta * ro.kl[b].clone()
        expected[n - 1] += ro.scores[b]
        expected[n:] = 0
        torch.testing.assert_close(ro.rewards[b], expected, atol=1e-6, rtol=1e-6)
        assert (ro.advantages[b, n:] == 0).all() and (ro.returns[b, n:] == 0).all() and (ro.values[b, n:] == 0).all()
        # response tokens after EOS are padding, and the EOS itself is the last real token
        assert (s.response[b, n:] == tok.pad_token_id).all()
        assert (s.response[b, n - 1] == tok.eos_token_id) == bool(s.ended[b])
    assert abs(stats["objective/kl"] - k1.sum(-1).mean().item()) < 1e-5
    assert abs(stats["objective/rlhf_reward"] - (ro.scores - beta * ro.kl.sum(-1)).mean().item()) < 1e-5
    # advantages are whitened over the real tokens
    adv = ro.advantages[mask.bool()]
    assert abs(adv.mean().item()) < 1e-5 and abs(adv.std().item() - 1) < 1e-3


def test_adaptive_controller_moves_beta_towards_target(cache, tmp_path):
    from pipelines.ppo import build_roles

    ctx = context("ppo", cache, tmp_path, "pipeline.target_kl=1000", "pipeline.horizon=100")
    ppo = build_roles(ctx).ppo(ctx.cfg.pipeline)
    stats = ppo.step(ctx.task.train_prompts[:16])
    # KL far below the target: error clipped to −0.2, β ← β (1 − 0.2 · 16/100)
    assert stats["kl_coef"] == 0.05 and ppo.kl_ctl.value == pytest.approx(0.05 * (1 - 0.2 * 16 / 100))
    assert ctx.setting == "target_kl=1000.0"


# ----------------------------------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize(
    "override, key",
    [
        ("pipeline.cliprange=0", "pipeline.cliprange"),
        ("pipeline.cliprange=-0.2", "pipeline.cliprange"),
        ("pipeline.cliprange_value=0", "pipeline.cliprange_value"),
        ("pipeline.kl_coef=-0.01", "pipeline.kl_coef"),
        ("pipeline.lam=1.5", "pipeline.lam"),
        ("pipeline.lam=-0.1", "pipeline.lam"),
        ("pipeline.gamma=1.01", "pipeline.gamma"),
        ("pipeline.gamma=-1", "pipeline.gamma"),
        ("pipeline.num_minibatches=3", "pipeline.num_minibatches"),  # 64 episodes do not split in 3
        ("pipeline.kl_estimator=k2", "pipeline.kl_estimator"),
        ("pipeline.target_kl=0", "pipeline.target_kl"),
    ],
)
@pytest.mark.parametrize("pipeline", ["ppo", "ppo_gt"])
def test_bad_config_is_one_line_naming_the_key(pipeline, override, key):
    cfg = compose([f"pipeline={pipeline}", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg, msg


def test_bad_config_stops_before_any_rollout(monkeypatch, tmp_path):
    import pipelines.ppo

    def no_rollout(*a, **k):
        raise AssertionError("a rollout started despite a bad config")

    monkeypatch.setattr(pipelines.ppo, "sample", no_rollout)
    monkeypatch.setattr(pipelines.ppo.PPO, "rollout", no_rollout)
    cfg = compose(["pipeline=ppo", "experiment=tiny_debug", f"cache_dir={tmp_path / 'cache'}", "pipeline.cliprange=0"])
    with pytest.raises(ConfigError, match=r"^pipeline\.cliprange"):
        run_job(cfg, tmp_path / "job")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "job").exists()  # nothing built, nothing written


# ------------------------------------------------------------------------------------------------------- benchmark
def test_throughput_benchmark_drives_the_same_ppo():
    """Our side of benchmarks/ppo_throughput.py still builds and steps (2 updates), so the script cannot rot."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ppo_throughput.py"
    spec = importlib.util.spec_from_file_location("ppo_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        record = bench.run_ours(bench.parse_args(["--updates", "2", "--threads", "1"]))
    finally:
        torch.set_num_threads(threads)
    assert record["episodes_per_s"] > 0 and len(record["kl"]) == len(record["scores"]) == 2
    assert all(math.isfinite(x) for x in record["kl"] + record["scores"])
