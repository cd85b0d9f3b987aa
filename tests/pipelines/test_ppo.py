"""PPO and PPO-GT on the tiny_debug config: end to end through the real Hydra config, one update's effect on every
role, where the rewards land inside a real rollout, and the configuration errors that stop a run before it starts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.app.jobs import load as validate
from harness.app.jobs import run_job
from harness.eval import row as result_row
from harness.fields import ConfigError
from harness.runs.context import RunContext
from tests.conftest import compose

ROW_KEYS = set(result_row.ROW_KEYS)  # the evidence goes to evidence.jsonl
# A few small updates: enough to move every trained role, seconds per run.
SMALL = ["pipeline.updates=3", "pipeline.batch_size=16", "pipeline.max_new_tokens=12", "eval.every=2", "threads=1"]


@pytest.fixture
def cache(tiny_cache) -> Path:
    """The session's tiny stage cache (tests/conftest.py): π_SFT, preferences and reward model, built once."""
    return tiny_cache


def config(pipeline: str, cache: Path, *overrides: str):
    return compose(
        [
            f"pipeline={pipeline}",
            "experiment=tiny_debug",
            f"cache_dir={cache}",
            "logger.wandb_mode=disabled",
            *SMALL,
            *overrides,
        ]
    )


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
    assert 0 <= rows[0]["kl"] < 1e-6  # π_θ = π_SFT before the first update (to float rounding: see test_evaluator)
    updates = [json.loads(line) for line in (folder / "updates.jsonl").read_text().splitlines()]
    assert [u["update"] for u in updates] == [1, 2, 3] and all("objective/kl" in u for u in updates)

    for k in (
        "objective/policy_loss",
        "critic/value_loss",
        "objective/kl",
        "rewards/scores",
        "policy/clipfrac",
        "critic/clipfrac",
    ):
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
    from pipelines.metrics import NAMESPACES
    from pipelines.ppo import build_roles

    ctx = context(pipeline, cache, tmp_path)
    roles = build_roles(ctx)
    policy, critic = roles.policy, roles.critic
    ppo = roles.ppo(ctx.cfg.pipeline)
    frozen = [roles.reference] + ([roles.reward.model] if pipeline == "ppo" else [])
    before = {
        "policy": snapshot(policy),
        "critic": snapshot(critic),
        **{f"frozen{i}": snapshot(m) for i, m in enumerate(frozen)},
    }

    stats = ppo.step(ctx.task.train_prompts[:16])

    assert all(math.isfinite(v) for k, v in stats.items() if k != "critic/explained_variance"), stats
    assert {k.split("/")[0] for k in stats} <= set(NAMESPACES) - {"frontier", "eval", "train"}, stats  # one scheme
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
        stats = [ppo.step(ctx.task.train_prompts[i : i + 16]) for i in (0, 16)]
        runs.append((stats, roles.policy.state_dict(), roles.critic.state_dict()))
    (stats_a, pol_a, crit_a), (stats_b, pol_b, crit_b) = runs
    for a, b in zip(stats_a, stats_b):
        for k in ("objective/policy_loss", "critic/value_loss", "policy/approxkl", "objective/kl", "rewards/scores"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    for a, b in ((pol_a, pol_b), (crit_a, crit_b)):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_packed_and_padded_passes_give_the_same_rollout_and_update(cache, tmp_path, monkeypatch):
    """PPO's scoring and update run packed (``harness.lm.packing``); with packing switched off (every pass on the
    padded batch) the same samples give the same log-probs, values, scores and update, up to float rounding. The
    rollout's log π_old and entropy come from the sampler either way: the policy's packed pass is held to the padded
    one in its first-minibatch forward (``FirstPass``) and in the update."""
    from harness.lm import packing
    from pipelines.ppo import build_roles

    ctx = context("ppo", cache, tmp_path, "pipeline.num_minibatches=2")
    prompts = ctx.task.train_prompts[:16]
    runs = []
    for packed in (True, False):
        monkeypatch.setattr(packing, "packable", lambda model, packed=packed: packed)
        roles = build_roles(ctx)
        ppo = roles.ppo(ctx.cfg.pipeline, seed=3)
        ro, stats = ppo.rollout(prompts)
        first = ro.first_pass.logprobs.detach()  # the update consumes the first pass
        stats.update(ppo.update(ro))
        runs.append((ro, first, stats, roles.policy.state_dict(), roles.critic.state_dict()))
    (ro_a, first_a, stats_a, pol_a, crit_a), (ro_b, first_b, stats_b, pol_b, crit_b) = runs
    torch.testing.assert_close(first_a, first_b, rtol=1e-5, atol=1e-5)
    assert torch.equal(ro_a.samples.response, ro_b.samples.response)
    lengths = ro_a.masks.sum(-1)
    assert lengths.min() < lengths.max(), "the batch must mix response lengths for packing to matter"
    for f in ("logprobs", "ref_logprobs", "values", "scores", "advantages", "returns"):
        torch.testing.assert_close(getattr(ro_a, f), getattr(ro_b, f), rtol=1e-5, atol=1e-5, msg=f)
    for k in ("objective/policy_loss", "critic/value_loss", "policy/approxkl", "policy/sequence_entropy"):
        assert stats_a[k] == pytest.approx(stats_b[k], rel=1e-4, abs=1e-6), k
    for a, b in ((pol_a, pol_b), (crit_a, crit_b)):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reuse", [True, False], ids=["first_pass", "no_first_pass"])
def test_rollout_takes_pi_old_from_the_sampler_and_runs_the_policy_on_the_first_minibatch_only(
    reuse, cache, tmp_path, monkeypatch
):
    """log π_old and the entropy come from the sampling passes: a packed policy forward gives them again (to fp32
    rounding, the sampler's cached steps sum in another order), and the rollout runs the policy forward only for
    ``FirstPass`` (its first minibatch, with autograd), none at all without it."""
    from pipelines import losses as L
    from pipelines import ppo as ppo_mod

    ctx = context("ppo", cache, tmp_path, "pipeline.num_minibatches=4", "pipeline.temperature=0.7")
    roles = ppo_mod.build_roles(ctx)
    ppo = roles.ppo(ctx.cfg.pipeline, seed=3)
    ppo.reuse_first_pass = reuse
    calls = []  # autograd on or off, per policy forward outside the sampler
    in_sampler = [False]
    real_sample = ppo_mod.sample

    def sample(*args, **kwargs):
        in_sampler[0] = True
        try:
            return real_sample(*args, **kwargs)
        finally:
            in_sampler[0] = False

    def count(module, args, kwargs):
        if not in_sampler[0]:
            calls.append(torch.is_grad_enabled())

    monkeypatch.setattr(ppo_mod, "sample", sample)
    backbone = getattr(roles.policy, roles.policy.base_model_prefix)  # every forward of the policy runs it
    handle = backbone.register_forward_pre_hook(count, with_kwargs=True)
    try:
        ro, stats = ppo.rollout(ctx.task.train_prompts[:16])
    finally:
        handle.remove()

    assert calls == ([True] if reuse else [])
    assert (ro.first_pass is not None) == reuse
    mask = ro.masks.bool()
    assert mask.sum(-1).min() < mask.shape[1], "some responses must be padded"
    with torch.no_grad():
        logits, forward_logprobs = ppo_mod.policy_pass(roles.policy, ro.samples, 0.7)
    torch.testing.assert_close(ro.logprobs, forward_logprobs, rtol=1e-5, atol=1e-5)
    assert (ro.logprobs[~mask] == 0).all()
    entropy = (L.entropy_from_logits(logits).sum() / mask.shape[0]).item()  # mean over episodes of Σ_t H_t
    assert stats["policy/sequence_entropy"] == pytest.approx(entropy, rel=1e-5)
    if reuse:  # the update's first minibatch starts at ratio 1, to the same rounding
        first = ro.epoch0_order[: 16 // 4]
        assert ro.first_pass.logprobs.requires_grad and ro.first_pass.logprobs.shape == (4, mask.shape[1])
        torch.testing.assert_close(ro.first_pass.logprobs.detach(), ro.logprobs[first], rtol=1e-5, atol=1e-5)
    stats = ppo.update(ro)
    assert all(math.isfinite(v) for v in stats.values())


def test_critic_head_gives_a_value_at_every_position(cache, tmp_path):
    """The critic's per-position values equal its own sequence-classification output read at each prefix's end."""
    from harness.lm.sampling import Samples
    from pipelines.ppo import build_roles, critic_values

    ctx = context("ppo", cache, tmp_path)
    roles = build_roles(ctx)
    critic, tok = roles.critic, roles.tok
    ids = tok("The plot was great and the cast", add_special_tokens=False)["input_ids"]
    P = 3
    s = Samples(
        query=torch.tensor([ids[:P]]),
        query_mask=torch.ones(1, P, dtype=torch.long),
        response=torch.tensor([ids[P:]]),
        response_mask=torch.ones(1, len(ids) - P),
        ended=torch.tensor([False]),
        prompt_index=torch.tensor([0]),
    )
    with torch.no_grad():
        values = critic_values(critic, s)  # (1, T): value at the position that predicts response token t
        for t in range(len(ids) - P):
            pooled = critic(input_ids=torch.tensor([ids[: P + t]])).logits[0, 0]  # state = prompt + first t tokens
            torch.testing.assert_close(values[0, t], pooled, atol=1e-5, rtol=1e-5)


def responses(tok, prompt: list[int], rows: list[list[int]], ended: list[bool]):
    """``Samples`` of one prompt (token ids) and the given responses (+ EOS where ``ended``), right-padded."""
    from harness.lm.sampling import Samples

    rows = [r + [tok.eos_token_id] * e for r, e in zip(rows, ended)]
    T = max(len(r) for r in rows)
    B, P = len(rows), len(prompt)
    return Samples(
        query=torch.tensor([prompt] * B),
        query_mask=torch.ones(B, P, dtype=torch.long),
        response=torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows]),
        response_mask=torch.tensor([[1.0] * len(r) + [0.0] * (T - len(r)) for r in rows]),
        ended=torch.tensor(ended),
        prompt_index=torch.zeros(B, dtype=torch.long),
    )


def test_critic_starts_at_the_normalised_reward_model_score(cache, tmp_path):
    """The ``ppo`` critic is r_φ with its head rescaled: at the EOS of a finished response (where r_φ puts its score)
    and at every earlier position, its value is (r_φ − mean) / std, the scale of the returns it is trained on."""
    from pipelines.ppo import build_roles, critic_values

    ctx = context("ppo", cache, tmp_path)
    roles = build_roles(ctx)
    roles.ppo(ctx.cfg.pipeline)  # as in a run (fused GELU in every role, dropout off)
    critic, rm, tok = roles.critic, roles.reward.model, roles.tok
    mean, std = roles.score_norm
    assert abs(std - 1.0) > 0.1, "the tiny RM's raw scale must differ from the normalised one for this test to bite"
    ids = tok("The plot was great and the cast", add_special_tokens=False)["input_ids"]
    s = responses(tok, ids[:3], [ids[3:]], ended=[True])
    seq = s.sequences  # prompt + response + EOS
    with torch.no_grad():
        at_eos = critic(input_ids=seq).logits[0, 0]  # pooled at the last token: the EOS
        expected = (rm(input_ids=seq).logits[0, 0] - mean) / std
        torch.testing.assert_close(at_eos, expected, atol=1e-5, rtol=1e-5)
        values = critic_values(critic, s)[0]  # V at the state before each response token
        for t in range(s.response.shape[1]):
            prefix = seq[:, : s.query.shape[1] + t]
            torch.testing.assert_close(
                values[t], (rm(input_ids=prefix).logits[0, 0] - mean) / std, atol=1e-5, rtol=1e-5
            )


def test_normalised_head_without_normalisation_is_the_same_head():
    from pipelines.ppo import normalised_head

    head = torch.nn.Linear(4, 1, bias=False)
    h = torch.randn(3, 4)
    same = normalised_head(head, 0.0, 1.0)
    torch.testing.assert_close(same(h), head(h))
    scaled = normalised_head(head, 0.5, 2.0)
    torch.testing.assert_close(scaled(h), (head(h) - 0.5) / 2.0)
    assert scaled.weight.dtype == head.weight.dtype and scaled.bias is not None


def test_reward_model_scores_a_truncated_response_with_eos_appended(cache, tmp_path):
    """r_φ was trained on completions + EOS (TRL's RewardTrainer appends it), so a truncated response (no EOS) is
    scored with EOS appended; a finished one, in the same batch, is scored as before, at its own EOS."""
    from pipelines.ppo import build_roles
    from pipelines.stages.reward_model import score_samples

    ctx = context("ppo", cache, tmp_path)
    roles = build_roles(ctx)
    rm, tok = roles.reward.model, roles.tok
    ids = tok("The plot was great and the cast", add_special_tokens=False)["input_ids"]
    prompt, response = ids[:3], ids[3:]
    assert len(response) > 3
    # row 0: truncated, no EOS, fills the batch's width; row 1: finished after 2 tokens (+ EOS), then padding
    s = responses(tok, prompt, [response, response[:2]], ended=[False, True])
    eos = [tok.eos_token_id]

    scores = roles.reward(s, [tok.decode(prompt)] * 2)
    with torch.no_grad():
        truncated_plus_eos = rm(input_ids=torch.tensor([prompt + response + eos])).logits[0, 0]
        finished_at_eos = rm(input_ids=torch.tensor([prompt + response[:2] + eos])).logits[0, 0]
        unchanged = score_samples(rm, s)  # the scores before: at the last non-pad token
    torch.testing.assert_close(scores[0], truncated_plus_eos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1], finished_at_eos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1], unchanged[1], atol=1e-5, rtol=1e-5)
    assert (scores[0] - unchanged[0]).abs() > 1e-5, "appending EOS must change what r_φ reads"


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

    # The score: r_φ read at the EOS of prompt + response (appended to a truncated one, as in r_φ's training),
    # standardised with its statistics on π_SFT samples, minus the missing-EOS penalty (0 by default).
    mean, std = roles.score_norm
    assert ctx.cfg.pipeline.missing_eos_penalty == 0.0
    eos = torch.tensor([tok.eos_token_id])
    for b in range(len(lengths)):
        q = s.query[b][s.query_mask[b].bool()]
        seq = torch.cat([q, s.response[b, : lengths[b]], eos[: int(not s.ended[b])]]).unsqueeze(0)
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
    # k3 is only logged: r − 1 − log r with r = π_ref / π_θ, summed over the response
    log_r = (ro.ref_logprobs - ro.logprobs) * mask
    assert abs(stats["objective/kl_k3"] - (torch.expm1(log_r) - log_r).sum(-1).mean().item()) < 1e-5
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
    assert stats["objective/kl_coef"] == 0.05 and ppo.kl_ctl.value == pytest.approx(0.05 * (1 - 0.2 * 16 / 100))
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
        ("pipeline.kl_estimator=k3", "pipeline.kl_estimator"),  # biased in the reward (tests/pipelines/test_losses.py)
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


def test_k3_in_the_reward_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as e:
        validate(compose(["pipeline=ppo", "pipeline.kl_estimator=k3"]))
    assert str(e.value) == (
        "pipeline.kl_estimator: k3 in the reward is biased (its score-function gradient is not ∇KL; "
        "only k1's is); use pipeline.kl_estimator=k1 (k3 is logged as objective/kl_k3)"
    )
    assert validate(compose(["pipeline=ppo"])).pipeline.kl_estimator == "k1"


def test_no_missing_eos_penalty_by_default():
    """A truncated response is neither penalised by the gold reward nor seen by DPO, so PPO does not penalise it
    unless asked (the knob stays)."""
    for pipeline in ("ppo", "ppo_gt"):
        assert validate(compose([f"pipeline={pipeline}"])).pipeline.missing_eos_penalty == 0.0
    assert validate(compose(["pipeline=ppo", "pipeline.missing_eos_penalty=1.0"])).pipeline.missing_eos_penalty == 1.0


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
@pytest.mark.slow  # trains on the tiny config
def test_throughput_benchmark_drives_the_same_ppo():
    """Our side of benchmarks/ppo_throughput.py still builds and steps (2 updates), so the script cannot rot."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ppo_throughput.py"
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
