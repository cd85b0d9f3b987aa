"""KTO and online DPO: KTO's unpaired examples derived from the pairs; online DPO's TRL update on a fixed batch
against ``losses.dpo_family_loss`` with the chosen sample picked by the reward scores and log-probs at the positions
the sampler used; each method end to end through the CLI on the tiny config (parameters move, losses finite, rows
with DPO's schema)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

TRAINING = ["experiment=tiny_debug", "eval.every=2", "threads=1", "logger.wandb_mode=disabled"]


# ----------------------------------------------------------------------------------------------------------------
# KTO's unpaired examples
# ----------------------------------------------------------------------------------------------------------------


def test_unpaired_examples_keep_every_pair_as_one_desirable_and_one_undesirable_example():
    from pipelines.kto import unpaired_examples

    # Four samples a > b > c of one prompt give the pairs (a,b), (a,c), (b,c); plus a repeated pair of another prompt.
    prompts = ["p", "p", "p", "q", "q"]
    chosen = [" a", " a", " b", " x", " x"]
    rejected = [" b", " c", " c", " y", " y"]
    out = unpaired_examples(prompts, chosen, rejected, seed=0)
    rows = list(zip(out["prompt"], out["completion"], out["label"]))

    assert len(rows) == 2 * len(prompts) and sum(out["label"]) == len(prompts)  # balanced: one of each per pair
    expected = Counter(
        [(p, c, True) for p, c in zip(prompts, chosen)] + [(p, r, False) for p, r in zip(prompts, rejected)]
    )
    assert Counter(rows) == expected  # nothing lost, nothing invented, nothing de-duplicated
    assert Counter(rows)[("p", " a", True)] == 2 and Counter(rows)[("q", " x", True)] == 2  # as often as in the pairs
    assert ("p", " b", True) in rows and ("p", " b", False) in rows  # a middle sample keeps both of its labels
    assert unpaired_examples(prompts, chosen, rejected, seed=0) == out  # the order is the seed's
    orders = {tuple(unpaired_examples(prompts, chosen, rejected, seed=s)["completion"]) for s in range(5)}
    assert len(orders) > 1 and all(Counter(o) == Counter(out["completion"]) for o in orders)
    with pytest.raises(ValueError, match="unequal length"):
        unpaired_examples(prompts, chosen, rejected[:-1], seed=0)


# ----------------------------------------------------------------------------------------------------------------
# Online DPO's update on a fixed batch
# ----------------------------------------------------------------------------------------------------------------

CORPUS = [
    "the film was great and the acting was superb",
    "a dull plot with awful pacing",
    "I loved every minute of it",
    "the story is boring but the music is fine",
    "an excellent cast in a terrible script",
]


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
        initializer_range=0.5,
    )
    return GPT2LMHeadModel(conf)


def test_online_dpo_update_is_dpo_on_the_pair_the_reward_picks(tmp_path):
    """TRL's training step with two fixed samples per prompt and fixed judge scores: the chosen sample is the higher
    scored one, the loss is ``dpo_family_loss`` on the log-probs the evaluator's sampler would give (positions that
    skip the left padding), and TRL's own ``_forward``, which ignores the padding, gives other log-probs."""
    from trl.experimental.online_dpo import OnlineDPOTrainer

    from harness.lm.models import train_tokenizer
    from harness.lm.sampling import Samples, encode_prompts, response_logits
    from pipelines.losses import dpo_family_loss, sequence_logps
    from pipelines.online_dpo import build_trainer
    from pipelines.schemas import OnlineDPOPipeline

    torch.set_num_threads(1)
    tok = train_tokenizer(CORPUS * 4, 300)
    policy, reference = _tiny_lm(tok, 0), _tiny_lm(tok, 1)  # different weights: every log-ratio is non-zero
    prompts = ["the film was great and", "a"]  # different lengths: the second is left-padded
    # rows [first samples; second samples], as TRL lays out its two generations per prompt
    scores = [0.1, 0.9, 0.5, 0.2]  # prompt 0: the second sample wins; prompt 1: the first
    judge_calls = []

    def judge(prompts, completions, **kwargs):
        judge_calls.append(list(prompts))
        return scores

    beta = 0.5
    cfg = OnlineDPOPipeline(beta=beta, batch_size=2, updates=1, max_new_tokens=4, warmup_ratio=0.0)
    trainer = build_trainer(policy, reference, tok, judge, prompts, cfg, str(tmp_path), seed=0)

    query, query_mask = encode_prompts(tok, prompts * 2, torch.device("cpu"))
    completions = [" the acting was", " plot", " it", " boring but the"]
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
    T = max(map(len, ids))
    response = torch.tensor([row + [tok.pad_token_id] * (T - len(row)) for row in ids])
    response_mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in ids])
    trainer._generate = lambda model, prompts, images=None: (query, query_mask, response, response_mask, None)

    s = Samples(query, query_mask, response, response_mask.float(), torch.ones(4, dtype=torch.bool), torch.arange(4))
    with torch.no_grad():
        pi = sequence_logps(response_logits(policy, s), response, response_mask).sum(-1)
        ref = sequence_logps(response_logits(reference, s), response, response_mask).sum(-1)
    chosen, rejected = torch.tensor([2, 1]), torch.tensor([0, 3])
    expected, _, _ = dpo_family_loss(pi[chosen], pi[rejected], ref[chosen], ref[rejected], beta, "sigmoid")
    swapped, _, _ = dpo_family_loss(pi[rejected], pi[chosen], ref[rejected], ref[chosen], beta, "sigmoid")

    loss = trainer.training_step(trainer.model, {"prompt": prompts})
    assert judge_calls == [prompts * 2]  # each prompt's two samples were judged
    assert abs(loss.item() - expected.mean().item()) < 1e-6
    assert abs(swapped.mean().item() - expected.mean().item()) > 1e-3  # the assignment matters, and it was the RM's
    assert trainer.stats["rewards/chosen"][-1] == pytest.approx(
        beta * (pi[chosen] - ref[chosen]).mean().item(), abs=1e-6
    )
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)

    # TRL's own _forward scores the left-padded prompt's completions at shifted positions; ours does not.
    args = (query, query_mask, response, response_mask)
    with torch.no_grad():
        ours = (trainer._forward(policy, *args) * response_mask).sum(-1)
        trl = (OnlineDPOTrainer._forward(trainer, policy, *args) * response_mask).sum(-1)
    padded = query_mask.sum(-1) < query_mask.shape[1]
    assert torch.allclose(ours, pi, atol=1e-5)
    assert torch.allclose(trl[~padded], pi[~padded], atol=1e-4)  # same where nothing is padded
    assert (trl[padded] - pi[padded]).abs().min() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Each method through the CLI on the tiny config
# ----------------------------------------------------------------------------------------------------------------


def _cli(tmp_path, cache, *argv):
    """``python -m harness <argv>`` in-process; returns the job's folder and its done.json result."""
    from harness.app import cli as app

    out = tmp_path / "run"
    try:
        app.main([*argv, f"cache_dir={cache}", f"hydra.run.dir={out}"])
    except SystemExit as e:  # a user error or a guard: fail with its line
        assert e.code in (0, None), f"exit status {e.code}"
    return out, json.loads((out / "done.json").read_text())["result"]


def _dpo_row_keys() -> set[str]:
    """The keys of a DPO result row: ``EvalPoint.row()``, which every method's FrontierEvaluation writes."""
    from harness.eval.row import ROW_KEYS

    return set(ROW_KEYS)


@pytest.mark.parametrize(
    "method, argv, setting",
    [
        # the micro-batch labels KTO's points: it sets how many examples estimate each reference point z_ref
        (
            "kto",
            ["pipeline.max_steps=4", "pipeline.beta=0.2", "pipeline.batch_size=16", "pipeline.micro_batch_size=8"],
            "beta=0.2,micro_batch_size=8",
        ),
        ("online_dpo", ["pipeline.updates=4", "pipeline.beta=0.2", "pipeline.batch_size=8"], "beta=0.2"),
    ],
)
def test_method_trains_through_the_cli_and_writes_dpo_rows(method, argv, setting, tmp_path, tiny_cache):
    from harness.eval.row import OPTIONAL_KEYS, REQUIRED_KEYS

    folder, facts = _cli(tmp_path, tiny_cache, f"pipeline={method}", *TRAINING, *argv)
    assert facts["steps"] == 4 and facts["losses_finite"] and math.isfinite(facts["train_loss"])
    assert facts["parameter_change"] > 0  # the policy moved away from π_SFT = π_ref
    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(set(r) == _dpo_row_keys() for r in rows) and set(REQUIRED_KEYS + OPTIONAL_KEYS) <= set(rows[0])
    assert {r["method"] for r in rows} == {method} and {r["setting"] for r in rows} == {setting}
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 0
    assert rows[-1]["compute_tokens_trained"] > rows[1]["compute_tokens_trained"] > 0
    assert (rows[0]["proxy_reward"] is None) == (method == "kto")  # online DPO has r_φ, so its rows carry it
    if method == "kto":
        assert facts["train_examples"] == 2 * facts["train_pairs"]
    else:
        assert facts["pairs"] == 4 * 8 and facts["episodes"] == 2 * 4 * 8
