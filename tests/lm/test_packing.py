"""Packed sequences (``harness.lm.packing``) against the padded passes they replace.

Tolerances (fp32): GPT-2 (random init, tiny): every per-token quantity and every parameter gradient within
``torch.testing.assert_close(rtol=1e-5, atol=1e-6)`` of the padded pass. SmolLM2-135M: see its test's docstring.
"""

from __future__ import annotations

import logging

import pytest
import torch

from harness.eval.kl import sequence_kl_exact, token_kl_exact, token_logprobs
from harness.lm import packing
from harness.lm.sampling import Samples, positions, response_logits

V, PAD, EOS = 40, 1, 0
RTOL, ATOL = 1e-5, 1e-6


def samples(prompts: list[list[int]], responses: list[list[int]], pad: int = PAD) -> Samples:
    """Left-padded prompts, right-padded responses (a response ending in EOS is finished), as the sampler records."""
    B, P, T = len(prompts), max(map(len, prompts)), max(map(len, responses))
    query = torch.full((B, P), pad, dtype=torch.long)
    qmask = torch.zeros(B, P, dtype=torch.long)
    response = torch.full((B, T), pad, dtype=torch.long)
    rmask = torch.zeros(B, T)
    for b, (q, r) in enumerate(zip(prompts, responses)):
        query[b, P - len(q) :], qmask[b, P - len(q) :] = torch.tensor(q), 1
        response[b, : len(r)], rmask[b, : len(r)] = torch.tensor(r), 1
    ended = torch.tensor([r[-1] == EOS for r in responses])
    return Samples(query, qmask, response, rmask, ended, torch.arange(B))


def mixed(vocab: int = V, eos: int = EOS, pad: int = PAD, seed: int = 0) -> Samples:
    """Prompts of 1 to 8 tokens; responses of 1 to 12: EOS alone (1 token, the rest of its row padding), finished
    early, and truncated (no EOS, the full width)."""
    g = torch.Generator().manual_seed(seed)

    def words(n: int) -> list[int]:
        return (torch.randint(2, vocab, (n,), generator=g)).tolist()  # never EOS or pad

    prompts = [words(n) for n in (3, 1, 8, 5, 2, 6, 4, 7)]
    responses = [[eos], words(11) + [eos], words(12), words(3) + [eos], words(1), words(7) + [eos], [eos], words(12)]
    return samples(prompts, responses, pad)


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    conf = GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(conf).eval()
    scalar = GPT2ForSequenceClassification(GPT2Config(**{**conf.to_dict(), "num_labels": 1})).eval()
    return lm, scalar


def padded_values(scalar, s: Samples) -> torch.Tensor:
    """Today's padded pass: the scalar head at every position that predicts a response token. (B, T)"""
    attn = s.attention_mask
    P, T = s.query.shape[1], s.response.shape[1]
    hidden = scalar.transformer(input_ids=s.sequences, attention_mask=attn, position_ids=positions(attn))
    return scalar.score(hidden.last_hidden_state[:, P - 1 : P - 1 + T]).squeeze(-1) * s.response_mask


def padded_scores(scalar, s: Samples) -> torch.Tensor:
    """The scalar model read at the last attended token of the padded batch (``read_score_at_last_token``). (B,)"""
    from harness.lm.models import read_score_at_last_token

    attn = s.attention_mask
    out = read_score_at_last_token(scalar)(input_ids=s.sequences, attention_mask=attn, position_ids=positions(attn))
    return out.logits[:, 0]


def packed_logprobs(lm, s: Samples, temperature: float = 1.0) -> torch.Tensor:
    logits, mask = packing.response_token_logits(lm, s, temperature)
    return packing.to_grid(token_logprobs(logits, s.response[mask]), mask)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------------------------------ layout
def test_first_fit_decreasing_places_longest_first_into_the_first_row_with_room():
    # width 10: 7 opens row 0, 6 opens row 1, the first 3 fills row 0, the second goes after the 6, 2 opens row 2
    assert packing.first_fit_decreasing([3, 7, 2, 6, 3], 10) == [(0, 7), (0, 0), (2, 0), (1, 0), (1, 6)]
    assert packing.first_fit_decreasing([], 5) == []


def test_pack_restarts_positions_masks_each_sequence_and_points_at_the_predictors():
    s = samples([[5, 6], [7]], [[8, 9, EOS], [EOS]])  # lengths 5 and 2: one row of width 5 each
    lay = packing.pack(s)
    assert lay.packed and lay.input_ids.shape == (2, 5)
    assert lay.input_ids.tolist() == [[5, 6, 8, 9, EOS], [7, EOS, 0, 0, 0]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 0, 0]]
    m = lay.attention_mask[:, 0]
    assert torch.equal(m[0], torch.ones(5, 5, dtype=torch.bool).tril())
    # row 1: the 2-token sequence is causal; each tail position sees itself only (never an all-False row)
    assert m[1].tolist()[:2] == [[True, False, False, False, False], [True, True, False, False, False]]
    assert torch.equal(m[1, 2:, 2:], torch.eye(3, dtype=torch.bool)) and not m[1, 2:, :2].any()
    # response tokens 8, 9, EOS of episode 0 are predicted at flat 1, 2, 3; episode 1's EOS at flat 5 (row 1, col 0)
    assert lay.predictors.tolist() == [1, 2, 3, 5] and lay.last.tolist() == [4, 6]

    three = samples([[5], [6], [7]], [[EOS], [8, EOS], [EOS]])  # lengths 2, 3, 2 into width 4: [3 ... ] [2 2]
    lay = packing.pack(three, width=4)
    assert lay.input_ids.tolist() == [[6, 8, EOS, 0], [5, EOS, 7, EOS]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert not lay.attention_mask[1, 0, 2:, :2].any(), "the second sequence of a row must not see the first"


def test_pack_refuses_an_episode_without_prompt_tokens():
    s = samples([[5], [6]], [[EOS], [EOS]])
    s.query_mask[1] = 0
    with pytest.raises(ValueError, match="prompt"):
        packing.pack(s)


def test_to_grid_places_values_in_row_major_order_of_the_mask_and_carries_gradients():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    grid = packing.to_grid(x, mask)
    assert grid.tolist() == [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    (grid * torch.tensor([[1.0, 2.0, 5.0], [3.0, 5.0, 5.0]])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------------------- packed equals each one alone
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_forward_equals_each_sequence_run_alone(gpt2, attention):
    """Fails if packed sequences see each other: each episode's hidden states in the packed rows equal those of the
    sequence run by itself, unpadded. The same rows with a 2D mask (plain causal attention over each row) do not, so
    the check bites. (With no mask at all and no cache, transformers 5 infers the sequences from restarting position
    ids; with a cache, or a 2D mask, it does not: hence the explicit 4D mask.)"""
    lm = gpt2[0]
    lm.config._attn_implementation = attention
    try:
        s = mixed()
        lay = packing.pack(s)
        assert lay.input_ids.shape[0] < s.query.shape[0], "the batch must share rows for this test to mean anything"
        with torch.no_grad():
            flat = packing.hidden_states(lm, lay)
            ones = torch.ones_like(lay.input_ids)  # a 2D mask: plain causal attention over each whole row
            causal = lm.transformer(
                input_ids=lay.input_ids, attention_mask=ones, position_ids=lay.position_ids, use_cache=False
            )
            causal = causal.last_hidden_state.flatten(0, 1)
            attn = s.attention_mask.bool()
            ends = attn.sum(-1).cumsum(0)
            shared = False
            for b in range(len(ends)):
                ids = s.sequences[b][attn[b]]
                alone = lm.transformer(input_ids=ids[None]).last_hidden_state[0]
                at = torch.arange(lay.last[b] - len(ids) + 1, lay.last[b] + 1)
                torch.testing.assert_close(flat[at], alone, rtol=RTOL, atol=ATOL)
                shared |= not torch.allclose(causal[at], alone, rtol=RTOL, atol=ATOL)
        assert shared, "a plain causal mask over the packed rows should mix the sequences"
    finally:
        lm.config._attn_implementation = "sdpa"


# ------------------------------------------------------------------------------------- packed equals padded
def test_packed_passes_equal_the_padded_ones_values_and_gradients(gpt2):
    """Log-probs of response tokens, entropy, exact KL against kept log-distributions, critic values, reward-model
    scores, and the gradients of a loss over all of them, packed and padded, fp32: rtol 1e-5, atol 1e-6."""
    from pipelines.ppo import critic_values, policy_pass
    from pipelines.stages.reward_model import score_samples

    lm, scalar = gpt2
    s = mixed()
    mask = s.response_mask
    temp = 0.7
    with torch.no_grad():  # another model's kept log-distributions, as the sampler keeps them: (B, T, V)
        kept = torch.log_softmax(torch.randn(*s.response.shape, V) * 2, -1)

    # padded, as the code was
    logits = response_logits(lm, s, temp)
    lp_pad = token_logprobs(logits, s.response) * mask
    ent_pad = (-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1) * mask).sum(-1)
    kl_pad = sequence_kl_exact(kept, logits, mask)
    v_pad = padded_values(scalar, s)
    r_pad = padded_scores(scalar, s)
    loss = lp_pad.sum() + ent_pad.sum() + kl_pad.sum() + (v_pad**2).sum() + r_pad.sum()
    loss.backward()
    g_lm_pad, g_scalar_pad = grads(lm), grads(scalar)

    # packed, through the callers' own functions
    flat, lp = policy_pass(lm, s, temp)
    ent = packing.to_grid(-(flat.softmax(-1) * flat.log_softmax(-1)).sum(-1), mask.bool()).sum(-1)
    kl = packing.to_grid(token_kl_exact(kept[mask.bool()], flat), mask.bool()).sum(-1)
    v = critic_values(scalar, s)
    r = scalar.score(packing.last_states(scalar, s))[:, 0]
    (lp.sum() + ent.sum() + kl.sum() + (v**2).sum() + r.sum()).backward()
    g_lm, g_scalar = grads(lm), grads(scalar)

    for packed, padded in ((lp, lp_pad), (ent, ent_pad), (kl, kl_pad), (v, v_pad), (r, r_pad)):
        torch.testing.assert_close(packed, padded, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(score_samples(scalar, s, batch_size=3), r_pad.detach(), rtol=RTOL, atol=ATOL)
    assert g_lm.keys() == g_lm_pad.keys() and len(g_lm) == len(list(lm.parameters()))
    for g, g_pad in ((g_lm, g_lm_pad), (g_scalar, g_scalar_pad)):
        for name in g_pad:
            torch.testing.assert_close(g[name], g_pad[name], rtol=RTOL, atol=ATOL, msg=name)


def test_packed_passes_run_under_bf16_autocast(gpt2):
    """Under bf16 autocast (``harness.lm.precision``) the packed pass runs and stays within bf16 rounding of the
    padded one."""
    from harness.lm.precision import autocast

    lm = gpt2[0]
    s = mixed()
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        packed = packed_logprobs(lm, s)
        padded = token_logprobs(response_logits(lm, s), s.response) * s.response_mask
    assert packed.dtype == torch.float32
    torch.testing.assert_close(packed, padded, rtol=0.05, atol=0.05)


def test_an_unknown_family_runs_padded_and_says_so_once(caplog):
    """gpt_neox is not a packed family: its passes run on the padded batch (the same numbers as before), with one log
    line for the model type however often it is called."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    conf = GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    lm = GPTNeoXForCausalLM(conf).eval()
    s = mixed()
    packing._fallback_logged.discard("gpt_neox (sdpa attention)")
    with caplog.at_level(logging.INFO, logger="harness.packing"), torch.no_grad():
        first = packed_logprobs(lm, s)
        packed_logprobs(lm, s)
        padded = token_logprobs(response_logits(lm, s), s.response) * s.response_mask
    lines = [r for r in caplog.records if r.name == "harness.packing"]
    assert len(lines) == 1 and "gpt_neox" in lines[0].getMessage()
    torch.testing.assert_close(first, padded, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------- a real model
def test_smollm2_packed_equals_padded(smollm2_folder):
    """SmolLM2-135M (llama: rotary positions, grouped-query attention, pad = EOS), fp32. What it needs, measured on
    an AMD EPYC at 1-2 threads: the packed log-probs equal the padded ones elementwise within rtol 1e-5, atol 1e-6
    (largest relative difference 6.5e-7); each parameter's gradient of their sum equals the padded one within a
    relative norm ‖g − g_padded‖ / ‖g_padded‖ of 2e-5 (largest 5.4e-6, median 1.1e-6). Elementwise the gradients
    would need atol ~1.2e-4 at rtol 1e-5 (entries up to 331; 2e-6 of a tensor's largest): the two passes multiply
    matrices of other shapes, so their sums run in another order."""
    from harness.lm.models import load_pretrained_lm

    lm = load_pretrained_lm(smollm2_folder).eval()
    eos = lm.config.eos_token_id
    s = mixed(vocab=1000, eos=eos, pad=eos)
    assert packing.pack(s).input_ids.shape[0] < s.query.shape[0]
    padded = token_logprobs(response_logits(lm, s), s.response) * s.response_mask
    padded.sum().backward()
    g_pad = grads(lm)
    packed = packed_logprobs(lm, s)
    packed.sum().backward()
    g = grads(lm)
    torch.testing.assert_close(packed, padded.detach(), rtol=1e-5, atol=1e-6)
    assert g.keys() == g_pad.keys()
    for name in g_pad:
        assert (g[name] - g_pad[name]).norm() <= 2e-5 * g_pad[name].norm(), name


def test_pack_rows_packs_right_padded_rows_and_refuses_other_masks():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [4, 3, 2, 1]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    layout = packing.pack_rows(ids, attention)
    flat = layout.input_ids.flatten()
    assert layout.packed and sorted(flat[layout.last].tolist()) == [1, 7, 9]
    # the predictors of tokens 1.. of each row, row-major: each predicts the next token of its own row
    assert torch.equal(layout.response_mask, attention[:, 1:].bool())
    assert flat[layout.predictors + 1].tolist() == ids[:, 1:][attention[:, 1:].bool()].tolist()
    assert packing.pack_rows(ids, attention.flip(1)) is None  # left padding
    assert packing.pack_rows(ids, torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])) is None  # a hole
    assert packing.pack_rows(ids, torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])) is None  # an empty row


def test_the_scalar_models_forward_runs_packed_and_equals_the_padded_one(gpt2):
    from harness.lm.models import read_score_at_last_token

    _, scalar = gpt2
    model = read_score_at_last_token(scalar)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, V, (5, 12), generator=g)
    attention = (torch.arange(12) < torch.tensor([12, 3, 7, 1, 9]).unsqueeze(-1)).long()
    calls = []
    real = packing.hidden_states
    packing.hidden_states = lambda *a: calls.append(1) or real(*a)
    try:
        packed = model(input_ids=ids, attention_mask=attention).logits
    finally:
        packing.hidden_states = real
    assert calls == [1]
    padded = model(input_ids=ids, attention_mask=attention, position_ids=positions(attention)).logits  # as it is
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    grads = []
    for kw in ({}, {"position_ids": positions(attention)}):
        scalar.zero_grad()
        model(input_ids=ids, attention_mask=attention, **kw).logits.square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in scalar.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6, msg=k)
