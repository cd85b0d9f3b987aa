"""Packed sequences: the scoring and training passes over sampled episodes run on their real tokens only.

``Samples`` hold each episode as a left-padded prompt and a right-padded response, a (B, P + T) batch. Responses are
short on average (~10 of up to 32 tokens), so a forward over that batch spends about two thirds of its work on
padding. Here each episode's real tokens (prompt, then response) are laid end to end into as few rows of width W as
first-fit decreasing finds, with

* position ids that restart at 0 for every sequence (learned positions for GPT-2, rotary angles for llama: the same
  as the sequence has alone);
* a (rows, 1, W, W) boolean attention mask, causal within each sequence and False across sequences. transformers
  passes a 4D mask through unchanged (``masking_utils._preprocess_mask_arguments``); a 2D mask would let the
  sequences of one row attend to each other, and with no mask transformers infers the sequences from the restarting
  positions only while no cache is in use (silently plain causal with one). Unused tail positions attend to
  themselves only: a mask row with nothing True makes SDPA's softmax 0/0 = NaN, which would reach the gradients.

A ``Layout`` says where each episode's tokens sit in the batch the backbone runs over and which flat positions to
read: the position that predicts each response token, and each sequence's last token. The heads (LM head, scalar
head) then run on those positions only, and ``to_grid`` scatters the per-token results back into the (B, T) layout
every caller uses. Model types this is not known to be right for get the padded layout (``pad``: the batch as it is,
with its 2D mask) through the same readers, and one log line per model type.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from harness.lm.sampling import Samples, positions

log = logging.getLogger("harness.packing")

# Model types whose attention takes the 4D mask as given and whose positions come only from ``position_ids``, so that
# a packed forward equals each sequence run alone (tests/lm/test_packing.py checks both families).
PACKED_MODEL_TYPES = frozenset({"gpt2", "llama"})
# Attention kernels that read a dense 4D mask (flash-attention kernels take none). Eager adds the mask to the scores.
PACKED_ATTENTION = frozenset({"sdpa", "eager"})
_fallback_logged: set[str] = set()  # model types already named in the fallback's log line (once per process)


@dataclass
class Layout:
    """The batch the backbone runs over and where to read it. R rows of width W; B episodes, T response columns;
    N = real response tokens. Flat indices count over the (R·W) positions, row-major."""

    input_ids: torch.Tensor  # (R, W) long
    attention_mask: torch.Tensor  # (R, 1, W, W) bool when packed; (R, W) long (the padded batch's own) otherwise
    position_ids: torch.Tensor  # (R, W) long, 0 at each sequence's first token
    predictors: torch.Tensor  # (N,) flat index of the position that predicts each real response token, in the
    #                           row-major order of response_mask (episode b, then step t)
    last: torch.Tensor  # (B,) flat index of each episode's last real token (the EOS of a finished response)
    response_mask: torch.Tensor  # (B, T) bool, the real response tokens

    @property
    def packed(self) -> bool:
        return self.attention_mask.dim() == 4


def first_fit_decreasing(lengths: list[int], width: int) -> list[tuple[int, int]]:
    """(row, start column) of each item when items of ``lengths`` are placed, longest first (ties in index order),
    into the first row with room left, rows of ``width``. Deterministic, and at most 11/9 of the fewest rows + 6/9
    (Dósa 2007)."""
    room: list[int] = []
    place: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[i] <= free), len(room))
        if row == len(room):
            room.append(width)
        place[i] = (row, width - room[row])
        room[row] -= lengths[i]
    return place


def pack(s: Samples, width: int | None = None) -> Layout:
    """Each episode's real tokens (prompt where ``query_mask``, then response where ``response_mask``) end to end in
    rows of ``width`` (default: the longest episode). Every episode needs at least one prompt token: the position
    that predicts its first response token."""
    attn = s.attention_mask.bool()  # (B, P + T)
    lengths = attn.sum(-1)  # (B,)
    if bool((s.query_mask.sum(-1) == 0).any()):
        raise ValueError("pack: an episode without prompt tokens has no position to predict its first response token")
    W = int(lengths.max()) if width is None else width
    place = torch.tensor(first_fit_decreasing(lengths.tolist(), W), dtype=torch.long).reshape(-1, 2)
    R = int(place[:, 0].max()) + 1 if len(place) else 0
    device = s.query.device
    row, start = place[:, 0].to(device), place[:, 1].to(device)

    # one entry per real token, in the row-major order of ``attn``: its episode and its place within it
    episode = torch.arange(len(lengths), device=device).repeat_interleave(lengths)
    ends = lengths.cumsum(0)
    k = torch.arange(int(ends[-1]) if len(ends) else 0, device=device) - (ends - lengths).repeat_interleave(lengths)
    dest = row[episode] * W + start[episode] + k  # (tokens,) flat packed position

    input_ids = torch.zeros(R * W, dtype=torch.long, device=device)
    input_ids[dest] = s.sequences[attn]
    position_ids = torch.zeros(R * W, dtype=torch.long, device=device)
    position_ids[dest] = k
    # Which sequence each position holds; a tail position gets an id of its own (negative), so it sees only itself.
    segment = -1 - torch.arange(R * W, device=device)
    segment[dest] = episode
    segment = segment.view(R, W)
    causal = torch.ones(W, W, dtype=torch.bool, device=device).tril()
    mask = (segment.unsqueeze(-1) == segment.unsqueeze(-2)) & causal  # (R, W, W): query i, key j

    is_response = torch.cat([torch.zeros_like(s.query_mask, dtype=torch.bool), s.response_mask.bool()], 1)[attn]
    return Layout(
        input_ids.view(R, W),
        mask.unsqueeze(1),
        position_ids.view(R, W),
        predictors=dest[is_response] - 1,  # the token just before, in the same sequence (a prompt token at worst)
        last=dest[ends - 1],
        response_mask=s.response_mask.bool(),
    )


def pad(s: Samples) -> Layout:
    """The padded batch as it is, (B, P + T) with its 2D mask: position P − 1 + t predicts response token t, and the
    last attended column is each sequence's last token."""
    attn = s.attention_mask
    B, P = s.query.shape
    width = attn.shape[1]
    rmask = s.response_mask.bool()
    b, t = rmask.nonzero(as_tuple=True)
    columns = torch.arange(width, device=attn.device)
    last = (columns * attn.bool()).argmax(-1)  # the rightmost attended column of each row
    base = torch.arange(B, device=attn.device) * width
    return Layout(s.sequences, attn, positions(attn), base[b] + P - 1 + t, base + last, rmask)


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Layout | None:
    """Right-padded rows (B, L), the batches TRL's collators and our tokenizers make, packed as :func:`pack` packs
    episodes: row b's first token stands as the "prompt", its others as the "response", so ``predictors`` are the
    positions that predict tokens 1..len−1 of each row (row-major; ``response_mask`` (B, L − 1) places them) and
    ``last`` each row's last token. None when a row is empty or its mask is not a prefix (left padding, holes): the
    caller then runs the batch as it is."""
    mask = attention_mask.bool()
    lengths = mask.sum(-1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    if bool((lengths == 0).any()) or not torch.equal(mask, columns < lengths.unsqueeze(-1)):
        return None
    rows = torch.arange(mask.shape[0], device=mask.device)
    ones = torch.ones_like(attention_mask[:, :1])
    return pack(
        Samples(input_ids[:, :1], ones, input_ids[:, 1:], attention_mask[:, 1:].float(), ones[:, 0].bool(), rows)
    )


def rows_layout(model, input_ids, attention_mask, **others) -> Layout | None:
    """:func:`pack_rows` for a forward call of ``model`` with ``input_ids``, ``attention_mask`` and ``others`` (the
    call's other arguments): None unless ``model`` is a packed family, no other argument is set (``use_cache``
    aside: a packed pass keeps none) and the rows are right-padded. The callers run the batch as it is on None."""
    if input_ids is None or attention_mask is None or not packable(model):
        return None
    if {k for k, v in others.items() if v is not None} - {"use_cache"}:
        return None
    return pack_rows(input_ids, attention_mask)


def packable(model) -> bool:
    config = model.config
    return config.model_type in PACKED_MODEL_TYPES and config._attn_implementation in PACKED_ATTENTION


def layout_for(model, s: Samples) -> Layout:
    """``pack(s)`` where ``model`` is known to run packed sequences right, ``pad(s)`` otherwise (logged once per
    model type and attention kernel)."""
    if packable(model):
        return pack(s)
    what = f"{model.config.model_type} ({model.config._attn_implementation} attention)"
    if what not in _fallback_logged:
        _fallback_logged.add(what)
        log.info("packing: %s is not a packed family (%s); its passes run padded", what, sorted(PACKED_MODEL_TYPES))
    return pad(s)


def hidden_states(model, layout: Layout) -> torch.Tensor:
    """The backbone's last hidden states over ``layout``, flat: (R·W, hidden). No KV cache (nothing decodes after)."""
    mask = layout.attention_mask
    if layout.packed and model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
    backbone = getattr(model, model.base_model_prefix)  # GPT-2: .transformer, Llama: .model, Pythia: .gpt_neox
    out = backbone(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids, use_cache=False)
    return out.last_hidden_state.flatten(0, 1)


def response_states(model, s: Samples) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at the positions that predict the real response tokens, (N, hidden), and ``s``'s response mask
    (B, T) bool that places them (``to_grid``)."""
    layout = layout_for(model, s)
    return hidden_states(model, layout)[layout.predictors], layout.response_mask


def last_states(model, s: Samples) -> torch.Tensor:
    """Hidden states at each episode's last real token: (B, hidden)."""
    layout = layout_for(model, s)
    return hidden_states(model, layout)[layout.last]


def to_grid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token values (N, ...) into the (B, T, ...) layout at the True entries of ``mask`` (B, T), in its row-major
    order; 0 elsewhere. Differentiable in ``x``."""
    B, T = mask.shape
    where = mask.flatten().nonzero().squeeze(-1)
    return x.new_zeros((B * T, *x.shape[1:])).index_copy(0, where, x).view(B, T, *x.shape[1:])


def response_token_logits(model, s: Samples, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's logits at the positions that predict each real response token, divided by the sampling temperature:
    (N, V), and the (B, T) bool mask that places them (``to_grid``). The packed counterpart of
    ``harness.lm.sampling.response_logits``, with the head over the N real tokens only, not the B·T grid."""
    states, mask = response_states(model, s)
    logits = model.get_output_embeddings()(states).float()
    return (logits / temperature if temperature != 1.0 else logits), mask
