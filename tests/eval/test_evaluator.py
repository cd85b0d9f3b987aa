"""The evaluator's KL against brute-force enumeration of every response on a 4-token vocabulary."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from harness.config import EvalConfig
from harness.eval.evaluator import Evaluator, kl_stats
from harness.eval.kl import sequence_kl_exact, token_kl_exact
from harness.lm.sampling import Samples, encode_prompts

T = 3  # max_new_tokens


def four_token_lm(n_positions: int = 16):
    """A word-level tokenizer over {EOS, pad, a, b} and a random one-layer GPT-2 on it (seed 0): (tok, model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, "a": 2, "b": 3}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=4, n_embd=16, n_layer=1, n_head=2, n_positions=n_positions, eos_token_id=0, pad_token_id=1
    )
    return tok, GPT2LMHeadModel(conf).eval()


@pytest.fixture(scope="module")
def tiny():
    tok, ref = four_token_lm()
    with torch.no_grad():  # make the reference peaked enough that the perturbation matters
        ref.lm_head.weight.mul_(8)
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return tok, policy, ref


def all_responses():
    """Every response of at most T tokens that stops at EOS (id 0): the support of the sampler."""
    out = []
    for n in range(1, T + 1):
        for seq in itertools.product(range(4), repeat=n):
            if 0 in seq[:-1]:
                continue  # would have stopped earlier
            if n < T and seq[-1] != 0:
                continue  # a shorter response must end with EOS
            out.append(seq)
    return out


def enumerated_samples(tok, prompt):
    resp = all_responses()
    q, qm = encode_prompts(tok, [prompt], torch.device("cpu"))
    B = len(resp)
    response = torch.full((B, T), tok.pad_token_id)
    mask = torch.zeros(B, T)
    for i, r in enumerate(resp):
        response[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return Samples(
        q.repeat(B, 1), qm.repeat(B, 1), response, mask, response[:, -1] == 0, torch.zeros(B, dtype=torch.long)
    )


@torch.no_grad()
def seq_logprob(model, s):
    from harness.eval.kl import token_logprobs
    from harness.lm.sampling import response_logits

    return (token_logprobs(response_logits(model, s), s.response) * s.response_mask).sum(-1)


def test_token_kl_is_zero_for_identical_and_positive_otherwise():
    a = torch.randn(2, 3, 5)
    assert torch.all(token_kl_exact(a, a) == 0)
    assert torch.all(token_kl_exact(a, torch.randn(2, 3, 5)) > 0)
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.randn(2, 3, 5)
    per = token_kl_exact(a, b)
    torch.testing.assert_close(sequence_kl_exact(a, b, m), torch.stack([per[0, :2].sum(), per[1, 0]]))


def test_exact_kl_matches_brute_force_enumeration(tiny):
    tok, policy, ref = tiny
    s = enumerated_samples(tok, "a b")
    logp, logq = seq_logprob(policy, s), seq_logprob(ref, s)
    prob = logp.exp()
    assert abs(float(prob.sum()) - 1.0) < 1e-5  # the enumeration covers the whole support
    brute = float((prob * (logp - logq)).sum())  # KL(π(·|x) ‖ π_ref(·|x)) over whole responses
    exact, sampled = kl_stats(policy, ref, s, batch_size=7)
    expected_exact = float((prob.double() * torch.from_numpy(exact).double()).sum())
    assert brute > 0.05
    assert abs(expected_exact - brute) < 1e-5
    np.testing.assert_allclose(sampled, (logp - logq).numpy(), atol=1e-5)


def test_evaluator_sampled_estimate_within_3_sem_and_self_kl_is_zero(tiny):
    tok, policy, ref = tiny
    s = enumerated_samples(tok, "a b")
    logp, logq = seq_logprob(policy, s), seq_logprob(ref, s)
    brute = float((logp.exp() * (logp - logq)).sum())
    gold = lambda texts: np.array([t.count("a") / max(1, len(t.split())) for t in texts])
    cfg = EvalConfig(samples_per_prompt=4000, max_new_tokens=T, batch_size=1000)
    ev = Evaluator(ref, tok, ["a b"], gold, cfg)
    point = ev(policy, method="test", setting="", seed=0, step=0, run_id="r")
    samples = ev.last_samples
    _, sampled = kl_stats(policy, ref, samples, 1000)
    sem = sampled.std(ddof=1) / math.sqrt(len(sampled))
    assert abs(point.kl_sample - brute) < 3 * sem
    assert abs(point.kl - brute) < 3 * point.kl_sem
    assert point.kl_sem < sem  # the exact per-state KL has lower variance than the log-ratio
    assert 0 <= point.gold_reward <= 1 and 1 <= point.response_tokens <= T
    same = ev(copy.deepcopy(ref), method="test", setting="", seed=0, step=0, run_id="r")
    # The policy's distributions come from the KV-cached sampling passes, the reference's from one full forward: the
    # same numbers up to float rounding, so the KL of a model to itself is zero to ~1e-10, not bit for bit.
    assert abs(same.kl) < 1e-7 and abs(same.kl_sample) < 1e-5


def test_exact_kl_at_the_sampling_temperature_matches_brute_force(tiny):
    """At T = 0.7 the evaluator samples from softmax(logits / T); its KL is between the tempered policy and the
    tempered reference, equal to the whole-response KL of those two distributions."""
    from harness.eval.kl import token_logprobs
    from harness.lm.sampling import response_logits

    tok, policy, ref = tiny
    temp = 0.7
    s = enumerated_samples(tok, "a b")
    with torch.no_grad():
        logp = (token_logprobs(response_logits(policy, s, temp), s.response) * s.response_mask).sum(-1)
        logq = (token_logprobs(response_logits(ref, s, temp), s.response) * s.response_mask).sum(-1)
    prob = logp.exp()
    assert abs(float(prob.sum()) - 1.0) < 1e-5
    brute = float((prob * (logp - logq)).sum())
    exact, _ = kl_stats(policy, ref, s, batch_size=7, temperature=temp)
    assert abs(float((prob.double() * torch.from_numpy(exact).double()).sum()) - brute) < 1e-5
    exact_t1, _ = kl_stats(policy, ref, s, batch_size=7)
    assert abs(float((prob.double() * torch.from_numpy(exact_t1).double()).sum()) - brute) > 1e-2  # T matters here


def test_kl_stats_packed_equals_padded_with_and_without_kept_logprobs(tiny, monkeypatch):
    """kl_stats runs its passes packed (``harness.lm.packing``): the same KLs as on the padded batch, whether the
    policy's log-distributions come from the sampler (kept) or from a forward pass."""
    from harness.lm import packing
    from harness.lm.sampling import response_logits

    tok, policy, ref = tiny
    s = enumerated_samples(tok, "a b")
    with torch.no_grad():
        kept = copy.copy(s)
        kept.logprobs = torch.log_softmax(response_logits(policy, s, 0.7), -1)
    packed = [kl_stats(policy, ref, x, batch_size=7, temperature=0.7) for x in (s, kept)]
    monkeypatch.setattr(packing, "packable", lambda model: False)
    padded = kl_stats(policy, ref, s, batch_size=7, temperature=0.7)
    for exact, sampled in packed:
        np.testing.assert_allclose(exact, padded[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sampled, padded[1], rtol=1e-5, atol=1e-6)
