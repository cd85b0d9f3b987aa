"""PPO's decisive ingredients (Xu et al. 2024): advantage normalisation, the batch size and a moving penalty reference
(refreshed or EMA). The mixing math by hand, the knobs' checks, labels and job identity, what the rollout does with
``whiten_advantages``, and two tiny runs through the CLI's job entry: the EMA reference moves while the evaluator's
stays π_SFT, and with a reference refreshed every update the trained-in KL stays 0 while the frontier's KL grows."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from harness.app.jobs import job_key, run_job, swept_pipeline_keys
from harness.app.jobs import load as validate
from harness.fields import ConfigError
from harness.runs.context import RunContext
from pipelines import losses as L
from pipelines.schemas import PPOPipeline
from tests.conftest import compose

# A few updates of the tiny model, with a learning rate large enough that the policy visibly leaves π_SFT.
SMALL = [
    "experiment=tiny_debug",
    "logger.wandb_mode=disabled",
    "pipeline.updates=3",
    "pipeline.batch_size=16",
    "pipeline.max_new_tokens=12",
    "pipeline.learning_rate=3e-3",
    "eval.every=3",
    "threads=1",
]


@pytest.fixture
def cache(tiny_cache) -> Path:
    """The session's tiny stage cache (tests/conftest.py): π_SFT, preferences and reward model, built once."""
    return tiny_cache


def config(cache: Path, *overrides: str):
    return compose(["pipeline=ppo", f"cache_dir={cache}", *SMALL, *overrides])


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------ the pure math
def test_mix_weight_says_when_and_how_far_the_reference_moves():
    w = [L.reference_mix_weight("refresh", u, 3, 0.1) for u in range(1, 8)]
    assert w == [0, 0, 1, 0, 0, 1, 0]  # a copy of π_θ after updates 3 and 6
    assert [L.reference_mix_weight("ema", u, 3, 0.25) for u in (1, 2, 5)] == [0.25, 0.25, 0.25]
    assert [L.reference_mix_weight("none", u, 1, 0.5) for u in (1, 2, 3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown mode 'emma'"):
        L.reference_mix_weight("emma", 1, 1, 0.1)


def test_mixing_interpolates_copies_and_leaves_alone():
    ref, pol = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])], [torch.tensor([3.0, 6.0]), torch.tensor([[0.0]])]
    L.mix_parameters_(ref, pol, 0.25)  # (1 − 0.25)·ref + 0.25·pol
    torch.testing.assert_close(ref[0], torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(ref[1], torch.tensor([[3.0]]))
    L.mix_parameters_(ref, pol, 0.0)
    torch.testing.assert_close(ref[0], torch.tensor([1.5, 3.0]))
    L.mix_parameters_(ref, pol, 1.0)
    assert all(torch.equal(r, p) for r, p in zip(ref, pol))  # a refresh is an exact copy
    torch.testing.assert_close(pol[0], torch.tensor([3.0, 6.0]))  # the source is never written


def test_repeated_ema_steps_follow_the_closed_form():
    """k EMA steps towards a fixed target leave (1 − τ)^k of the initial gap."""
    ref, target, tau = [torch.tensor([10.0, -2.0])], [torch.tensor([0.0, 2.0])], 0.1
    for _ in range(7):
        L.mix_parameters_(ref, target, tau)
    torch.testing.assert_close(ref[0], target[0] + (torch.tensor([10.0, -2.0]) - target[0]) * (1 - tau) ** 7)


def test_mixing_refuses_mismatched_parameters():
    with pytest.raises(ValueError, match="shape"):
        L.mix_parameters_([torch.zeros(2)], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="1 target tensors but 2"):
        L.mix_parameters_([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], 0.5)


# ---------------------------------------------------------------------------------- checks, labels, identity
@pytest.mark.parametrize(
    "knobs, field",
    [
        (dict(ref_update="emma"), "pipeline.ref_update"),
        (dict(ref_ema=0.0), "pipeline.ref_ema"),
        (dict(ref_ema=1.5), "pipeline.ref_ema"),
        (dict(ref_refresh_every=0), "pipeline.ref_refresh_every"),
    ],
)
def test_bad_ingredient_is_a_one_line_error_naming_the_field(knobs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        PPOPipeline(**knobs)


INGREDIENTS = [  # overrides -> the label of the job's points
    ([], "kl_coef=0.05"),  # the defaults label points as before
    (["pipeline.whiten_advantages=false"], "kl_coef=0.05,whiten_advantages=False"),
    (["pipeline.ref_update=ema", "pipeline.ref_ema=0.2"], "kl_coef=0.05,ref_update=ema,ref_ema=0.2"),
    (["pipeline.ref_update=refresh"], "kl_coef=0.05,ref_update=refresh,ref_refresh_every=5"),
    (["pipeline.batch_size=128", "pipeline.updates=10"], "kl_coef=0.05,batch_size=128"),  # updates: a budget
]


def test_each_ingredient_labels_its_points_and_changes_the_job():
    keys = set()
    for overrides, label in INGREDIENTS:
        argv = ["pipeline=ppo", *overrides]
        cfg = validate(compose(argv))
        assert RunContext(cfg=cfg, folder=Path("."), swept=swept_pipeline_keys(argv)).setting == label
        keys.add(job_key(cfg))
    assert len(keys) == len(INGREDIENTS)  # each ingredient is part of what a job computes


def test_study_turns_each_ingredient_on_alone_at_an_equal_episode_budget():
    """experiment=ppo_ingredients: one baseline and one job per ingredient, every PPO job 1280 episodes and 80
    optimizer steps of 32 episodes, all at β_KL = 0.05, each with its own label."""
    from omegaconf import OmegaConf

    study = OmegaConf.to_container(compose(["experiment=ppo_ingredients"]).study)
    jobs = [validate(compose(entry)) for entry in study if "pipeline=ppo" in entry]
    assert len(jobs) == 6
    for hc in jobs:
        p = hc.pipeline
        assert p.kl_coef == 0.05 and p.updates * p.batch_size == 1280
        assert p.batch_size // p.num_minibatches == 32 and p.updates * p.ppo_epochs * p.num_minibatches == 80
    labels = {
        RunContext(cfg=hc, folder=Path("."), swept=swept_pipeline_keys(e)).setting
        for hc, e in zip(jobs, [e for e in study if "pipeline=ppo" in e])
    }
    assert len(labels) == 6


# ------------------------------------------------------------------------------------------------ the rollout
def test_advantage_normalisation_whitens_the_rollout_advantages_or_leaves_them_raw(cache, tmp_path):
    from pipelines.ppo import build_roles

    out = {}
    for whiten in (True, False):
        ctx = RunContext(cfg=validate(config(cache, f"pipeline.whiten_advantages={whiten}")), folder=tmp_path)
        roles = build_roles(ctx)
        ro, _ = roles.ppo(ctx.cfg.pipeline, seed=5).rollout(ctx.task.train_prompts[:16])
        raw, _ = L.gae_advantages(ro.rewards, ro.values, ro.masks, ctx.cfg.pipeline.gamma, ctx.cfg.pipeline.lam)
        out[whiten] = (ro, raw)
    (on, raw_on), (off, raw_off) = out[True], out[False]
    torch.testing.assert_close(raw_on, raw_off)  # the same rollout (same seeds): only the normalisation differs
    torch.testing.assert_close(off.advantages, raw_off)
    torch.testing.assert_close(on.advantages, L.masked_whiten(raw_on, on.masks))
    assert abs(L.masked_mean(on.advantages, on.masks).item()) < 1e-5
    assert abs(L.masked_var(on.advantages, on.masks).item() - 1) < 1e-3
    assert abs(L.masked_var(off.advantages, off.masks).item() - 1) > 1e-2, "raw advantages must differ for this test"


def test_a_resumed_job_continues_from_the_moved_reference(cache, tmp_path):
    """The checkpoint (``PPO.state_dict``) holds the moving reference: a PPO loaded from it takes the same next update
    as the one that wrote it, although its fresh roles start from π_SFT."""
    from pipelines.ppo import build_roles

    ctx = RunContext(cfg=validate(config(cache, "pipeline.ref_update=ema", "pipeline.ref_ema=0.5")), folder=tmp_path)
    batches = [ctx.task.train_prompts[i : i + 16] for i in (0, 16, 32)]
    first = build_roles(ctx).ppo(ctx.cfg.pipeline, seed=2)
    for prompts in batches[:2]:
        first.step(prompts)
    resumed = build_roles(ctx).ppo(ctx.cfg.pipeline, seed=2)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))  # as through torch.save / load: no shared tensors
    assert max_diff(params(resumed.reference), params(first.reference)) == 0
    a, b = first.step(batches[2]), resumed.step(batches[2])
    assert a["objective/kl"] == b["objective/kl"] and a["objective/policy_loss"] == b["objective/policy_loss"]
    assert max_diff(params(resumed.reference), params(first.reference)) == 0


# --------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture
def captured(monkeypatch):
    """The PPO object and the evaluator's reference of a run, taken as ``pipelines.ppo.run`` makes them."""
    import pipelines.ppo as ppo_mod

    seen = {}
    from harness.runs.context import RunContext

    make_ppo, make_evaluator = ppo_mod.Roles.ppo, RunContext.evaluator

    def ppo(self, cfg, seed=0, **kwargs):
        seen["ppo"], seen["sft"] = make_ppo(self, cfg, seed, **kwargs), params(self.reference)
        return seen["ppo"]

    def evaluator(self, reference, *args, **kwargs):
        seen["evaluator_reference"] = reference
        return make_evaluator(self, reference, *args, **kwargs)

    monkeypatch.setattr(ppo_mod.Roles, "ppo", ppo)
    monkeypatch.setattr(RunContext, "evaluator", evaluator)
    return seen


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_ema_reference_moves_and_the_evaluator_keeps_pi_sft(cache, tmp_path, captured):
    argv = ["pipeline.ref_update=ema", "pipeline.ref_ema=0.5"]
    run_job(config(cache, *argv), tmp_path, swept=swept_pipeline_keys(argv))

    ppo, sft = captured["ppo"], captured["sft"]
    moved, policy = params(ppo.reference), params(ppo.policy)
    assert max_diff(moved, sft) > 1e-4, "the EMA reference did not move"
    assert max_diff(moved, policy) > 1e-6, "an EMA at 0.5 is not a copy of the policy"
    assert captured["evaluator_reference"] is not ppo.reference
    assert max_diff(params(captured["evaluator_reference"]), sft) == 0, "the evaluator's reference must stay π_SFT"
    points = rows(tmp_path, "points.jsonl")
    assert [r["step"] for r in points] == [0, 3]
    assert {r["setting"] for r in points} == {"kl_coef=0.05,ref_update=ema,ref_ema=0.5"}


def test_refreshed_reference_penalises_nothing_while_the_frontier_kl_to_pi_sft_grows(cache, tmp_path):
    """Refreshed after every update, the penalty's reference is the policy that samples the next rollout, so the KL
    in the reward is 0; the evaluator still measures KL(π_θ‖π_SFT), which grows as the policy trains."""
    run_job(config(cache, "pipeline.ref_update=refresh", "pipeline.ref_refresh_every=1"), tmp_path)

    trained_in = [u["objective/kl"] for u in rows(tmp_path, "updates.jsonl")]
    assert len(trained_in) == 3 and max(abs(k) for k in trained_in) < 1e-5, trained_in
    first, last = (r["kl"] for r in (rows(tmp_path, "points.jsonl")[i] for i in (0, -1)))
    assert first < 1e-6 and last > 1e-2, (first, last)


# ------------------------------------------------------------------------------------------------ the report
def test_report_tables_the_final_point_of_each_setting():
    from harness.report.text import settings_table
    from pipelines.registry import METHODS

    def row(setting, seed, step, kl, gold, run):
        return dict(
            method="ppo",
            setting=setting,
            seed=seed,
            step=step,
            kl=kl,
            kl_sem=0.1,
            gold_reward=gold,
            gold_reward_sem=0.02,
            run_id=run,
        )

    rows = [
        row("kl_coef=0.05", 0, 0, 0.0, 0.5, "a"),
        row("kl_coef=0.05", 0, 20, 4.0, 0.8, "a"),
        row("kl_coef=0.05", 1, 20, 6.0, 0.9, "b"),
        row("kl_coef=0.05,ref_update=ema,ref_ema=0.1", 0, 20, 9.0, 0.85, "c"),
    ]
    lines = settings_table(rows, METHODS).splitlines()
    # two seeds: mean and the SEM across them (std 1.414 / sqrt 2 = 1 for KL, 0.0707 / sqrt 2 = 0.05 for gold)
    assert "| PPO (learned RM) | kl_coef=0.05 | 2 | 20 | 5.000 ± 1.000 | 0.850 ± 0.050 |" in lines
    # one run: its own evaluation's SEM over prompts
    assert (
        "| PPO (learned RM) | kl_coef=0.05,ref_update=ema,ref_ema=0.1 | 1 | 20 | 9.000 ± 0.100 | 0.850 ± 0.020 |"
        in lines
    )
    assert settings_table(rows[:3], METHODS) == ""  # one setting: nothing a per-method table does not already say
