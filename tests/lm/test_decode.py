"""The live-row decode loop (harness/lm/decode.py, ``sampling._sample_live_rows``): for a seed it draws the samples
transformers' cached loop (``sampling._sample_hf_cache``, the reference) draws, leaves the generator where that loop
leaves it, stops decoding rows that ended, and hands every other family to the reference loop with one log line."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from harness.lm import sampling
from harness.lm.models import train_tokenizer, use_fused_gelu

CORPUS = [
    "the film was great and the acting was superb",
    "a dull plot with awful pacing",
    "I loved every minute of it",
    "the story is boring but the music is fine",
    "an excellent cast in a terrible script",
]
PROMPTS = ["the film", "a dull plot with", "I", "the story is boring but", "an excellent"]  # several pad widths
FIELDS = ("query", "query_mask", "response", "response_mask", "ended", "prompt_index")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS * 4, 300)


def _gpt2(tok, n_layer=2, seed=0, eos_bias=0.0, **conf):
    """A random GPT-2 as the harness loads one (tanh-GELU swapped in). ``eos_bias`` > 0 gives it a head with a bias
    on the EOS logit, so rows end at different steps, as a trained policy's do (5 ≈ one chance in three a step)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    c = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **conf,
    )
    model = use_fused_gelu(GPT2LMHeadModel(c)).eval()
    if eos_bias:
        model.lm_head = eos_biased_head(model.lm_head, tok.eos_token_id, eos_bias)
    return model


def eos_biased_head(head: torch.nn.Linear, eos: int, bias: float) -> torch.nn.Linear:
    """A copy of ``head`` whose logits gain ``bias`` at ``eos``."""
    out = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_(head.weight)
        out.bias.zero_()
        out.bias[eos] = bias
    return out


def _both(model, tok, prompts, n, new, temperature, seed, keep):
    """``sample`` (the live-row loop where the family has one) and the reference loop, each from a fresh generator
    with ``seed``; also the two generators afterwards.

    The tiny models of the identical-samples tests run in float64. In fp32 the two loops' log-probabilities differ by
    ~1e-6 (their kernels sum in other orders), so a uniform drawn within that of a CDF boundary picks the neighbouring
    token: seen once in 16,000 draws. That is rounding, not a different sampler, and which draws it hits depends on the
    CPU's kernels; in float64 the difference is ~1e-15 and the test says the same thing on every machine."""
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    ours = sampling.sample(model, tok, prompts, n, new, temperature, gens[0], keep_logprobs=keep)
    with _forced_fallback():
        ref = sampling.sample(model, tok, prompts, n, new, temperature, gens[1], keep_logprobs=keep)
    return ours, ref, gens


class _forced_fallback:
    """Within it ``sample`` takes the reference loop for every model."""

    def __enter__(self):
        self.saved = sampling._decode_step
        sampling._decode_step = lambda model: None

    def __exit__(self, *exc):
        sampling._decode_step = self.saved


def _assert_same(ours, ref, keep):
    for f in FIELDS:
        assert torch.equal(getattr(ours, f), getattr(ref, f)), f
    if keep:
        assert ours.logprobs.shape == ref.logprobs.shape
        live = ref.response_mask.bool()
        torch.testing.assert_close(ours.logprobs[live], ref.logprobs[live], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(ours.logprobs).all()
    else:
        assert ours.logprobs is None and ref.logprobs is None


@pytest.mark.parametrize("eos_bias", [0.0, 5.0], ids=["random", "ends_early"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("keep", [False, True], ids=["tokens", "logprobs"])
def test_gpt2_draws_the_reference_loops_samples(tok, eos_bias, temperature, keep):
    model = _gpt2(tok, n_layer=3, eos_bias=eos_bias).double()
    for seed in (0, 1, 2):
        ours, ref, gens = _both(model, tok, PROMPTS, 4, 16, temperature, seed, keep)
        _assert_same(ours, ref, keep)
        assert torch.equal(gens[0].get_state(), gens[1].get_state())
    if eos_bias:  # the case is what it claims: rows end at different steps, well before the others
        lengths = ref.lengths()
        assert ref.ended.float().mean() > 0.5 and lengths.min() < lengths.max()


def test_gpt2_inverse_layer_scaling_and_unscaled_attention_are_the_models(tok):
    """The two GPT-2 flags that change attention's scale take the module's own ``scaling``."""
    model = _gpt2(tok, n_layer=3, eos_bias=5.0, scale_attn_by_inverse_layer_idx=True, scale_attn_weights=False).double()
    assert sampling._decode_step(model) is not None
    ours, ref, _ = _both(model, tok, PROMPTS, 3, 12, 1.0, 5, True)
    _assert_same(ours, ref, True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_under_bf16_autocast_the_cache_takes_the_projections_dtypes_and_the_samples_agree(tok, family):
    """Under autocast the projections give bf16 (and llama's K comes out of its fp32 rotary embedding in fp32): the
    cache is allocated in those dtypes and each step writes the dtype the cache holds. The two loops round
    differently in bf16 (their attention kernels, and the prefill over one row per prompt against one per sample:
    log-probabilities differ by ~2e-3, at most 1.3e-2 seen, about two bf16 steps at their size), so a draw within
    that of a CDF boundary may part the two loops' rows from there on; where the rows agree so far, the distributions
    agree to bf16."""
    from harness.lm import decode
    from harness.lm.precision import autocast

    model = _gpt2(tok, n_layer=2, eos_bias=5.0) if family == "gpt2" else _llama(tok)
    written = set()
    real_write = decode.DecodeCache.write

    def write(cache, layer, k, v):
        written.add((k.dtype, cache.keys[layer].dtype, v.dtype, cache.values[layer].dtype))
        return real_write(cache, layer, k, v)

    decode.DecodeCache.write = write
    try:
        with autocast(torch.device("cpu"), "bf16"):
            ours, ref, _ = _both(model, tok, PROMPTS, 4, 12, 1.0, 3, True)
    finally:
        decode.DecodeCache.write = real_write
    k_dtype = torch.bfloat16 if family == "gpt2" else torch.float32
    assert written == {(k_dtype, k_dtype, torch.bfloat16, torch.bfloat16)}
    assert ours.logprobs.dtype == torch.float32
    assert torch.equal(ours.query, ref.query) and ours.response.shape[0] == ref.response.shape[0]
    T = min(ours.response.shape[1], ref.response.shape[1])
    agree = torch.cumprod((ours.response[:, :T] == ref.response[:, :T]).long(), -1).bool()  # tokens 0..t agree
    assert agree[:, -1].float().mean() >= 0.9  # nearly every row is the same row
    seen = torch.cat([torch.ones_like(agree[:, :1]), agree[:, :-1]], 1) & ref.response_mask[:, :T].bool()
    torch.testing.assert_close(ours.logprobs[:, :T][seen], ref.logprobs[:, :T][seen], rtol=0, atol=2e-2)


@pytest.mark.parametrize("compact_below", [1.0, sampling.COMPACT_BELOW], ids=["every_shrink", "default"])
def test_finished_rows_are_not_decoded(tok, monkeypatch, compact_below):
    """The step sees the live rows, plus at most the few that ended since the last compaction: a row is live at step
    t (fed its token t) while it has a token t + 1; the reference loop feeds all B rows at each of its T - 1 steps."""
    from harness.lm import decode

    monkeypatch.setattr(sampling, "COMPACT_BELOW", compact_below)
    model = _gpt2(tok, n_layer=2, eos_bias=3.0)
    fed = []

    def counting(model, cache, tokens, pos):
        fed.append(tokens.shape[0])
        assert cache.keys[0].shape[0] == tokens.shape[0]  # the cache holds the rows fed, no others
        return decode.gpt2_step(model, cache, tokens, pos)

    monkeypatch.setattr(sampling, "_decode_step", lambda m: counting)
    s = sampling.sample(model, tok, PROMPTS * 4, 4, 24, generator=torch.Generator().manual_seed(0))
    B, T = s.response.shape
    live = [int((s.lengths() > t + 1).sum()) for t in range(T - 1)]
    assert len(fed) == T - 1 and fed == sorted(fed, reverse=True) and live[-1] < live[0]
    for n_fed, n_live in zip(fed, live):
        assert n_fed == n_live or n_fed > n_live >= compact_below * n_fed
    assert sum(fed) < B * (T - 1) if compact_below < 1 else sum(fed) == sum(live)


def test_another_family_takes_the_reference_loop_and_says_so_once(tok, caplog):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    c = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPTNeoXForCausalLM(c).eval()
    sampling._FALLBACK_LOGGED.discard("gpt_neox")
    with caplog.at_level(logging.INFO, logger="harness.sampling"):
        ours, ref, gens = _both(model, tok, PROMPTS, 2, 8, 1.0, 0, True)
        sampling.sample(model, tok, PROMPTS, 2, 4, generator=torch.Generator().manual_seed(1))
    _assert_same(ours, ref, True)
    assert torch.equal(ours.logprobs, ref.logprobs)  # the same loop, to the bit
    lines = [r.getMessage() for r in caplog.records if r.name == "harness.sampling"]
    assert len(lines) == 1 and "gpt_neox" in lines[0] and "no decode step" in lines[0], lines


def test_an_unimplemented_gpt2_flag_falls_back(tok, caplog):
    model = _gpt2(tok, n_layer=1, reorder_and_upcast_attn=True)
    sampling._FALLBACK_LOGGED.discard("gpt2")
    with caplog.at_level(logging.INFO, logger="harness.sampling"):
        assert sampling._decode_step(model) is None
        assert sampling._decode_step(model) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "harness.sampling"]
    assert len(lines) == 1 and "reorder_and_upcast_attn" in lines[0]
    sampling._FALLBACK_LOGGED.discard("gpt2")  # later tests that fall back may log again


def _llama(tok, **conf):
    """A random llama with an EOS-biased head (rows end at different steps); ``conf`` overrides its config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    c = dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(LlamaConfig(**{**c, **conf})).eval()
    model.lm_head = eos_biased_head(model.lm_head, tok.eos_token_id, 4.0)
    return model


def test_a_tiny_llama_draws_the_reference_loops_samples(tok):
    """Grouped-query attention (4 heads on 2 kv heads), biases, an explicit head_dim, scaled rope: a random llama."""
    model = _llama(
        tok,
        head_dim=16,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    ).double()
    assert sampling._decode_step(model) is not None
    for seed in (0, 1):
        ours, ref, gens = _both(model, tok, PROMPTS, 3, 12, 0.7, seed, True)
        _assert_same(ours, ref, True)
        assert torch.equal(gens[0].get_state(), gens[1].get_state())
        assert ref.lengths().min() < ref.lengths().max()  # rows left the batch at different steps


def test_smollm2_draws_the_reference_loops_samples(smollm2_cache, smollm2_folder):
    from harness.lm.models import load_pretrained_lm, load_tokenizer
    from tests.conftest import smollm2_config

    tok = load_tokenizer(smollm2_config(smollm2_cache).model, source=str(smollm2_folder))
    model = load_pretrained_lm(smollm2_folder, tok).eval()
    assert sampling._decode_step(model) is not None
    prompts = ["This movie was", "I watched the film last night and honestly it"]
    ours, ref, gens = _both(model, tok, prompts, 2, 8, 1.0, 0, True)
    _assert_same(ours, ref, True)
    assert torch.equal(gens[0].get_state(), gens[1].get_state())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("fallback", [False, True], ids=["live_rows", "hf_cache"])
def test_token_stats_are_those_of_the_sampling_distributions(tok, family, fallback):
    """``keep_token_stats``: each sampled token's log-probability and each step's exact entropy, read off the very
    log-distributions ``keep_logprobs`` keeps, 0 on padding; asking for them changes neither the draws nor the
    generator; ``subset`` carries them; and a full forward over prompt + response gives them again, to fp32 rounding
    (the decode steps and the full forward sum in other orders)."""
    from harness.lm import packing

    model = _gpt2(tok, n_layer=2, eos_bias=5.0) if family == "gpt2" else _llama(tok)
    assert sampling._decode_step(model) is not None  # so the fallback is the forced one
    runs = {}
    for keep in ((False, False), (True, True), (False, True)):
        gen = torch.Generator().manual_seed(4)
        with _forced_fallback() if fallback else contextlib.nullcontext():
            s = sampling.sample(model, tok, PROMPTS, 3, 12, 0.7, gen, keep_logprobs=keep[0], keep_token_stats=keep[1])
        runs[keep] = s, gen.get_state()
    (plain, plain_gen), (full, _), (stats, stats_gen) = runs.values()
    for s, gen in runs.values():
        assert all(torch.equal(getattr(s, f), getattr(plain, f)) for f in FIELDS)
        assert torch.equal(gen, plain_gen)
    assert plain.token_logprobs is None and plain.token_entropy is None and stats.logprobs is None
    assert torch.equal(stats.token_logprobs, full.token_logprobs) and torch.equal(
        stats.token_entropy, full.token_entropy
    )

    live = full.response_mask.bool()
    assert full.token_logprobs.shape == full.token_entropy.shape == live.shape and (~live).any()
    assert (full.token_logprobs[~live] == 0).all() and (full.token_entropy[~live] == 0).all()
    kept = full.logprobs[live]  # (n, V) the sampling distributions of the real response tokens
    tokens = full.response[live]
    assert torch.equal(full.token_logprobs[live], kept.gather(-1, tokens[:, None]).squeeze(-1))
    exact = torch.distributions.Categorical(logits=kept).entropy()
    torch.testing.assert_close(full.token_entropy[live], exact, rtol=1e-6, atol=1e-6)

    with torch.no_grad():
        logits, mask = packing.response_token_logits(model, full, 0.7)  # (n, V) one forward, no cache
    assert torch.equal(mask, live)
    forward_logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(
        full.token_logprobs[live], forward_logp.gather(-1, tokens[:, None]).squeeze(-1), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        full.token_entropy[live], torch.distributions.Categorical(logits=logits).entropy(), rtol=1e-5, atol=1e-5
    )

    idx = torch.tensor([5, 0, 2])
    part = full.subset(idx)
    for f in ("logprobs", "token_logprobs", "token_entropy"):
        assert torch.equal(getattr(part, f), getattr(full, f)[idx]), f


def test_each_prompt_is_prefilled_once_for_all_its_samples(tok, monkeypatch):
    model = _gpt2(tok, n_layer=2).double()
    rows = []
    real = sampling._prefill
    monkeypatch.setattr(sampling, "_prefill", lambda m, q, qm: rows.append(q.shape[0]) or real(m, q, qm))
    ours, ref, _ = _both(model, tok, PROMPTS, 4, 8, 1.0, 0, False)
    assert rows == [len(PROMPTS), 4 * len(PROMPTS)]  # ours once per prompt; the reference loop per sample
    _assert_same(ours, ref, False)
