"""precision=bf16: forward passes under bf16 autocast, fp32 master weights; one line where the device cannot."""

import argparse

import pytest
import torch

from harness.app.jobs import load as validate
from harness.fields import ConfigError
from harness.lm.precision import autocast, check_precision, trainer_flags
from tests.conftest import compose


def tiny_ppo(precision: str):
    """The PPO benchmark's four roles on a 1-layer GPT-2 (random weights), driven by the pipeline's PPO class."""
    from benchmarks.ppo_throughput import build_ours
    from pipelines.ppo import PPO
    from pipelines.schemas import PPOPipeline
    from pipelines.scoring import RewardModelScore

    args = argparse.Namespace(
        seed=0, updates=1, vocab_size=64, n_positions=32, n_layer=1, n_embd=32, n_head=2, device="cpu"
    )
    tok, prompts, (policy, reference, critic, reward_model) = build_ours(args)
    cfg = PPOPipeline(
        name="ppo", batch_size=8, num_minibatches=2, ppo_epochs=1, max_new_tokens=6, normalize_scores=False
    )
    ppo = PPO(policy, reference, critic, RewardModelScore(reward_model), tok, cfg, seed=0, precision=precision)
    return ppo, prompts[:8]


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_ppo_runs_its_forward_passes_in_the_precision_and_keeps_fp32_weights(precision, dtype):
    ppo, prompts = tiny_ppo(precision)
    seen = []
    for model in (ppo.policy, ppo.reference, ppo.critic):
        model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in ppo.policy.parameters()]
    stats = ppo.step(prompts)
    assert seen and set(seen) == {dtype}  # every role's matrix products, rollout and update
    assert all(p.dtype == torch.float32 for p in ppo.policy.parameters())  # master weights (and Adam's states) fp32
    assert all(
        s.dtype == torch.float32
        for s in ppo.policy_opt.state[next(ppo.policy.parameters())].values()
        if torch.is_tensor(s) and s.ndim
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, ppo.policy.parameters()))  # the update moved it
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values() if isinstance(v, float))


def test_autocast_is_a_no_op_for_fp32():
    layer = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16


def test_trainers_get_their_own_bf16_flag():
    from pipelines.dpo import dpo_config
    from pipelines.schemas import DPOPipeline

    assert trainer_flags("bf16") == {"bf16": True, "fp16": False} and trainer_flags("fp32") == {
        "bf16": False,
        "fp16": False,
    }
    args = dpo_config(DPOPipeline(name="dpo"), "/tmp/unused", seed=0, use_cpu=True, precision="bf16")
    assert args.bf16 and not args.fp16


def test_bf16_where_the_device_cannot_is_one_line():
    check_precision("bf16", torch.device("cpu"))  # CPU autocast runs bf16
    check_precision("fp32", torch.device("mps"))
    with pytest.raises(ConfigError, match=r"^precision: bf16 asked for, but the device \(mps\) cannot run bf16"):
        check_precision("bf16", torch.device("mps"))
    if not torch.cuda.is_available():  # no GPU here: a CUDA device reports that it cannot
        with pytest.raises(ConfigError, match="^precision: bf16 asked for"):
            check_precision("bf16", torch.device("cuda"))


def test_precision_is_validated_and_saved_with_the_run():
    from harness.app.jobs import resolved

    with pytest.raises(ConfigError, match="^precision: unknown 'fp16'; use precision=fp32 or precision=bf16"):
        validate(compose(["pipeline=dpo", "precision=fp16"]))
    hc = validate(compose(["pipeline=dpo", "precision=bf16"]))
    assert hc.precision == "bf16" and resolved(hc)["precision"] == "bf16"
    assert validate(compose(["pipeline=dpo"])).precision == "fp32"  # the default


def test_device_auto_picks_cuda_when_torch_sees_one(monkeypatch):
    from harness.lm.precision import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
