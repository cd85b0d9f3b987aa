"""TRL's fused LM head, computed densely where the logits are small.

TRL 1.16's SFT and DPO trainers patch the model so that ``model(..., labels=..., fused_lm_head=True)`` returns
per-token log-probs (``trl.trainer.utils.add_fused_lm_head``). Its kernel exists so that a 100k-token vocabulary never
materialises a (tokens, vocab) logits tensor: a custom autograd function that, off Triton devices, scores *every*
position (prompt and padding too) and computes the projection again in its backward. On the embedded task's
1,024-token vocabulary the logits of a micro-batch are a few MB, and that kernel took 29% of a DPO step (profiled,
AMD EPYC, 1 thread).

:func:`use_dense_lm_head` keeps TRL's contract (the same :class:`~trl.trainer.utils.FusedCausalLMOutput`: log-probs,
entropy, mean logits, top-1 flags and ``log(Σ p²)``, zero where the label is -100, and the same loss) but projects
only the positions that carry a label, in one product, and lets autograd differentiate ``log_softmax``: the same
numbers to float rounding. The backbone runs packed (``harness.lm.packing.pack_rows``: right-padded rows laid end to
end, positions restarting per row, a block-causal mask) for the families that pack, so padding costs nothing either.
The metric fields (entropy, mean logits, top-1, ``log Σ p²``) carry no gradient, as TRL's trainers read them only
detached. A call whose logits would exceed :data:`DENSE_LIMIT` elements (a large
vocabulary, a long batch), or a model whose head scales or caps its logits, goes to TRL's kernel as before.
"""

from __future__ import annotations

import types

import torch

from harness.lm import packing

# Above this many logits (fp32: 4 bytes each, and autograd keeps about three such tensors) TRL's chunked kernel runs.
DENSE_LIMIT = 1 << 25


def _plain_head(model) -> bool:
    """True when the model's logits are the head's projection and nothing else (no softcap, no scale)."""
    text = model.config.get_text_config()
    return not any(
        getattr(text, name, None) not in (None, 1, 1.0)
        for name in (
            "final_logit_softcapping",
            "logit_scale",
            "output_multiplier",
            "lm_head_multiplier",
            "logits_scaling",
        )
    )


FIELDS = ("entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def dense_token_stats(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, fields: tuple[str, ...] = FIELDS
) -> dict[str, torch.Tensor]:
    """Per-token fields of the next-token distributions ``softmax(head(hidden))`` at labelled positions.

    ``hidden``: (n, d) states of the positions whose next-token label is ``labels`` (n,). Returns (n,) tensors:
    ``log_probs`` (differentiable) and, without gradient, those of ``fields`` (a subset of :data:`FIELDS`; each is
    another pass over the (n, vocab) logits, so a trainer asks only for what it reads).
    """
    logits = head(hidden).float()
    logp = torch.log_softmax(logits, dim=-1)
    out = {"log_probs": logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)}
    with torch.no_grad():
        lp = logp.detach()
        if "entropy" in fields:
            out["entropy"] = -(lp.exp() * lp).sum(-1)
        if "mean_logits" in fields:
            out["mean_logits"] = logits.detach().mean(-1)
        if "is_top1" in fields:
            out["is_top1"] = lp.argmax(-1) == labels
        if "log_sum_sq_probs" in fields:
            out["log_sum_sq_probs"] = torch.logsumexp(2 * lp, dim=-1)
    return out


def labelled_states(model, args: tuple, kwargs: dict, mask: torch.Tensor) -> torch.Tensor:
    """The backbone's states at the positions whose next token carries a label (``mask``: (B, L − 1), row-major),
    (n, hidden). Right-padded rows of a packed family run packed (``harness.lm.packing``: the real tokens only);
    anything else (other arguments, left padding, labels past a row's end) runs as the batch is."""
    layout = None if args else packing.rows_layout(model, **kwargs)
    if layout is not None and not bool((mask & ~layout.response_mask).any()):
        return packing.hidden_states(model, layout)[layout.predictors[mask[layout.response_mask]]]
    states = model.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state
    return states[:, :-1][mask]


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(input_ids[b, t + 1] | input_ids[b, ≤ t]) where ``mask`` (B, L − 1) is set, 0 elsewhere: the rows run
    packed where they can (:func:`labelled_states`) and the LM head at the masked positions only. Differentiable."""
    labels = input_ids[:, 1:][mask]
    logp = dense_token_stats(
        labelled_states(model, (), {"input_ids": input_ids, "attention_mask": attention_mask}, mask),
        model.get_output_embeddings(),
        labels,
        (),
    )["log_probs"]
    return packing.to_grid(logp, mask)


def use_dense_lm_head(model, fields: tuple[str, ...] = FIELDS) -> bool:
    """Route ``model``'s ``fused_lm_head=True`` calls (TRL's patched forward, already installed) through
    :func:`dense_token_stats` when the head is plain; calls over :data:`DENSE_LIMIT` logits keep TRL's kernel.
    ``fields``: the metric fields to fill (the trainer's own choice when it patched the model); the others are None.
    Returns whether it was installed (a model that TRL did not patch, or whose head scales its logits, is left alone).
    """
    from trl.trainer.utils import FusedCausalLMOutput

    if "forward" not in vars(model) or not _plain_head(model):  # TRL patches the instance, not the class
        return False
    trl_forward = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        dense = (
            fused_lm_head
            and labels is not None
            and shift_labels is None  # pre-shifted labels (context parallelism) stay with TRL's kernel
            and not kwargs.get("output_router_logits")  # so do MoE models' auxiliary losses
        )
        mask = labels[:, 1:] != -100 if dense else None  # the state at t predicts the token at t+1
        if not dense or int(mask.sum()) * head.weight.shape[0] > DENSE_LIMIT:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        stats = dense_token_stats(labelled_states(self, args, kwargs, mask), head, labels[:, 1:][mask], fields)
        # to_grid keeps an all-masked micro-batch connected to the graph (a zero loss that still backpropagates)
        per_token = {k: packing.to_grid(v, mask) for k, v in stats.items()}
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-per_token["log_probs"].sum() / count, label_mask=mask, **per_token)

    model.forward = types.MethodType(forward, model)
    return True


class DenseLMHead:
    """Trainer mixin: after TRL's trainer has patched its model with the fused head, :func:`use_dense_lm_head`.

    ``lm_head_fields``: the metric fields the trainer reads (TRL 1.16's SFT trainer: entropy and top-1; its DPO trainer
    sets its own); a reference model needs log-probs only."""

    lm_head_fields: tuple[str, ...] = ("entropy", "is_top1")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_dense_lm_head(self.model, self.lm_head_fields)
        if getattr(self, "ref_model", None) is not None:
            use_dense_lm_head(self.ref_model, ())
