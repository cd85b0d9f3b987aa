"""All of the project's loss and advantage math, as small pure functions.

Tensors in, tensors out: no I/O, no Hydra, no W&B. Every other module (PPO, DPO, baselines, the evaluator)
imports its math from here, and ``tests/pipelines/test_losses.py`` checks it against values worked out by hand.

Shape conventions
-----------------
B = batch size, T = number of *response* tokens (the prompt is not included), V = vocabulary size.

* Per-token response tensors are ``(B, T)``.
* ``mask`` is ``(B, T)``, bool or float: 1 on real response tokens (up to and including EOS), 0 on the padding
  after EOS or truncation. Responses are right-padded, so a row's real tokens are a prefix of the row.
* Masked statistics (means, variances, whitening) use only the entries where ``mask`` is 1, and outputs that
  are per-token are 0 on padding.

References
----------
* PPO clipped surrogate: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7.
* GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
  eqs. 11-16.
* RLHF specifics (per-token k1 KL in the reward, score on the last token, whitening, clipped value loss):
  Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
* Adaptive KL controller: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2.
* KL estimators k1/k2/k3: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html
* DPO: Rafailov et al. 2023, eq. 7. IPO: Azar et al. 2023, eq. 17. Conservative DPO: E. Mitchell 2023,
  "A note on DPO with noisy preferences". Robust DPO: Chowdhury et al. 2024, eq. 8.
* Unlikelihood: Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training", eq. 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Declared once, in the light schemas module (no torch) that validates the configs: kl_penalty's estimators (only k1
# may be a reward) and dpo_family_loss's loss types.
from pipelines.schemas import DPO_LOSS_TYPES, KL_ESTIMATORS

# Sums a 0-d tensor over every shard of the data: the identity for a batch in one process,
# ``harness.lm.distributed.all_reduce_sum`` for a batch split across processes (the batch statistics stay the batch's).
Total = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "KL_ESTIMATORS",
    "DPO_LOSS_TYPES",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl_penalty",
    "last_token_index",
    "per_token_rewards",
    "gae_advantages",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "FixedKLController",
    "AdaptiveKLController",
    "reference_mix_weight",
    "mix_parameters_",
    "dpo_family_loss",
    "log1mexp",
    "unlikelihood_loss",
    "sequence_logps",
]


# Added to a variance before taking its inverse square root, so that whitening a constant batch gives 0, not NaN.
_WHITEN_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# Masked statistics
# ----------------------------------------------------------------------------------------------------------------


def _as_weights(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask as floats of ``like``'s dtype (bool masks become 0./1.)."""
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the entries where ``mask`` is non-zero.

    Padding is selected out with ``torch.where`` rather than multiplied by 0, so a NaN or ±inf on a padded
    position (e.g. the log-prob of a pad token) cannot leak into the result.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``; bool or float.
        dim: dimension to reduce, or None for all of them.
    Returns:
        0-d tensor if ``dim`` is None, else ``x``'s shape without ``dim``.
    """
    w = _as_weights(mask, x)
    xw = torch.where(w != 0, x * w, torch.zeros_like(x))
    return xw.sum() if dim is None else xw.sum(dim=dim)


def _itself(t: torch.Tensor) -> torch.Tensor:
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, total: Total = _itself) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``; bool or float.
        dim: dimension to average over, or None for all entries.
        total: sums a 0-d tensor over every shard of the data (``harness.lm.distributed.all_reduce_sum`` when the batch
            is split across processes; the identity by default); only with ``dim`` None.
    Returns:
        0-d tensor if ``dim`` is None, else ``x``'s shape without ``dim``. An empty mask (along ``dim``) gives 0.
    """
    w = _as_weights(mask, x)
    n = total(w.sum()) if dim is None else w.sum(dim=dim)
    s = total(masked_sum(x, mask)) if dim is None else masked_sum(x, mask, dim)
    # 0/1 masks have integer counts, so the clamp only matters for an empty mask, where it turns 0/0 into 0.
    return s / n.clamp(min=1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, total: Total = _itself) -> torch.Tensor:
    """Variance of ``x`` over the entries where ``mask`` is 1 (all of them pooled together).

    Var = sum_m (x - mean)^2 / n, times n / (n - 1) when ``unbiased`` (Bessel's correction), with n = sum(mask).

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``; bool or float (0/1).
        unbiased: apply Bessel's correction. With a single masked entry the correction is undefined and
            skipped: the variance of one value is returned as 0.
        total: sums a 0-d tensor over every shard of the data (see ``masked_mean``): the variance of all shards.
    Returns:
        0-d tensor.
    Raises:
        ValueError: if the mask is empty (there is nothing to take the variance of).
    """
    n = total(_as_weights(mask, x).sum())
    if n.item() == 0:
        raise ValueError("masked_var: mask is empty, so the variance is undefined")
    mean = masked_mean(x, mask, total=total)
    var = masked_mean((x - mean) ** 2, mask, total=total)
    if unbiased and n.item() > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total: Total = _itself) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its masked entries; padding stays 0.

    whitened = (x - mean) / sqrt(var + 1e-8), and with ``shift_mean=False`` the mean is added back (only the
    scale changes; Huang et al. 2024 use this for rewards, and the full whitening for advantages).

    Args:
        x: (B, T).
        mask: (B, T), bool or float.
        shift_mean: subtract the mean (True) or keep it (False).
        total: sums a 0-d tensor over every shard of the batch (see ``masked_mean``): whiten with the whole batch's
            mean and variance when the batch is split across processes.
    Returns:
        (B, T); 0 wherever ``mask`` is 0.
    """
    mean = masked_mean(x, mask, total=total)
    var = masked_var(x, mask, unbiased=True, total=total)
    whitened = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    w = _as_weights(mask, x)
    return torch.where(w != 0, whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------------------------------------------
# KL penalty and per-token rewards (RLHF)
# ----------------------------------------------------------------------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the log-probs of the *sampled* tokens (sampled from pi).

    With p = pi(y_t | s_t), q = ref(y_t | s_t) and r = q / p (Schulman, "Approximating KL Divergence"):
      * ``"k1"``: log p - log q = -log r. Unbiased, can be negative on single tokens, high variance.
        This is the term Ziegler et al. 2019 / Huang et al. 2024 put in the PPO reward.
      * ``"k3"``: (r - 1) - log r. An unbiased estimate of the KL's value, >= 0 for every token (since
        log r <= r - 1), lower variance. A diagnostic only, never a reward: a reward's gradient is the score
        function E[k ∇log pi], which is ∇KL for k1 but not for k3 (E[k3 ∇log pi] = ∇KL + E_ref[∇log pi]; verl
        PR #2953, OpenRLHF PR #1309, arXiv:2512.21852; ``tests/pipelines/test_losses.py`` checks both).

    Args:
        logprobs: (B, T) log pi of the sampled tokens.
        ref_logprobs: (B, T) log ref of the same tokens.
        estimator: one of ``KL_ESTIMATORS``.
    Returns:
        (B, T) per-token KL estimates. Padding is not masked here (see ``per_token_rewards``).
    Raises:
        ValueError: unknown ``estimator``.
    """
    log_ratio = ref_logprobs - logprobs  # log r = log q - log p
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        # expm1(log r) = r - 1, exact for small |log r| where exp(log r) - 1 would cancel.
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_penalty: unknown estimator={estimator!r}; expected one of {KL_ESTIMATORS}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask 1) response token of each row.

    Args:
        mask: (B, T), bool or float.
    Returns:
        (B,) long; -1 for a row whose mask is all 0.
    """
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask != 0, positions, torch.full_like(positions, -1)).max(dim=-1).values


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float | torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The PPO reward of RLHF: a KL penalty on every response token plus the score on the last one.

    r_t = -kl_coef * KL_t                    for every real response token t  (Ziegler et al. 2019, eq. 2;
    r_T += score                             at the last real token T          Huang et al. 2024, details 7-8)
    r_t = 0                                  on padding.

    Args:
        scores: (B,) sequence-level reward (reward model or gold scorer) of each response.
        kl: (B, T) per-token KL estimate, e.g. ``kl_penalty(..., "k1")``. Values on padding are ignored.
        kl_coef: the KL coefficient beta (float or 0-d tensor).
        mask: (B, T), bool or float.
    Returns:
        (B, T) rewards. A row with an all-zero mask gets all zeros (its score goes nowhere).
    """
    w = _as_weights(mask, kl)
    rewards = torch.where(w != 0, -kl_coef * kl, torch.zeros_like(kl))
    last = last_token_index(mask)  # (B,), -1 for empty rows, which then match no position below
    positions = torch.arange(kl.shape[-1], device=kl.device).expand_as(kl)
    at_last = positions == last.unsqueeze(-1)  # (B, T), one True per non-empty row
    return rewards + at_last.to(rewards.dtype) * scores.to(rewards.dtype).unsqueeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# GAE and the PPO losses
# ----------------------------------------------------------------------------------------------------------------


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens (Schulman et al. 2016, eqs. 11-16).

    delta_t = r_t + gamma * V_{t+1} - V_t                   (eq. 11; V_{t+1} = 0 after the last real token)
    A_t     = delta_t + gamma * lam * A_{t+1}                (eq. 16, as a backward recursion; A = 0 after the end)
    R_t     = A_t + V_t                                      (the lambda-return, the critic's target)

    The episode ends at the last real token, so the bootstrap value there is 0 (no value after EOS or after
    truncation; truncated responses are penalized through the score, Huang et al. 2024). No gradient flows
    through the result: the inputs are detached.

    Args:
        rewards: (B, T) per-token rewards, e.g. from ``per_token_rewards``.
        values: (B, T) critic values V(s_t) of the rollout.
        mask: (B, T), bool or float; right-padded.
        gamma: discount (Huang et al. 2024 use 1.0).
        lam: GAE lambda (0.95).
    Returns:
        (advantages, returns), both (B, T) and both 0 on padding.
    """
    rewards, values = rewards.detach(), values.detach()
    w = _as_weights(mask, values)
    rewards = torch.where(w != 0, rewards, torch.zeros_like(rewards))
    values = torch.where(w != 0, values, torch.zeros_like(values))
    B, T = values.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)  # V_{t+1}, 0 beyond the last token
    next_advantage = torch.zeros_like(next_value)  # A_{t+1}
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        # On padding: A_t = 0, and the "next" quantities seen by the last real token stay 0 (bootstrap 0).
        advantage = advantage * w[:, t]
        advantages[:, t] = advantage
        next_value = values[:, t] * w[:, t]
        next_advantage = advantage
    returns = (advantages + values) * w
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, as a loss to minimize (Schulman et al. 2017, eq. 7).

    ratio_t = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
    L       = masked_mean( max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps)) )
            = -masked_mean( min(ratio_t * A_t, clip(ratio_t, 1-eps, 1+eps) * A_t) )       (= -L^CLIP)

    Diagnostics (no gradient):
      * clipfrac: fraction of real tokens where the clipped term is the larger loss, i.e. where clipping is
        active and the token contributes no gradient.
      * approx_kl: masked mean of the k2 estimator 0.5 * (log pi - log pi_old)^2 of KL(pi_old || pi) on the
        tokens sampled from pi_old (Schulman's note: biased, but >= 0 and low-variance; it is what TRL's
        former PPO trainer logged, while cleanrl logs k3). Used for monitoring and early stopping only.

    Args:
        logprobs: (B, T) log-probs of the rollout tokens under the current policy (carries the gradient).
        old_logprobs: (B, T) log-probs of the same tokens under the rollout policy.
        advantages: (B, T) advantages (usually whitened).
        mask: (B, T), bool or float.
        cliprange: epsilon, e.g. 0.2.
    Returns:
        (loss, clipfrac, approx_kl), three 0-d tensors.
    """
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clipfrac, approx_kl


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's clipped squared error (Huang et al. 2024; the value clipping of OpenAI's baselines PPO2).

    V_clip = V_old + clip(V - V_old, -c, c)
    L_V    = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) )

    Args:
        values: (B, T) current critic values (carries the gradient).
        old_values: (B, T) critic values at rollout time.
        returns: (B, T) targets R_t from ``gae_advantages``.
        mask: (B, T), bool or float.
        cliprange_value: c, e.g. 0.2.
    Returns:
        (loss, clipfrac), 0-d tensors; clipfrac (no gradient) is the fraction of real tokens where the clipped
        error is the larger one.
    """
    old_values, returns = old_values.detach(), returns.detach()
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return loss, clipfrac


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Exact entropy H = -sum_v p_v log p_v of the categorical softmax(logits) over the last dimension.

    log p comes from ``log_softmax`` (logsumexp-stable); logits of -inf (masked-out tokens) have p = 0 and add 0.

    Args:
        logits: (..., V).
    Returns:
        (...), in nats.
    """
    logp = F.log_softmax(logits, dim=-1)
    p = logp.exp()
    # clamp turns -inf into the most negative finite number, so 0 * log 0 is 0 rather than NaN.
    return -(p * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(dim=-1)


def explained_variance(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, total: Total = _itself
) -> torch.Tensor:
    """1 - Var[target - pred] / Var[target] over the masked entries (1 is a perfect critic, 0 a constant one).

    Args:
        pred: (B, T) predictions, e.g. critic values.
        target: (B, T) targets, e.g. returns.
        mask: (B, T), bool or float.
        total: sums a 0-d tensor over every shard of the batch (see ``masked_mean``).
    Returns:
        0-d float tensor (no gradient); NaN when Var[target] is 0, where the ratio is undefined.
    """
    with torch.no_grad():
        var_target = masked_var(target, mask, unbiased=False, total=total)
        var_residual = masked_var(target - pred, mask, unbiased=False, total=total)
        if var_target.item() == 0:
            return torch.tensor(float("nan"), dtype=var_target.dtype, device=var_target.device)
        return 1.0 - var_residual / var_target


# ----------------------------------------------------------------------------------------------------------------
# KL controllers
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FixedKLController:
    """A constant KL coefficient beta; ``update`` does nothing."""

    kl_coef: float

    @property
    def value(self) -> float:
        return self.kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same interface as the adaptive one
        return None


class AdaptiveKLController:
    """Proportional controller driving the observed KL towards ``target`` (Ziegler et al. 2019, §2.2).

    e_t     = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_t+1 = beta_t * (1 + K_beta * e_t),  with K_beta = n_steps / horizon

    ``n_steps`` is the number of samples (or steps) since the last update, so the coefficient moves by at most
    20% per ``horizon`` samples.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0:
            raise ValueError(f"AdaptiveKLController: target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


# ----------------------------------------------------------------------------------------------------------------
# A moving reference for the KL penalty (Xu et al. 2024, "Is DPO Superior to PPO for LLM Alignment?")
# ----------------------------------------------------------------------------------------------------------------


def reference_mix_weight(mode: str, update: int, refresh_every: int, ema: float) -> float:
    """The weight α of π_θ when the penalty reference moves after update number ``update`` (1-based):
    ref <- (1 − α)·ref + α·π_θ. 0 = the reference stays.

    ``none``: always 0 (π_ref = π_SFT, frozen). ``refresh``: 1 (a copy of π_θ) after every ``refresh_every``-th
    update, else 0. ``ema``: ``ema`` after every update (an exponential moving average of the policy's parameters).
    """
    if mode == "none":
        return 0.0
    if mode == "refresh":
        return 1.0 if update % refresh_every == 0 else 0.0
    if mode == "ema":
        return float(ema)
    raise ValueError(f"reference_mix_weight: unknown mode '{mode}' (none, refresh or ema)")


@torch.no_grad()
def mix_parameters_(target: list[torch.Tensor], source: list[torch.Tensor], alpha: float) -> None:
    """In place, tensor by tensor: target <- (1 − alpha)·target + alpha·source. alpha = 1 copies exactly (no
    rounding from the interpolation), alpha = 0 leaves ``target`` untouched. Both lists pair the same shapes."""
    if len(target) != len(source):
        raise ValueError(f"mix_parameters_: {len(target)} target tensors but {len(source)} source tensors")
    if alpha == 0:
        return
    for t, s in zip(target, source):
        if t.shape != s.shape:
            raise ValueError(f"mix_parameters_: shape {tuple(t.shape)} mixed with {tuple(s.shape)}")
        if alpha == 1:
            t.copy_(s)
        else:
            t.lerp_(s.to(t.dtype), alpha)


# ----------------------------------------------------------------------------------------------------------------
# DPO family
# ----------------------------------------------------------------------------------------------------------------


def _sigmoid_loss(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    # DPO, Rafailov et al. 2023 eq. 7: -log sigma(beta * h). With eps > 0, conservative DPO (Mitchell 2023):
    # the label is flipped with probability eps, giving the cross-entropy against the soft label (1 - eps, eps).
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _ipo_loss(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:  # noqa: ARG001 - no label smoothing
    # IPO, Azar et al. 2023 eq. 17, with tau = beta: (h - 1 / (2 tau))^2.
    return (h - 1.0 / (2.0 * beta)) ** 2


def _robust_loss(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    # Robust DPO, Chowdhury et al. 2024 eq. 8: the unbiased estimate of the clean loss under a label-flip rate eps,
    # ((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 eps) with l(h) = -log sigma(beta h).
    return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)


_DPO_LOSSES = {"sigmoid": _sigmoid_loss, "ipo": _ipo_loss, "robust": _robust_loss}


def dpo_family_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses; the reference implementation TRL's ``DPOTrainer`` is tested against.

    TRL 1.16.0 conventions (read from ``trl/trainer/dpo_trainer.py``, ``DPOTrainer._compute_loss``, with the
    defaults ``f_divergence_type="reverse_kl"``, ``ld_alpha=None``, ``use_weighting=False``):
      * Log-probs are SUMMED over the completion tokens (prompt excluded; TRL appends EOS to non-conversational
        completions, so EOS is one of the summed tokens). The batch loss is the plain mean of the per-pair losses.
      * ``sigmoid``: -logsigmoid(beta * h). TRL IGNORES ``label_smoothing`` here, so TRL's "sigmoid" is plain DPO
        and conservative DPO (sigmoid with eps > 0, computed below) has no TRL loss_type: it cannot be
        reproduced by ``DPOTrainer(loss_type="sigmoid", label_smoothing=eps)``.
      * ``ipo``: TRL divides each log-ratio by its completion's token count before differencing:
        h_ipo = (pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r, n = completion_mask.sum().clamp(min=1), then
        (h_ipo - 1/(2 beta))^2. ``label_smoothing`` is ignored. Its logged rewards still use the summed logps.
      * ``robust``: (-(1-eps) logsigmoid(beta h) + eps logsigmoid(-beta h)) / (1 - 2 eps), eps in [0, 0.5)
        (TRL writes it as (clean - flipped) / (1 - 2 eps) with flipped = -eps logsigmoid(-beta h)).
      * rewards/chosen = beta * (pi_c - ref_c), rewards/rejected = beta * (pi_r - ref_r), from the summed logps,
        for every loss type.

    h = (pi_c - ref_c) - (pi_r - ref_r) is the difference of the chosen and rejected log-ratios.

    Args:
        policy_chosen_logps: (B,) log pi(y_w | x), summed over the completion tokens.
        policy_rejected_logps: (B,) log pi(y_l | x), summed.
        ref_chosen_logps: (B,) log ref(y_w | x), summed.
        ref_rejected_logps: (B,) log ref(y_l | x), summed.
        beta: the KL strength beta (tau for IPO).
        loss_type: one of ``DPO_LOSS_TYPES``.
        label_smoothing: eps, the assumed label-flip rate: cDPO for "sigmoid" (0 <= eps < 0.5), robust DPO for
            "robust" (0 <= eps < 0.5); must be 0 for "ipo".
        chosen_lengths: (B,) completion token counts n_c, used only by "ipo" (ignored otherwise, as in TRL).
            Given, the log-ratios are divided by them in TRL's order, so summed logps reproduce TRL's IPO loss
            to float rounding; omitted, "ipo" takes the inputs as they are (pass length-averaged logps).
        rejected_lengths: (B,) completion token counts n_r, as ``chosen_lengths``.
    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,); rewards carry no gradient.
    Raises:
        ValueError: unknown ``loss_type``, a ``label_smoothing`` out of range, or only one of the lengths given.
    """
    if loss_type not in _DPO_LOSSES:
        raise ValueError(f"dpo_family_loss: unknown loss_type={loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    if loss_type == "ipo" and label_smoothing != 0.0:
        raise ValueError(f"dpo_family_loss: loss_type='ipo' takes no label_smoothing, got {label_smoothing}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_family_loss: label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("dpo_family_loss: give both chosen_lengths and rejected_lengths, or neither")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log pi(y_w|x)/ref(y_w|x)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # log pi(y_l|x)/ref(y_l|x)
    if loss_type == "ipo" and chosen_lengths is not None:
        # TRL's length normalisation for IPO (see the note above), in TRL's order of operations.
        h = chosen_logratios / chosen_lengths.to(chosen_logratios.dtype).clamp(min=1.0) - (
            rejected_logratios / rejected_lengths.to(rejected_logratios.dtype).clamp(min=1.0)
        )
    else:
        h = chosen_logratios - rejected_logratios
    losses = _DPO_LOSSES[loss_type](h, beta, label_smoothing)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


# ----------------------------------------------------------------------------------------------------------------
# Unlikelihood and token log-probs
# ----------------------------------------------------------------------------------------------------------------

# log(1 - p) is -inf at p = 1. Log-probs are clamped to at most this before log1mexp, so a token the policy is
# certain of costs at most -log(1 - exp(-1e-6)) ≈ 13.8 nats instead of inf (and gets no gradient at the clamp).
_MAX_LOGP_FOR_UNLIKELIHOOD = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, computed stably (Mächler 2012, "Accurately computing log(1 - exp(-|a|))").

    For x > -ln 2, 1 - exp(x) is small and ``-expm1(x)`` keeps its digits; below, exp(x) is small and ``log1p``
    keeps them. Returns -inf at x = 0.

    Args:
        x: any shape, values <= 0.
    Returns:
        same shape as ``x``.
    """
    # Each branch is evaluated on a value that is safe for it, so neither produces NaN in the unused lanes
    # (which would poison the gradient through torch.where).
    near_zero = x > -math.log(2.0)
    x_hi = torch.where(near_zero, x, torch.full_like(x, -1.0))
    x_lo = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_hi)), torch.log1p(-torch.exp(x_lo)))


def unlikelihood_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Likelihood on the preferred response plus unlikelihood on the dispreferred one (Welleck et al. 2019, eq. 4).

    For pair b, with n_w / n_l the number of real chosen / rejected tokens:
      nll_b = -(1 / max(1, n_w)) * sum_t log pi(y_w,t | ...)                (token-mean NLL of y_w)
      ul_b  = -(1 / max(1, n_l)) * sum_t log(1 - pi(y_l,t | ...))          (token-mean unlikelihood of y_l)
      loss  = mean_b [nll_b + alpha * ul_b]
    log(1 - p) is computed by ``log1mexp`` on log p clamped to <= -1e-6 (see ``_MAX_LOGP_FOR_UNLIKELIHOOD``).

    Args:
        chosen_logps: (B, T_w) per-token log-probs of the chosen tokens under the policy.
        chosen_mask: (B, T_w), bool or float.
        rejected_logps: (B, T_l) per-token log-probs of the rejected tokens under the policy.
        rejected_mask: (B, T_l), bool or float.
        alpha: weight of the unlikelihood term.
    Returns:
        (loss, nll_chosen, ul_rejected), 0-d tensors; nll_chosen = mean_b nll_b >= 0 and
        ul_rejected = mean_b ul_b >= 0, so loss = nll_chosen + alpha * ul_rejected.
    """
    n_chosen = _as_weights(chosen_mask, chosen_logps).sum(dim=-1).clamp(min=1.0)  # (B,)
    n_rejected = _as_weights(rejected_mask, rejected_logps).sum(dim=-1).clamp(min=1.0)  # (B,)
    nll = -masked_sum(chosen_logps, chosen_mask, dim=-1) / n_chosen  # (B,)
    log_one_minus_p = log1mexp(rejected_logps.clamp(max=_MAX_LOGP_FOR_UNLIKELIHOOD))  # (B, T_l)
    ul = -masked_sum(log_one_minus_p, rejected_mask, dim=-1) / n_rejected  # (B,)
    nll_chosen, ul_rejected = nll.mean(), ul.mean()
    return nll_chosen + alpha * ul_rejected, nll_chosen, ul_rejected


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of ``labels`` under ``logits``: log softmax(logits[b, t])[labels[b, t]].

    ``logits`` must already be aligned with ``labels`` (logits[:, t] predicts labels[:, t]; for a causal LM over
    prompt + response that means the logits at the position before each response token). Half-precision logits
    are upcast to float32 first. Labels on padding may be anything (e.g. -100 or the pad id): they are not read.

    Args:
        logits: (B, T, V).
        labels: (B, T) token ids.
        mask: (B, T), bool or float.
    Returns:
        (B, T) log-probs, 0 on padding. Sum over T for sequence log-probs.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    real = mask != 0
    safe_labels = torch.where(real, labels, torch.zeros_like(labels))  # any valid index; discarded below
    # log softmax at one index = logit - logsumexp(logits), without materialising the (B, T, V) log-softmax.
    token_logits = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logps = token_logits - torch.logsumexp(logits, dim=-1)
    return torch.where(real, logps, torch.zeros_like(logps))
