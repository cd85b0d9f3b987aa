"""Unit tests of pipelines/losses.py against values worked out by hand.

Every expected number is derived in the comment above it from the definition in the paper, not by calling the
same formula again. Tensors are float64 unless a test is about float32 behaviour.
"""

import math

import pytest
import torch

from pipelines import losses as L

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=D), torch.as_tensor(expected, dtype=D), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------------

X = t([[1.0, 2.0, 3.0], [4.0, 100.0, 200.0]])
M = t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_masked_mean_ignores_padding():
    # masked entries 1, 2, 3, 4 -> (1+2+3+4)/4 = 2.5; the 100 and 200 are padding
    close(L.masked_mean(X, M), 2.5)
    # per row: (1+2+3)/3 = 2 and 4/1 = 4
    close(L.masked_mean(X, M, dim=-1), [2.0, 4.0])
    # bool masks work the same; an empty row averages to 0
    close(L.masked_mean(X, t([[True, True, True], [False, False, False]], torch.bool), dim=-1), [2.0, 0.0])


def test_masked_mean_padding_nan_does_not_leak():
    x = t([[1.0, float("nan")], [3.0, float("inf")]])
    m = t([[1.0, 0.0], [1.0, 0.0]])
    close(L.masked_mean(x, m), 2.0)  # (1 + 3) / 2


def test_masked_var():
    # entries 1,2,3,4: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5
    # biased: 5/4 = 1.25, unbiased: 5/3 = 1.6666667
    close(L.masked_var(X, M, unbiased=False), 1.25)
    close(L.masked_var(X, M, unbiased=True), 5.0 / 3.0)
    with pytest.raises(ValueError, match="empty"):
        L.masked_var(X, torch.zeros_like(M))


def test_masked_whiten():
    w = L.masked_whiten(X, M)
    # (1 - 2.5) / sqrt(5/3) = -1.5 / 1.2909944 = -1.1618950 ; (4 - 2.5) / 1.2909944 = 1.1618950
    close(w[0, 0], -1.1618950)
    close(w[1, 0], 1.1618950)
    # padding stays exactly 0
    assert w[1, 1].item() == 0.0 and w[1, 2].item() == 0.0
    # over the mask: mean 0, unbiased variance 1 (up to the 1e-8 in the denominator)
    close(L.masked_mean(w, M), 0.0)
    close(L.masked_var(w, M), 1.0)
    # shift_mean=False only rescales: -1.1618950 + 2.5 = 1.3381050
    w2 = L.masked_whiten(X, M, shift_mean=False)
    close(w2[0, 0], 1.3381050)
    close(L.masked_mean(w2, M), 2.5)
    assert w2[1, 1].item() == 0.0


# ---------------------------------------------------------------------------------------------------------------
# KL estimators, rewards
# ---------------------------------------------------------------------------------------------------------------


def test_kl_k1_and_k3_by_hand():
    # token 1: p = 0.5, q = 0.25 -> k1 = log(0.5/0.25) = log 2 = 0.6931472
    #          r = q/p = 0.5   -> k3 = (0.5 - 1) - log 0.5 = -0.5 + 0.6931472 = 0.1931472
    # token 2: p = 0.25, q = 0.5 -> k1 = log(0.25/0.5) = -0.6931472 (k1 can be negative on one token)
    #          r = 2           -> k3 = (2 - 1) - log 2 = 0.3068528
    # token 3: p = q          -> k1 = k3 = 0
    logp = t([[math.log(0.5), math.log(0.25), math.log(0.3)]])
    logq = t([[math.log(0.25), math.log(0.5), math.log(0.3)]])
    close(L.kl_penalty(logp, logq, "k1"), [[0.6931472, -0.6931472, 0.0]])
    close(L.kl_penalty(logp, logq, "k3"), [[0.1931472, 0.3068528, 0.0]])
    close(L.kl_penalty(logp, logq), [[0.6931472, -0.6931472, 0.0]])  # k1 is the default


def test_k3_is_never_negative():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=g, dtype=D) * 3
    logq = torch.randn(64, 32, generator=g, dtype=D) * 3
    assert (L.kl_penalty(logp, logq, "k3") >= 0).all()
    assert set(L.KL_ESTIMATORS) == {"k1", "k3"}


def test_only_k1_is_an_unbiased_kl_reward():
    """Why PPO puts only k1 into the reward (pipelines/schemas.py refuses kl_estimator=k3).

    A reward k(y) is differentiated through the score function: the policy gradient of E_π[−β k] is −β E_π[k ∇log π].
    On a 5-outcome softmax policy π_θ against a fixed reference q, every outcome enumerated (the exact expectation,
    no sampling noise):
      k1 = log π − log q:  E_π[k1 ∇log π] = Σ_y ∇π (log π − log q) = ∇KL(π‖q), since Σ_y π ∇log π = ∇Σ π = 0;
      k3 = q/π − 1 − log(q/π):  E_π[k3 ∇log π] = Σ_y q ∇log π − 0 + ∇KL = ∇KL + E_q[∇log π], and for a softmax
           ∇_θ log π(y) = e_y − π, so the bias E_q[e_y − π] = q − π is not 0 unless π = q.
    Both are unbiased estimates of the KL's *value*: E_π[k1] = E_π[k3] = KL(π‖q).
    """
    theta = t([0.3, -1.2, 0.8, 0.1, -0.4]).requires_grad_(True)
    logq = torch.log_softmax(t([-0.5, 0.9, 0.2, -1.0, 0.4]), -1)
    logp = torch.log_softmax(theta, -1)
    p, q = logp.exp(), logq.exp()
    kl = (p * (logp - logq)).sum()
    (exact,) = torch.autograd.grad(kl, theta, retain_graph=True)  # ∇_θ KL(π_θ‖q)

    def score_function_gradient(estimator: str) -> torch.Tensor:
        k = L.kl_penalty(logp.detach()[None], logq[None], estimator)[0]  # (5,) the reward's KL term, no gradient
        (g,) = torch.autograd.grad((p.detach() * k * logp).sum(), theta, retain_graph=True)  # E_π[k ∇log π]
        return g

    close(score_function_gradient("k1"), exact, atol=1e-12)
    k3_grad = score_function_gradient("k3")
    close(k3_grad - exact, q - p, atol=1e-12)
    assert (k3_grad - exact).abs().max() > 0.1  # not a rounding error: biased
    for estimator in ("k1", "k3"):  # as estimates of the value, both are fine
        close((p * L.kl_penalty(logp[None], logq[None], estimator)[0]).sum(), kl, atol=1e-12)


def test_kl_unknown_estimator_raises():
    with pytest.raises(ValueError, match="estimator"):
        L.kl_penalty(t([[0.0]]), t([[0.0]]), "k2")


def test_last_token_index():
    mask = t([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    idx = L.last_token_index(mask)
    assert idx.dtype == torch.long
    assert idx.tolist() == [2, 1, -1, 0]


def test_per_token_rewards_score_on_last_token_kl_everywhere():
    scores = t([1.0, 2.0, 3.0])
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, float("nan")], [0.7, 0.8, 0.9]])  # NaN on padding must not leak
    mask = t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    r = L.per_token_rewards(scores, kl, 0.5, mask)
    # row 0: -0.5*[0.1, 0.2, 0.3] = [-0.05, -0.10, -0.15], + score 1 on t=2 -> [-0.05, -0.10, 0.85]
    # row 1: -0.5*[0.4, 0.5] = [-0.20, -0.25], + score 2 on t=1 -> [-0.20, 1.75], padding 0
    # row 2: empty response -> nothing at all, not even the score
    close(r, [[-0.05, -0.10, 0.85], [-0.20, 1.75, 0.0], [0.0, 0.0, 0.0]])
    # kl_coef as a 0-d tensor gives the same
    close(L.per_token_rewards(scores, kl, t(0.5), mask), r)


# ---------------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------------

GAE_REWARDS = t([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
GAE_VALUES = t([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]])  # 9.0 sits on padding and must be ignored
GAE_MASK = t([[1, 1, 1], [1, 1, 0]])


def test_gae_gamma_1_lam_095():
    adv, ret = L.gae_advantages(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=0.95)
    # row 0 (full): delta_t = r_t + V_{t+1} - V_t, with V_3 = 0
    #   t=2: delta = 1 + 0 - 0.7 = 0.3                      A2 = 0.3
    #   t=1: delta = 0 + 0.7 - 0.6 = 0.1                    A1 = 0.1 + 0.95*0.3   = 0.385
    #   t=0: delta = 0 + 0.6 - 0.5 = 0.1                    A0 = 0.1 + 0.95*0.385 = 0.46575
    #   returns = A + V = [0.96575, 0.985, 1.0]
    # row 1 (last real token t=1, bootstrap 0 after it):
    #   t=1: delta = 1 + 0 - 0.6 = 0.4                      A1 = 0.4
    #   t=0: delta = 0 + 0.6 - 0.5 = 0.1                    A0 = 0.1 + 0.95*0.4 = 0.48
    #   returns = [0.98, 1.0], padding 0
    close(adv, [[0.46575, 0.385, 0.3], [0.48, 0.4, 0.0]])
    close(ret, [[0.96575, 0.985, 1.0], [0.98, 1.0, 0.0]])


def test_gae_gamma_09():
    adv, ret = L.gae_advantages(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=0.95)
    # gamma*lam = 0.855
    # row 0: t=2: delta = 1 - 0.7 = 0.3                     A2 = 0.3
    #        t=1: delta = 0.9*0.7 - 0.6 = 0.03              A1 = 0.03 + 0.855*0.3    = 0.2865
    #        t=0: delta = 0.9*0.6 - 0.5 = 0.04              A0 = 0.04 + 0.855*0.2865 = 0.2849575
    #        returns = [0.7849575, 0.8865, 1.0]
    # row 1: t=1: delta = 1 - 0.6 = 0.4                     A1 = 0.4
    #        t=0: delta = 0.9*0.6 - 0.5 = 0.04              A0 = 0.04 + 0.855*0.4 = 0.382
    #        returns = [0.882, 1.0, 0]
    close(adv, [[0.2849575, 0.2865, 0.3], [0.382, 0.4, 0.0]])
    close(ret, [[0.7849575, 0.8865, 1.0], [0.882, 1.0, 0.0]])


def test_gae_lambda_1_is_monte_carlo():
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t.  Row 0: [1-0.5, 1-0.6, 1-0.7]; row 1: [1-0.5, 1-0.6]
    adv, _ = L.gae_advantages(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.3], [0.5, 0.4, 0.0]])


# ---------------------------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------------------------


def test_clipped_policy_loss_all_sides_of_the_clip():
    eps = 0.2
    # five real tokens and one padded token (ratio e^5, would dominate if it leaked):
    #   a: ratio 1.5, A=+1: -A*r = -1.5, -A*clip(r) = -1.2 -> max -1.2 (clipped: no gradient)
    #   b: ratio 1.5, A=-1: -A*r = +1.5, -A*clip(r) = +1.2 -> max  1.5 (unclipped)
    #   c: ratio 0.5, A=+1: -A*r = -0.5, -A*clip(r) = -0.8 -> max -0.5 (unclipped)
    #   d: ratio 0.5, A=-1: -A*r = +0.5, -A*clip(r) = +0.8 -> max  0.8 (clipped: no gradient)
    #   e: ratio 1.1, A=+2: inside the clip, both -2.2  -> -2.2 (not counted as clipped)
    # loss = (-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5 = -1.6 / 5 = -0.32 ; clipfrac = 2/5 = 0.4
    ratios = [1.5, 1.5, 0.5, 0.5, 1.1, math.exp(5.0)]
    old = t([[-1.0] * 6])
    logp = (old + t([[math.log(r) for r in ratios]])).requires_grad_(True)
    adv = t([[1.0, -1.0, 1.0, -1.0, 2.0, 1.0]])
    mask = t([[1, 1, 1, 1, 1, 0]])
    loss, clipfrac, approx_kl = L.clipped_policy_loss(logp, old, adv, mask, eps)
    close(loss, -0.32)
    close(clipfrac, 0.4)
    # k2: 0.5*log(1.5)^2 = 0.5*0.4054651^2 = 0.0822010 (a, b); 0.5*log(0.5)^2 = 0.5*0.4804530 = 0.2402265 (c, d);
    #     0.5*log(1.1)^2 = 0.5*0.0953102^2 = 0.0045420 (e)
    #     mean = (2*0.0822010 + 2*0.2402265 + 0.0045420) / 5 = 0.6493970 / 5 = 0.1298794
    close(approx_kl, 0.1298794)
    # gradient d loss / d logp_t = -A_t * r_t / 5 where unclipped, 0 where clipped or padded:
    #   a: 0, b: 1.5/5 = 0.3, c: -0.5/5 = -0.1, d: 0, e: -2*1.1/5 = -0.44, pad: 0
    loss.backward()
    close(logp.grad, [[0.0, 0.3, -0.1, 0.0, -0.44, 0.0]])


def test_clipped_policy_loss_no_clip_at_ratio_one():
    # ratio 1 everywhere: loss = -mean(A) = -(1 + 3)/2 = -2, nothing clipped, approx_kl 0
    lp = t([[-2.0, -3.0]])
    loss, clipfrac, approx_kl = L.clipped_policy_loss(lp, lp.clone(), t([[1.0, 3.0]]), t([[1, 1]]), 0.2)
    close(loss, -2.0)
    close(clipfrac, 0.0)
    close(approx_kl, 0.0)


def test_clipped_value_loss_both_sides():
    c = 0.2
    # old values all 0, so V_clip = clip(V, -0.2, 0.2):
    #   a: V= 0.5, R= 1: (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64   -> 0.64 (clipped larger)
    #   b: V= 0.5, R= 0: (0.5-0)^2 = 0.25, (0.2-0)^2 = 0.04   -> 0.25
    #   c: V=-0.5, R=-1: (-0.5+1)^2 = 0.25, (-0.2+1)^2 = 0.64 -> 0.64 (clipped larger)
    #   d: V= 0.1, R= 1: inside, both (0.9)^2 = 0.81          -> 0.81 (not counted)
    #   pad: V=5, R=-5 ignored
    # loss = 0.5 * (0.64 + 0.25 + 0.64 + 0.81) / 4 = 0.5 * 2.34 / 4 = 0.2925 ; clipfrac = 2/4 = 0.5
    values = t([[0.5, 0.5, -0.5, 0.1, 5.0]])
    old = torch.zeros_like(values)
    returns = t([[1.0, 0.0, -1.0, 1.0, -5.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, clipfrac = L.clipped_value_loss(values, old, returns, mask, c)
    close(loss, 0.2925)
    close(clipfrac, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# Entropy, explained variance
# ---------------------------------------------------------------------------------------------------------------


def test_entropy_from_logits():
    logits = t(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: log 4 = 1.3862944
            [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf],  # 0.5 ln 2 + 2*0.25 ln 4 = 1.5 ln 2 = 1.0397208
            [1000.0, 1000.0, -math.inf, -math.inf],  # large logits, two equal: ln 2 = 0.6931472
            [0.0, -math.inf, -math.inf, -math.inf],  # one certain outcome: 0
        ]
    )
    close(L.entropy_from_logits(logits), [1.3862944, 1.0397208, 0.6931472, 0.0])
    assert L.entropy_from_logits(torch.zeros(2, 3, 5)).shape == (2, 3)


def test_explained_variance():
    target = t([[1.0, 2.0, 3.0, 4.0, 50.0]])
    mask = t([[1, 1, 1, 1, 0]])
    # perfect prediction -> 1
    close(L.explained_variance(target.clone(), target, mask), 1.0)
    # the masked mean 2.5 everywhere -> residual variance = target variance -> 0
    close(L.explained_variance(torch.full_like(target, 2.5), target, mask), 0.0)
    # pred [1,2,3,5]: residual [0,0,0,-1], mean -0.25, var = (3*0.0625 + 0.5625)/4 = 0.1875 ;
    # Var[target] = 1.25 -> 1 - 0.1875/1.25 = 1 - 0.15 = 0.85
    close(L.explained_variance(t([[1.0, 2.0, 3.0, 5.0, 0.0]]), target, mask), 0.85)


# ---------------------------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------------------------


def test_fixed_kl_controller():
    ctl = L.FixedKLController(0.05)
    ctl.update(100.0, 256)
    assert ctl.value == 0.05


@pytest.mark.parametrize(
    "current_kl, expected",
    [
        # target 6, horizon 10000, n_steps 256, so mult = 1 + e * 0.0256
        (9.0, 0.100512),  # e = 9/6 - 1 = 0.5, clipped to 0.2   -> 0.1 * (1 + 0.2*0.0256) = 0.1 * 1.00512
        (6.6, 0.100256),  # e = 6.6/6 - 1 = 0.1 (inside)        -> 0.1 * 1.00256
        (6.0, 0.1),  # e = 0                                    -> unchanged
        (5.4, 0.099744),  # e = -0.1                             -> 0.1 * 0.99744
        (0.0, 0.099488),  # e = -1, clipped to -0.2             -> 0.1 * (1 - 0.00512)
    ],
)
def test_adaptive_kl_controller(current_kl, expected):
    ctl = L.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl, n_steps=256)
    assert ctl.value == pytest.approx(expected, abs=1e-12)


def test_adaptive_kl_controller_compounds():
    ctl = L.AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(9.0, 256)  # 0.1 * 1.00512 = 0.100512
    ctl.update(6.6, 256)  # 0.100512 * 1.00256 = 0.100512 + 0.100512*0.00256 = 0.100512 + 0.00025731 = 0.10076931
    assert ctl.value == pytest.approx(0.10076931, abs=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# DPO family
# ---------------------------------------------------------------------------------------------------------------

# pair 0: chosen log-ratio -10 - (-11) = +1, rejected -12 - (-11) = -1 -> h = +2
# pair 1: chosen log-ratio  -5 - (-4)  = -1, rejected  -5 - (-6)  = +1 -> h = -2
PI_C, PI_R = t([-10.0, -5.0]), t([-12.0, -5.0])
REF_C, REF_R = t([-11.0, -4.0]), t([-11.0, -6.0])
BETA = 0.5  # beta * h = +1 and -1
# -logsigmoid(1) = log(1 + e^-1) = log 1.3678794 = 0.3132617 ; -logsigmoid(-1) = log(1 + e) = 1.3132617
LS_POS, LS_NEG = 0.3132617, 1.3132617


def test_dpo_sigmoid_by_hand():
    losses, cr, rr = L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "sigmoid")
    close(losses, [LS_POS, LS_NEG])
    close(cr, [0.5, -0.5])  # beta * chosen log-ratio
    close(rr, [-0.5, 0.5])  # beta * rejected log-ratio


def test_cdpo_by_hand():
    # eps = 0.1: (1-eps) * (-logsig(beta h)) + eps * (-logsig(-beta h))
    # pair 0: 0.9*0.3132617 + 0.1*1.3132617 = 0.2819355 + 0.1313262 = 0.4132617
    # pair 1: 0.9*1.3132617 + 0.1*0.3132617 = 1.1819355 + 0.0313262 = 1.2132617
    losses, _, _ = L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "sigmoid", label_smoothing=0.1)
    close(losses, [0.4132617, 1.2132617])


def test_robust_dpo_by_hand():
    # eps = 0.1: ((1-eps) * (-logsig(beta h)) - eps * (-logsig(-beta h))) / (1 - 2 eps)
    # pair 0: (0.9*0.3132617 - 0.1*1.3132617) / 0.8 = (0.2819355 - 0.1313262) / 0.8 = 0.1506094 / 0.8 = 0.1882617
    # pair 1: (0.9*1.3132617 - 0.1*0.3132617) / 0.8 = (1.1819355 - 0.0313262) / 0.8 = 1.1506094 / 0.8 = 1.4382617
    losses, cr, _ = L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "robust", label_smoothing=0.1)
    close(losses, [0.1882617, 1.4382617])
    close(cr, [0.5, -0.5])
    # eps = 0 is plain DPO
    losses0, _, _ = L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "robust", label_smoothing=0.0)
    close(losses0, [LS_POS, LS_NEG])


def test_ipo_by_hand():
    # 1 / (2 beta) = 1 ; pair 0: (2 - 1)^2 = 1 ; pair 1: (-2 - 1)^2 = 9
    losses, _, _ = L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "ipo")
    close(losses, [1.0, 9.0])


def test_ipo_with_lengths_matches_trl_normalisation():
    # TRL 1.16 divides each summed log-ratio by its completion length before differencing.
    # lengths chosen [2, 4], rejected [4, 1]:
    # pair 0: 1/2 - (-1)/4 = 0.75   -> (0.75 - 1)^2  = 0.0625
    # pair 1: -1/4 - 1/1  = -1.25   -> (-1.25 - 1)^2 = 5.0625
    losses, cr, rr = L.dpo_family_loss(
        PI_C, PI_R, REF_C, REF_R, BETA, "ipo", chosen_lengths=t([2, 4]), rejected_lengths=t([4, 1])
    )
    close(losses, [0.0625, 5.0625])
    close(cr, [0.5, -0.5])  # rewards stay on the summed log-ratios, as TRL logs them
    close(rr, [-0.5, 0.5])
    # lengths are ignored by the other loss types (as in TRL)
    losses_s, _, _ = L.dpo_family_loss(
        PI_C, PI_R, REF_C, REF_R, BETA, "sigmoid", chosen_lengths=t([2, 4]), rejected_lengths=t([4, 1])
    )
    close(losses_s, [LS_POS, LS_NEG])


def test_dpo_errors():
    with pytest.raises(ValueError, match="loss_type"):
        L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="lengths"):
        L.dpo_family_loss(PI_C, PI_R, REF_C, REF_R, BETA, "ipo", chosen_lengths=t([2, 4]))
    assert L.DPO_LOSS_TYPES == ("sigmoid", "ipo", "robust")


def test_dpo_gradient_direction():
    # DPO pushes the chosen log-prob up and the rejected one down: d loss / d pi_c < 0 < d loss / d pi_r
    pc, pr = PI_C.clone().requires_grad_(True), PI_R.clone().requires_grad_(True)
    losses, _, _ = L.dpo_family_loss(pc, pr, REF_C, REF_R, BETA)
    losses.mean().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


# ---------------------------------------------------------------------------------------------------------------
# Unlikelihood, log1mexp, token log-probs
# ---------------------------------------------------------------------------------------------------------------


def test_unlikelihood_by_hand():
    chosen = t([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]])
    chosen_mask = t([[1, 1], [1, 0]])
    rejected = t([[math.log(0.5), math.log(0.75)], [math.log(0.1), 0.0]])  # the 0.0 (p = 1) is padding
    rejected_mask = t([[1, 1], [1, 0]])
    # nll: row 0 = (ln 2 + ln 4)/2 = (0.6931472 + 1.3862944)/2 = 1.0397208 ; row 1 = ln 2 = 0.6931472
    #      mean = (1.0397208 + 0.6931472)/2 = 0.8664340
    # ul:  row 0 = (-ln(1-0.5) - ln(1-0.75))/2 = (0.6931472 + 1.3862944)/2 = 1.0397208 ; row 1 = -ln 0.9 = 0.1053605
    #      mean = (1.0397208 + 0.1053605)/2 = 0.5725407
    # loss (alpha 0.5) = 0.8664340 + 0.5*0.5725407 = 0.8664340 + 0.2862703 = 1.1527043
    loss, nll, ul = L.unlikelihood_loss(chosen, chosen_mask, rejected, rejected_mask, alpha=0.5)
    close(nll, 0.8664340)
    close(ul, 0.5725407)
    close(loss, 1.1527043)


def test_unlikelihood_probability_one_is_finite():
    # p = 1 (log p = 0) is clamped to log p = -1e-6: -log(1 - e^{-1e-6}) = -log(1e-6 - 5e-13) ≈ 13.8155106
    chosen = t([[math.log(0.5)]]).requires_grad_(True)
    rejected = t([[0.0]]).requires_grad_(True)
    loss, _, ul = L.unlikelihood_loss(chosen, t([[1]]), rejected, t([[1]]), alpha=1.0)
    close(ul, 13.8155106)
    loss.backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    # an empty response contributes 0 (its count is clamped to 1)
    _, nll_empty, _ = L.unlikelihood_loss(chosen, t([[0]]), rejected, t([[1]]), alpha=1.0)
    close(nll_empty, 0.0)


def test_log1mexp_is_accurate_at_both_ends():
    # x = -1e-10: 1 - e^x = 1e-10 - 5e-21 -> log = -23.0258509 ; the naive log1p(-exp(x)) is -inf in float32
    # x = -50:    log(1 - e^-50) ≈ -e^-50 = -1.9287498e-22
    # x = log 0.75 -> log 0.25 = -1.3862944 (expm1 branch) ; x = log 0.25 -> log 0.75 = -0.2876821 (log1p branch)
    x = t([-1e-10, -50.0, math.log(0.75), math.log(0.25)], torch.float32)
    y = L.log1mexp(x)
    torch.testing.assert_close(y[0], t(-23.0258509, torch.float32), atol=1e-4, rtol=0)
    torch.testing.assert_close(y[1], t(-1.9287498e-22, torch.float32), atol=0, rtol=1e-4)
    torch.testing.assert_close(y[2:], t([-1.3862944, -0.2876821], torch.float32), atol=1e-6, rtol=0)


def test_sequence_logps():
    V = 3
    logits = t(
        [
            [[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [5.0, 5.0, 5.0]],
        ]
    )
    labels = torch.tensor([[1, 1, -100]])  # the -100 is on padding and must not be indexed
    mask = t([[1, 1, 0]])
    # t=0: uniform over 3 -> log(1/3) = -1.0986123 ; t=1: softmax [1,2,1]/4 at index 1 -> log(2/4) = -0.6931472
    out = L.sequence_logps(logits, labels, mask)
    close(out, [[-1.0986123, -0.6931472, 0.0]])
    assert logits.shape[-1] == V
    # half-precision logits come back in float32
    assert L.sequence_logps(logits.to(torch.bfloat16), labels, mask).dtype == torch.float32
