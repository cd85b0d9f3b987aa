"""KL between the policy and the reference along sampled responses: the x-axis of the frontier.

Pure tensor functions. Sequence KL = Σ_t KL(π_θ(·|s_t) ‖ π_ref(·|s_t)) over the response tokens t of a sample,
computed exactly over the vocabulary at every visited state s_t; its expectation over samples y ~ π_θ equals
KL(π_θ(·|x) ‖ π_ref(·|x)) over whole sequences (chain rule of KL). The sampled estimate Σ_t log π_θ(y_t)/π_ref(y_t)
has the same expectation and much higher variance.
"""

from __future__ import annotations

import torch


def token_kl_exact(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(policy_logits) ‖ softmax(ref_logits)) per position.

    policy_logits, ref_logits: (B, T, V) -> (B, T)
    """
    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    # A KL is >= 0; between two computations of the same model (a KV-cached sampling pass and a full forward) float
    # rounding alone can leave it at -1e-8, which would read as a KL below the reference's own.
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)


def sequence_kl_exact(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t over response tokens of the exact per-state KL. (B, T, V), (B, T, V), mask (B, T) -> (B,)"""
    return (token_kl_exact(policy_logits, ref_logits) * mask).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] per position. logits (B, T, V), tokens (B, T) long -> (B, T)"""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sequence_kl_sample(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log π_θ(y_t|s_t) − log π_ref(y_t|s_t) over response tokens. (B, T) x3 -> (B,)"""
    return ((policy_logprobs - ref_logprobs) * mask).sum(-1)
