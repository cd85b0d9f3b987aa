"""DPO / IPO / cDPO: the trainer's loss against the papers' formulas worked out by hand, each variant end to end on
the tiny config (parameters move, losses finite, rows written), and bad preference data stopped before training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.fields import ConfigError

TRAINING = ["pipeline.max_steps=4", "eval.every=2", "threads=1"]


# ----------------------------------------------------------------------------------------------------------------
# (a) the harness trainer's loss = the papers' formulas, by hand, on a fixed batch
# ----------------------------------------------------------------------------------------------------------------

CORPUS = [
    "the film was great and the acting was superb",
    "a dull plot with awful pacing",
    "I loved every minute of it",
    "the story is boring but the music is fine",
    "an excellent cast in a terrible script",
]
PAIRS = {
    "prompt": ["the film", "a dull", "I loved", "the story is"],
    "chosen": [" was great", " plot with fine music", " every minute", " fine"],
    "rejected": [" was awful and boring", " plot", " it", " boring but the music is fine"],
}


def _tiny_lm(tok, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_positions=48,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(conf).double()  # float64 where we can (TRL's log-prob kernel stays float32)


def _summed_logps(model, batch):
    """(chosen, rejected) log π(y|x) summed over the completion tokens (EOS included), from plain logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:].to(logits.dtype)
    token_logps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1).chunk(2)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _by_hand(name, beta, eps, pi_c, pi_r, ref_c, ref_r, n_c, n_r) -> float:
    """The per-pair losses of the papers, averaged over the batch, in plain Python floats."""
    losses = []
    for i in range(len(pi_c)):
        h = (pi_c[i] - ref_c[i]) - (pi_r[i] - ref_r[i])
        if name == "dpo":  # Rafailov et al. 2023, eq. 7
            losses.append(-_log_sigmoid(beta * h))
        elif name == "cdpo":  # Mitchell 2023: the label is flipped with probability ε
            losses.append(-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h))
        elif name == "ipo":  # Azar et al. 2023, eq. 17 with τ = β, on per-token (length-averaged) log-ratios as TRL
            h_bar = (pi_c[i] - ref_c[i]) / n_c[i] - (pi_r[i] - ref_r[i]) / n_r[i]
            losses.append((h_bar - 1 / (2 * beta)) ** 2)
    return sum(losses) / len(losses)


# TRL's fused LM head computes the log-probs in float32 whatever the model's dtype, so a summed log-prob carries
# ~1e-6 of rounding. The βs below keep that well under the 1e-6 budget on the loss: DPO's error scales with β,
# IPO's with |h̄ − 1/(2β)| (large for small β).
@pytest.mark.parametrize(
    "name, beta, eps", [("dpo", 0.1, 0.0), ("ipo", 1.0, 0.0), ("ipo", 2.0, 0.0), ("cdpo", 0.1, 0.2), ("cdpo", 0.5, 0.4)]
)
def test_trainer_loss_matches_the_papers_formulas(name, beta, eps, tmp_path):
    from datasets import Dataset

    from harness.lm.models import train_tokenizer
    from pipelines.dpo import build_trainer
    from pipelines.schemas import DPOPipeline

    torch.set_num_threads(1)
    tok = train_tokenizer(CORPUS * 4, 300)
    policy, reference = _tiny_lm(tok, 0), _tiny_lm(tok, 1)  # different weights, so every log-ratio is non-zero
    cfg = DPOPipeline(name=name, beta=beta, label_smoothing=eps if name == "cdpo" else None, max_length=48)
    trainer = build_trainer(policy, reference, tok, Dataset.from_dict(PAIRS), cfg, str(tmp_path), seed=0)
    batch = next(iter(trainer.get_train_dataloader()))  # the collated batch: rows [chosen; rejected]
    loss = trainer.compute_loss(trainer.model, batch)

    with torch.no_grad():
        pi_c, pi_r = _summed_logps(policy, batch)
        ref_c, ref_r = _summed_logps(reference, batch)
    n_c, n_r = batch["completion_mask"].sum(-1).chunk(2)
    expected = _by_hand(name, beta, eps, *(t.tolist() for t in (pi_c, pi_r, ref_c, ref_r, n_c, n_r)))
    assert trainer.ref_model is reference  # π_ref is the model we passed, not a reload by name
    assert loss.requires_grad and abs(loss.item() - expected) < 1e-6
    if name == "cdpo":  # and it is not TRL's plain sigmoid, which ignores the label smoothing
        assert (
            abs(_by_hand("dpo", beta, 0, *(t.tolist() for t in (pi_c, pi_r, ref_c, ref_r, n_c, n_r))) - expected) > 1e-4
        )


def test_logged_metrics_are_namespaced():
    from pipelines.metrics import NAMESPACES, namespaced

    out = namespaced(
        {
            "loss": 0.7,
            "rewards/margins": 0.1,
            "logps/chosen": -9.0,
            "grad_norm": 1.0,
            "epoch": 0.5,
            "eval_rewards/accuracies": 0.6,
            "eval_loss": 0.8,
            "note": "text",
        }
    )
    assert out == {
        "objective/loss": 0.7,
        "rewards/margins": 0.1,
        "policy/logps/chosen": -9.0,
        "policy/grad_norm": 1.0,
        "train/epoch": 0.5,
        "eval/rewards/accuracies": 0.6,
        "eval/loss": 0.8,
    }
    # the other TRL trainers' keys (GRPO/RLOO, KTO, online DPO) land in the same scheme as PPO's metrics
    trl = namespaced(
        {
            "kl": 0.1,
            "beta": 0.05,
            "policy_loss": 0.2,
            "entropy": 1.5,
            "reward": 0.3,
            "num_tokens": 9.0,
            "clip_ratio/region_mean": 0.0,
            "completions/mean_length": 7.0,
            "rewards/score/mean": 0.3,
            "objective/entropy": 12.0,
            "objective/scores": 0.4,
            "objective/rlhf_reward": 0.2,
            "objective/non_score_reward": -0.1,
            "val/contain_eos_token": 0.5,
        }
    )
    assert trl == {
        "objective/kl": 0.1,
        "objective/kl_coef": 0.05,
        "objective/policy_loss": 0.2,
        "policy/entropy": 1.5,
        "rewards/mean": 0.3,
        "compute/num_tokens": 9.0,
        "policy/clip_ratio/region_mean": 0.0,
        "policy/completions/mean_length": 7.0,
        "rewards/score/mean": 0.3,
        "policy/sequence_entropy": 12.0,
        "rewards/scores": 0.4,
        "objective/rlhf_reward": 0.2,
        "objective/non_score_reward": -0.1,
        "rewards/contain_eos_token": 0.5,
    }
    assert {k.split("/")[0] for k in {**out, **trl}} <= set(NAMESPACES)


# ----------------------------------------------------------------------------------------------------------------
# (b) each variant trains on the tiny config
# ----------------------------------------------------------------------------------------------------------------


def _rows(folder):
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "method, extra, setting",
    [
        ("dpo", [], "beta=0.1"),
        ("ipo", [], "beta=0.5"),
        ("cdpo", ["pipeline.reference_logps=per_batch"], "beta=0.1"),
    ],
)
def test_dpo_variants_train_and_write_rows(method, extra, setting, run_pipeline, tiny_cache):
    facts, folder = run_pipeline(method, *TRAINING, *extra, cache=tiny_cache, folder=method)
    assert facts["steps"] == 4 and facts["losses_finite"] and math.isfinite(facts["train_loss"])
    assert facts["parameter_change"] > 0  # the policy moved away from π_SFT = π_ref
    rows = _rows(folder)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert {r["method"] for r in rows} == {method} and {r["setting"] for r in rows} == {setting}
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 0
    assert (folder / "policy" / "config.json").exists() and (folder / "policy" / "tokenizer.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# (c) bad data stops before training, with one line naming what is wrong
# ----------------------------------------------------------------------------------------------------------------


def _bad_pairs(kind: str):
    from datasets import Dataset, DatasetDict

    good = {
        "prompt": ["A fine film", "The plot"],
        "chosen": [" was lovely.", " is great."],
        "rejected": [" was bad.", " is dull."],
    }
    data = {k: list(v) for k, v in good.items()}
    if kind == "missing":
        del data["rejected"]
    elif kind == "empty_prompt":
        data["prompt"][1] = "  "
    elif kind == "empty_chosen":
        data["chosen"] = ["", ""]
    elif kind == "none":
        data["rejected"][0] = None
    elif kind == "identical":
        data["rejected"] = list(data["chosen"])
    elif kind == "long_prompt":
        data["prompt"][0] = "a very long prompt " * 40
    return DatasetDict(train=Dataset.from_dict(data), test=Dataset.from_dict(good))


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", r"missing column\(s\) rejected"),
        ("empty_prompt", r"1 of 2 pairs have an empty prompt text"),
        ("empty_chosen", r"every one of the 2 chosen texts is empty"),
        ("none", r"1 of 2 pairs have no rejected text"),
        ("identical", r"chosen == rejected"),
        ("long_prompt", r"pipeline.max_length: 1 of 2 prompts"),
    ],
)
def test_bad_preference_data_stops_before_training(kind, match, run_pipeline, tiny_cache, monkeypatch, tmp_path):
    import pipelines.trainer_run

    monkeypatch.setattr(pipelines.trainer_run, "load_pairs", lambda art: _bad_pairs(kind))
    with pytest.raises(ConfigError, match=match) as e:
        run_pipeline("dpo", *TRAINING, cache=tiny_cache, folder=f"bad_{kind}")
    assert "\n" not in str(e.value)
    assert not (tmp_path / f"bad_{kind}").exists()  # no tracker, no rows: nothing had started


def test_max_length_beyond_the_models_positions_is_refused(run_pipeline, tiny_cache):
    with pytest.raises(ConfigError, match="pipeline.max_length: 4096 exceeds the model's"):
        run_pipeline("dpo", "pipeline.max_length=4096", cache=tiny_cache, folder="too_long")
