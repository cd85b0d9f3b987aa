"""Batched sampling with a KV cache, and the forward passes that score what was sampled.

Our own loop rather than ``generate``: per step it is one cached forward and one multinomial draw, which matters for
small models on CPU where ``generate``'s per-step bookkeeping costs as much as the model; and it returns exactly the
record every consumer needs (left-padded queries, right-padded responses, masks that stop after EOS).

For GPT-2 and llama the decode steps after transformers' prefill are our own forward over a preallocated cache
(``harness.lm.decode``), on the rows still decoding only; other families keep transformers' cached forward
(``_sample_hf_cache``). Both consume the generator identically (one uniform per batch row per step), so a seed gives
the same samples either way, but for a draw within fp32 rounding of a CDF boundary (the two forwards' kernels round
differently): one row of 512 parted at one of its 32 draws in benchmarks/decode_speed.py.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from harness.lm.decode import DecodeCache, Step, step_for

log = logging.getLogger("harness.sampling")
_FALLBACK_LOGGED: set[str] = set()  # model types whose fallback this process has reported
# Rows that ended leave the cache once fewer than this fraction of its rows are still decoding; until then they ride
# along (their logits unread). A compaction copies the whole cache, which costs more than a few rows of a step: on the
# tiny model, 512 rows ending gradually (mean length 24 of 32), compacting at every shrink took 1.09 s of CPU, at 0.9
# 0.92 s, at 0.5 1.05 s (benchmarks/decode_speed.py's model, one thread of an AMD EPYC).
COMPACT_BELOW = 0.9


@dataclass
class Samples:
    """Prompts and sampled responses, B = prompts × samples per prompt, P = longest prompt, T = longest response."""

    query: torch.Tensor  # (B, P) long, left-padded with pad id
    query_mask: torch.Tensor  # (B, P) 1 on prompt tokens
    response: torch.Tensor  # (B, T) long, right-padded with pad id after EOS / at truncation
    response_mask: torch.Tensor  # (B, T) float, 1 on response tokens up to and including EOS
    ended: torch.Tensor  # (B,) bool, the response emitted EOS within max_new_tokens
    prompt_index: torch.Tensor  # (B,) long, which prompt each row came from
    # (B, T, V) log π(·|s_t) at the sampling temperature, from the sampling passes themselves; kept on request only
    # (``sample(keep_logprobs=True)``), so a consumer that needs the full distribution skips a second forward
    logprobs: torch.Tensor | None = None
    # (B, T) float, 0 on padding: log π(y_t|s_t) of each sampled token and the exact entropy of π(·|s_t), both at the
    # sampling temperature and from the sampling passes; on request (``sample(keep_token_stats=True)``), for a
    # consumer that needs no more of the distribution than these (PPO's π_old)
    token_logprobs: torch.Tensor | None = None
    token_entropy: torch.Tensor | None = None

    @property
    def sequences(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.query, self.response], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.query_mask, self.response_mask.to(self.query_mask.dtype)], dim=1)

    def lengths(self) -> torch.Tensor:  # (B,) response tokens incl. EOS
        return self.response_mask.sum(-1)

    def subset(self, idx: torch.Tensor) -> Samples:
        return Samples(
            *(
                getattr(self, f)[idx]
                for f in ("query", "query_mask", "response", "response_mask", "ended", "prompt_index")
            ),
            **{
                f: None if getattr(self, f) is None else getattr(self, f)[idx]
                for f in ("logprobs", "token_logprobs", "token_entropy")
            },
        )


def encode_prompts(tok, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask, so every row's next token is at the same column."""
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(i) for i in ids)
    query = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        if row:
            query[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
    return query.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: the first real token is position 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def uniforms(
    rows: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One step's uniforms (rows, 1), one per row of the whole batch: both loops draw these for every row, live or
    not, so the generator's stream (and a seed's samples) does not depend on which loop ran."""
    return torch.rand(rows, 1, generator=generator, device=device, dtype=dtype)


def invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds ``u`` (rows, 1) in [0, 1), per row of the categorical ``probs`` (rows, V).
    The uniform is scaled by the row's total, so rounding in the cumulative sum can never select past the last token."""
    cdf = probs.cumsum(-1)
    return (
        torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    )


def token_stats(logp: torch.Tensor, probs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of one step's log-distribution ``logp`` (rows, V), ``probs`` its exp: the log-probability of the drawn
    ``tokens`` (rows,) and the exact entropy −Σ_v p_v log p_v, (rows,) each. A token of log-probability −inf (p = 0)
    makes p·log p NaN: ``nansum`` counts it as the 0 it is in the limit."""
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(probs * logp).nansum(-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from the categorical ``probs`` (B, V) by inverting its CDF at a uniform draw: exact, and on CPU
    a fifth of ``torch.multinomial``'s cost (which draws exponentials over the whole vocabulary)."""
    return invert_cdf(probs, uniforms(probs.shape[0], generator, probs.device, probs.dtype))


class Keep(NamedTuple):
    """What a decode loop keeps besides the tokens (see ``sample``)."""

    logprobs: bool = False
    token_stats: bool = False


class Decoded(NamedTuple):
    """What a decode loop returns, T = steps taken: response (B, T) and its mask (B, T); what ``Keep`` asked for
    (None otherwise): log-distributions (B, T, V), sampled tokens' log-probabilities and entropies (B, T)."""

    response: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor | None
    token_logprobs: torch.Tensor | None
    token_entropy: torch.Tensor | None

    @classmethod
    def stack(cls, tokens: list, masks: list, logprobs: list, token_logprobs: list, token_entropy: list) -> Decoded:
        """From per-step lists, each (B, ...); an empty list (not kept) gives None."""
        return cls(
            *(torch.stack(x, 1) if x else None for x in (tokens, masks, logprobs, token_logprobs, token_entropy))
        )


@torch.no_grad()
def sample(
    model,
    tok,
    prompts: list[str],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    keep_logprobs: bool = False,
    keep_token_stats: bool = False,
) -> Samples:
    """Draw ``samples_per_prompt`` responses per prompt from ``model`` at ``temperature`` (pure sampling: no
    top-k/top-p, as the paper's evaluation), stopping each row at EOS, all rows at ``max_new_tokens``.
    ``keep_logprobs``: also return every step's full log-distribution (``Samples.logprobs``, B·T·V floats; a row's
    steps after its EOS hold zeros, outside its response mask). ``keep_token_stats``: also return each sampled
    token's log-probability and each step's entropy (``Samples.token_logprobs``, ``Samples.token_entropy``, B·T
    floats each, 0 outside the response mask). Neither changes the draws."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    query, qmask = encode_prompts(tok, prompts, device)
    query = query.repeat_interleave(samples_per_prompt, 0)
    qmask = qmask.repeat_interleave(samples_per_prompt, 0)
    prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(samples_per_prompt)
    step = _decode_step(model)
    loop = (
        _sample_hf_cache
        if step is None
        else functools.partial(_sample_live_rows, step=step, repeats=samples_per_prompt)
    )
    extras = Keep(keep_logprobs, keep_token_stats)
    out = loop(model, query, qmask, max_new_tokens, temperature, generator, extras, tok.eos_token_id, tok.pad_token_id)
    ended = ((out.response == tok.eos_token_id) & (out.response_mask > 0)).any(-1)
    if was_training:
        model.train()
    return Samples(
        query,
        qmask,
        out.response,
        out.response_mask,
        ended,
        prompt_index,
        logprobs=out.logprobs,
        token_logprobs=out.token_logprobs,
        token_entropy=out.token_entropy,
    )


def _decode_step(model) -> Step | None:
    """Our decode step for ``model``'s family, or None (and one log line per model type per process) for the fallback."""
    step, why = step_for(model)
    kind = getattr(model.config, "model_type", None)
    if step is None and kind not in _FALLBACK_LOGGED:
        _FALLBACK_LOGGED.add(kind)
        log.info("sampling %s with transformers' cached forward, not the live-row decode loop: %s", kind, why)
    return step


def _prefill(model, query: torch.Tensor, qmask: torch.Tensor):
    """transformers' forward over the left-padded prompts: its KV cache and the first response token's logits (B, V).
    transformers 5 names the KV cache `cache` (argument and output); logits_to_keep=1 skips the prompt's logits."""
    out = model(input_ids=query, attention_mask=qmask, position_ids=positions(qmask), use_cache=True, logits_to_keep=1)
    return out.cache, out.logits[:, -1]


def _sample_live_rows(
    model, query, qmask, max_new_tokens, temperature, generator, extras: Keep, eos, pad, step: Step, repeats: int = 1
) -> Decoded:
    """The decode loop over the rows still decoding: rows that emitted EOS leave the batch and the cache (together,
    once a tenth of the rows have ended: ``COMPACT_BELOW``). ``repeats``: the rows are blocks of that many copies of
    one prompt (``sample``'s layout); each block's prompt is prefilled once and its cache copied to the copies."""
    B, device = query.shape[0], query.device
    first = torch.arange(0, B, repeats, device=device)
    prefill, logits = _prefill(model, query[first], qmask[first])
    cache = DecodeCache.from_prefill(prefill, qmask[first], max_new_tokens)
    del prefill
    if repeats > 1:
        copies = torch.arange(len(first), device=device).repeat_interleave(repeats)
        cache.keep(copies)
        logits = logits[copies]
    rows = torch.arange(B, device=device)  # the batch row of each cache row
    going = torch.ones(B, dtype=torch.bool, device=device)  # (cache rows,) not ended yet
    pos = qmask.sum(-1)  # (cache rows,) position id of the token each row emits next
    tokens, masks, logprobs, token_logprobs, token_entropy = [], [], [], [], []
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (cache rows, V)
        u = uniforms(B, generator, device)[rows]  # every row's uniform is drawn, as _sample_hf_cache does
        probs = logp.exp()
        nxt = invert_cdf(probs, u)
        live = rows[going]
        tokens.append(torch.full((B,), pad, dtype=torch.long, device=device).index_put_((live,), nxt[going]))
        masks.append(torch.zeros(B, device=device).index_fill_(0, live, 1.0))
        if extras.logprobs:
            logprobs.append(logp.new_zeros(B, logp.shape[-1]).index_copy_(0, live, logp[going]))
        if extras.token_stats:  # over the cache rows (ended ones included, cheaper than selecting first), then placed
            for kept, x in zip((token_logprobs, token_entropy), token_stats(logp, probs, nxt)):
                kept.append(x.new_zeros(B).index_copy_(0, live, x[going]))
        going = going & (nxt != eos)
        n_going = int(going.sum())
        if t == max_new_tokens - 1 or n_going == 0:
            break
        if n_going < COMPACT_BELOW * len(rows):
            keep = going.nonzero().squeeze(-1)
            rows, going, nxt, pos = rows[keep], going[keep], nxt[keep], pos[keep]
            cache.keep(keep)
        logits = step(model, cache, nxt, pos)
        cache.advance()
        pos = pos + 1
    return Decoded.stack(tokens, masks, logprobs, token_logprobs, token_entropy)


def _sample_hf_cache(model, query, qmask, max_new_tokens, temperature, generator, extras: Keep, eos, pad) -> Decoded:
    """The decode loop on transformers' own cached forward, for every family: all B rows every step (a finished row
    feeds pad, masked out) until every row has ended. The fallback of ``sample``, and the reference its tests hold
    ``_sample_live_rows`` to. Returns what ``_sample_live_rows`` returns."""
    past, logits = _prefill(model, query, qmask)
    B = query.shape[0]
    attn = qmask
    next_pos = qmask.sum(-1, keepdim=True)  # (B, 1) position of the first response token
    done = torch.zeros(B, dtype=torch.bool, device=query.device)
    tokens, masks, logprobs, token_logprobs, token_entropy = [], [], [], [], []
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        if extras.logprobs:
            logprobs.append(logp)
        probs = logp.exp()
        nxt = draw(probs, generator)
        alive = ~done
        tokens.append(torch.where(alive, nxt, torch.full_like(nxt, pad)))
        masks.append(alive.float())
        if extras.token_stats:
            for kept, x in zip((token_logprobs, token_entropy), token_stats(logp, probs, nxt)):
                kept.append(torch.where(alive, x, torch.zeros_like(x)))
        done = done | (nxt == eos)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, alive.long().unsqueeze(-1)], dim=1)
        out = model(
            input_ids=tokens[-1].unsqueeze(-1), attention_mask=attn, position_ids=next_pos, cache=past, use_cache=True
        )
        past, logits = out.cache, out.logits[:, -1]
        next_pos = next_pos + 1
    return Decoded.stack(tokens, masks, logprobs, token_logprobs, token_entropy)


def response_logits(model, s: Samples, temperature: float = 1.0) -> torch.Tensor:
    """Logits at the positions that predict each response token, divided by the sampling temperature: (B, T, V).

    The backbone runs over prompt + response; the LM head only over the T positions P-1 .. P+T-2 (position P-1+t
    predicts response token t). Slicing the (B, ·, hidden) states rather than the (B, ·, V) logits keeps the head
    off the prompt and keeps the slice's backward small.
    """
    attn = s.attention_mask
    P, T = s.query.shape[1], s.response.shape[1]
    backbone = getattr(model, model.base_model_prefix)  # GPT-2: .transformer, Pythia: .gpt_neox, Llama: .model
    hidden = backbone(input_ids=s.sequences, attention_mask=attn, position_ids=positions(attn)).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, P - 1 : P - 1 + T]).float()
    return logits / temperature if temperature != 1.0 else logits


def response_texts(tok, s: Samples) -> list[str]:
    """Decoded responses (EOS and padding dropped)."""
    out = []
    for row, m in zip(s.response.tolist(), s.response_mask.tolist()):
        ids = [t for t, keep in zip(row, m) if keep and t != tok.eos_token_id]
        out.append(tok.decode(ids))
    return out
