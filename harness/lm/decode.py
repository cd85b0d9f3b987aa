"""One decode step of GPT-2 and llama written from their own modules, over a preallocated KV cache of live rows only.

Why not the model's forward: on small models on CPU the per-step cost is overhead, not arithmetic. transformers'
DynamicCache grows by ``torch.cat`` every step (a copy of the whole cache per layer), builds a 4-D mask per step, and
keeps feeding rows that have already emitted EOS. Here the cache is allocated once at its final length, a step writes
one column, and rows that ended are dropped from the batch (``DecodeCache.keep``). The arithmetic is the model's:
each step calls the model's own embeddings, norms, projections, MLPs and head in the order its forward does, and only
the attention over the cache is ours (two batched products at the module's scale: cheaper than SDPA for one query).

A family is supported when this module can redo its forward exactly; ``unsupported`` names the first reason it
cannot (another architecture, or a config flag that changes the math and is not implemented here), and the sampler
then keeps transformers' own cached forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class DecodeCache:
    """Per layer K and V of every live row, allocated at the longest length decoding can reach (P + max_new_tokens).

    Column ``filled`` is the one the next step writes (its token's K/V). ``attend`` (rows, P + N) bool marks the
    columns a row may see: its prompt tokens (not the left padding) and the response columns up to ``filled``, all
    of them, since a live row has emitted a token at every step so far.

    A step attends over the whole allocated length with the columns not yet written masked off, rather than over the
    filled prefix: a prefix is a strided view of the cache, which the CPU attention kernel copies to contiguous memory
    first (3 ms against 1.4 ms a layer for 512 rows of the tiny model), while masked columns add exact zeros."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], attend: torch.Tensor, filled: int):
        self.keys, self.values = keys, values  # per layer (rows, kv_heads, P + N, head_dim)
        self.attend = attend  # (rows, P + N) bool
        self.filled = filled

    @classmethod
    def from_prefill(cls, prefill, qmask: torch.Tensor, max_new_tokens: int) -> DecodeCache:
        """Copy transformers' prefill cache (per layer (B, kv_heads, P, head_dim)) into tensors of length P + N, in
        the dtypes the prefill produced: under autocast those are what the projections give (bf16, or fp32 for K after
        llama's rotary embedding in fp32), so each step's writes need no cast. Unwritten columns are zeros, not
        uninitialised memory: masked scores must stay finite."""
        P = qmask.shape[1]

        def grown(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(*t.shape[:2], P + max_new_tokens, t.shape[-1])
            out[:, :, :P] = t
            return out

        keys = [grown(layer.keys) for layer in prefill.layers]
        values = [grown(layer.values) for layer in prefill.layers]
        attend = torch.zeros(qmask.shape[0], P + max_new_tokens, dtype=torch.bool, device=qmask.device)
        attend[:, :P] = qmask.bool()
        attend[:, P] = True
        return cls(keys, values, attend, P)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (rows, kv_heads, head_dim) of ``layer``; return its whole K, V (see ``mask``)."""
        self.keys[layer][:, :, self.filled] = k
        self.values[layer][:, :, self.filled] = v
        return self.keys[layer], self.values[layer]

    def mask(self) -> torch.Tensor:  # (rows, 1, 1, P + N): broadcast over heads and queries
        return self.attend[:, None, None, :]

    def advance(self) -> None:
        """The step's column is written in every layer: the next step writes (and may see) the one after it."""
        self.filled += 1
        if self.filled < self.attend.shape[1]:
            self.attend[:, self.filled] = True

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` (indices into the current rows) go on decoding: a copy of their part of the cache, so later
        steps run on fewer rows rather than carrying finished ones."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.attend = self.attend.index_select(0, rows)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per row over the cache: q (rows, heads, head_dim), k and v (rows, kv_heads, L, head_dim), mask
    (rows, 1, 1, L) bool, True where the row may attend. Returns (rows, heads · head_dim).

    Grouped-query attention without copying K/V: the heads that share a kv head (consecutive, as llama's ``repeat_kv``
    lays them out) become that kv head's queries, so all queries of a group read one K/V. With one query position per
    row nothing is causal: the mask hides the prompt's left padding and the columns not yet written."""
    rows, heads, dim = q.shape
    groups = q.view(rows, k.shape[1], heads // k.shape[1], dim)
    # Two batched products, not SDPA: for a single query per row the CPU kernel's set-up outweighs its work (measured
    # on the tiny model's shapes, 1 thread: 1.1x faster at 64 rows, 1.5-1.7x at 256-512). Every row attends to one prompt token at least, so no row is all -inf.
    # Under autocast the products stay in the cache's dtypes (autocast would cast llama's fp32 K, out of its rotary
    # embedding, to bf16) and the softmax runs in fp32.
    dtype = torch.promote_types(groups.dtype, k.dtype)
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.matmul(groups.to(dtype), k.to(dtype).transpose(-1, -2)).mul_(scale)
        probs = torch.softmax(scores.masked_fill_(~mask, float("-inf")), dim=-1, dtype=torch.float32)
        return torch.matmul(probs.to(v.dtype), v).reshape(rows, heads * dim)


def gpt2_step(model, cache: DecodeCache, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward for one token per row (``tokens``, ``pos``: (rows,)) → next-token logits (rows, V), as
    GPT2LMHeadModel computes them in eval mode (dropout off): learned positions, pre-norm blocks, its LM head."""
    tr = model.transformer
    rows = tokens.shape[0]
    h = tr.wte(tokens) + tr.wpe(pos)
    for i, block in enumerate(tr.h):
        a = block.attn
        q, k, v = a.c_attn(block.ln_1(h)).split(a.split_size, dim=-1)
        heads = (rows, a.num_heads, a.head_dim)
        keys, values = cache.write(i, k.view(heads), v.view(heads))
        # a.scaling folds scale_attn_weights and scale_attn_by_inverse_layer_idx, as transformers passes it on
        h = h + a.c_proj(attend(q.view(heads), keys, values, cache.mask(), a.scaling))
        h = h + block.mlp(block.ln_2(h))
    return model.lm_head(tr.ln_f(h))


def llama_step(model, cache: DecodeCache, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Llama's forward for one token per row → next-token logits (rows, V): RMS-norm pre-norm blocks, rotary positions
    from the model's own ``rotary_emb`` (so its rope scaling applies) at each row's position id, grouped-query
    attention, gated MLP. Biases and head_dim come with the modules."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    m = model.model
    rows = tokens.shape[0]
    h = m.embed_tokens(tokens)
    cos, sin = m.rotary_emb(h, pos[:, None])  # (rows, 1, head_dim), in h's dtype as the model's forward has them
    for i, layer in enumerate(m.layers[: model.config.num_hidden_layers]):
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q = a.q_proj(x).view(rows, -1, 1, a.head_dim)  # (rows, heads, 1, head_dim): the layout rotary expects
        k = a.k_proj(x).view(rows, -1, 1, a.head_dim)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = cache.write(i, k[:, :, 0], a.v_proj(x).view(rows, -1, a.head_dim))
        h = h + a.o_proj(attend(q[:, :, 0], keys, values, cache.mask(), a.scaling))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(m.norm(h))


Step = Callable[[torch.nn.Module, DecodeCache, torch.Tensor, torch.Tensor], torch.Tensor]


def _gpt2_gaps(model) -> str | None:
    from transformers import GPT2LMHeadModel

    c = model.config
    if not isinstance(model, GPT2LMHeadModel):
        return f"{type(model).__name__} is not a GPT2LMHeadModel"
    if c.add_cross_attention:
        return "add_cross_attention is set (cross-attention blocks are not implemented here)"
    if c.reorder_and_upcast_attn:
        return "reorder_and_upcast_attn is set (the fp32 reordered attention is not implemented here)"
    return None


def _llama_gaps(model) -> str | None:
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        return f"{type(model).__name__} is not a LlamaForCausalLM"
    return None


# model_type → (the reason this module cannot redo that model's forward, or None; the step)
FAMILIES: dict[str, tuple[Callable[[torch.nn.Module], str | None], Step]] = {
    "gpt2": (_gpt2_gaps, gpt2_step),
    "llama": (_llama_gaps, llama_step),
}


def step_for(model) -> tuple[Step | None, str | None]:
    """The decode step for ``model``, or None and why not (a line for the log)."""
    kind = getattr(model.config, "model_type", None)
    if kind not in FAMILIES:
        return None, f"model_type {kind!r} has no decode step here (only {', '.join(sorted(FAMILIES))})"
    gaps, step = FAMILIES[kind]
    why = gaps(model)
    return (None, why) if why else (step, None)
