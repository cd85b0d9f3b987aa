"""Frontier statistics: envelopes, cross-fitting, the paired bootstrap, areas, differences, Gao fits.

numpy only: no torch, no matplotlib, no I/O, no method names (the caller says which methods are the reference
policy and which pairs to compare).  ``harness.report.analysis`` calls them; the rest of ``harness.report`` renders.

Shapes: ``M`` points (evaluations) of one method and seed, ``P`` evaluation prompts (the same prompts for every
method of a sweep), ``R`` bootstrap replicates, ``G`` KLs of a grid, ``S`` seeds.

How a method's curve is estimated (``analyse``):

1. **Per-prompt evidence.**  Each point ``i`` carries ``gold[i, p]`` and ``kl[i, p]``, the mean gold reward
   and mean exact sequence KL of prompt ``p``'s samples.  A point without evidence is given constant rows
   (its aggregate value for every prompt): it then does not vary under prompt resampling.
2. **Unimodal upper envelope** (``unimodal_envelope``): with points sorted by KL,
   ``E_i = min(max_{j<=i} r_j, max_{j>=i} r_j)``, the smallest unimodal curve above every point.  It runs from
   the smallest to the largest KL evaluated, so a decline at high KL (over-optimisation) stays visible.
   A point is *selected* when ``r_i >= E_i``.
3. **Cross-fitting** (``crossfit_curves``): the prompts are split once into fixed halves A and B
   (``split_halves``).  Points are selected with their means over A and drawn at their means over B, and
   the reverse; each fold's curve is the linear interpolation through its selected points sorted by their
   reported KL (NaN outside their KL range), and the method-seed curve is the average of the two folds.  The
   noise that made a point look best is not the noise it is reported with, so the curve is not biased upward
   the way the running maximum of noisy points is.
4. **Seeds**: a method's curve is the mean of its per-seed curves over the KL range every seed covers.
5. **Paired hierarchical bootstrap** (``resample_weights``, ``seed_counts``): a replicate resamples the
   prompts with replacement within each half, ONE draw shared by every method and seed, and the seed labels
   with replacement, one draw shared by every method with the same seed list (seed s of DPO pairs with seed
   s of PPO).  Intervals are percentile intervals.  In a replicate each per-seed curve is held flat beyond
   its own ends, and the replicate is only read where the point estimate is defined.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

ZERO_KL = 1e-6  # nats; points below this are evaluations of the reference policy itself
MIN_COMMON_KL = 2.0  # nats; a method whose curve ends below this does not set the common KL range
DEFAULT_KLS = (2.0, 5.0, 10.0)
N_BOOT = 1000  # bootstrap replicates
BOOT_SEED = 0  # rng seed of the bootstrap: the report is deterministic
HALVES_SEED = 0  # rng seed of the fixed A/B split of the prompts
GRID_POINTS = 200  # evenly spaced KLs of the analysis grid (special KLs are added to it)
LEVEL = 0.95

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30; beyond 30 we use the normal 1.96.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


# ---------------------------------------------------------------------------------------------------------
# The naive (Pareto, running-maximum) envelope of aggregate points
# ---------------------------------------------------------------------------------------------------------


def upper_envelope(kl: Sequence[float], reward: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The naive upper envelope (Pareto frontier, running maximum) of reward vs KL.

    A point is kept when no other point has KL <= its KL and reward >= its reward (of exact duplicates one
    is kept).  Non-finite points are ignored.  Biased upward on noisy points (it keeps the luckiest) and
    hides any decline at high KL; ``analyse`` uses the cross-fitted unimodal envelope instead.

    Args:
        kl, reward: shape (M,).

    Returns:
        ``(kl_env, reward_env)``, both shape (K,), K <= M, KL and reward strictly increasing.
    """
    kl = np.asarray(kl, dtype=float).ravel()
    reward = np.asarray(reward, dtype=float).ravel()
    ok = np.isfinite(kl) & np.isfinite(reward)
    kl, reward = kl[ok], reward[ok]
    order = np.lexsort((-reward, kl))  # by KL, ties: highest reward first
    keep_kl, keep_r, best = [], [], -np.inf
    for i in order:
        if reward[i] > best:  # strictly better than everything at lower or equal KL
            keep_kl.append(kl[i])
            keep_r.append(reward[i])
            best = reward[i]
    return np.asarray(keep_kl, dtype=float), np.asarray(keep_r, dtype=float)


def envelope_at(kl_env: np.ndarray, reward_env: np.ndarray, x) -> np.ndarray | float:
    """Reward of a piecewise-linear curve (vertices ``kl_env`` increasing, (K,)) at KL ``x``; NaN outside
    ``[kl_env[0], kl_env[-1]]``.  ``x`` scalar -> float, array -> array of its shape; empty curve -> NaN."""
    kl_env = np.asarray(kl_env, dtype=float)
    reward_env = np.asarray(reward_env, dtype=float)
    x_arr = np.asarray(x, dtype=float)
    if kl_env.size == 0:
        out = np.full(x_arr.shape, np.nan)
    else:
        out = np.interp(x_arr, kl_env, reward_env)
        out = np.where((x_arr < kl_env[0]) | (x_arr > kl_env[-1]), np.nan, out)
    return float(out) if out.ndim == 0 else out


def envelope_area(kl_env: np.ndarray, reward_env: np.ndarray, lo: float, hi: float) -> float:
    """Exact area under the piecewise-linear curve (vertices (K,)) over ``[lo, hi]`` (reward × nats).

    NaN when the curve does not cover ``[lo, hi]`` (no extrapolation) or ``hi < lo``; 0 when ``lo == hi``.
    """
    kl_env = np.asarray(kl_env, dtype=float)
    reward_env = np.asarray(reward_env, dtype=float)
    if kl_env.size == 0 or not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        return float("nan")
    if lo < kl_env[0] or hi > kl_env[-1]:
        return float("nan")
    inner = (kl_env > lo) & (kl_env < hi)
    xs = np.concatenate([[lo], kl_env[inner], [hi]])
    ys = np.concatenate(
        [[envelope_at(kl_env, reward_env, lo)], reward_env[inner], [envelope_at(kl_env, reward_env, hi)]]
    )
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def higher_intervals(grid: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Maximal runs of consecutive grid points (grid (G,)) where ``mask`` (G,) is True, as
    ``[(start_kl, end_kl), ...]``."""
    runs, start = [], None
    for i, flag in enumerate(mask):
        if flag and start is None:
            start = i
        if start is not None and (not flag or i == len(mask) - 1):
            end = i if flag else i - 1
            runs.append((float(grid[start]), float(grid[end])))
            start = None
    return runs


def compare_envelopes(kl_a, reward_a, kl_b, reward_b, n_grid: int = 50) -> dict | None:
    """Compare two piecewise-linear curves (no uncertainty) on ``n_grid`` KLs over the overlap of their ranges.

    Returns None when the ranges do not overlap (or meet in one point), else ``dict(lo, hi, grid (n_grid,),
    a, b, b_higher, ties)``: ``b_higher`` the KL intervals where B is strictly above A.
    """
    kl_a, kl_b = np.asarray(kl_a, float), np.asarray(kl_b, float)
    if kl_a.size == 0 or kl_b.size == 0:
        return None
    lo, hi = max(kl_a[0], kl_b[0]), min(kl_a[-1], kl_b[-1])
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, n_grid)
    a = envelope_at(kl_a, reward_a, grid)
    b = envelope_at(kl_b, reward_b, grid)
    return dict(
        lo=float(lo),
        hi=float(hi),
        grid=grid,
        a=a,
        b=b,
        b_higher=higher_intervals(grid, b > a),
        ties=int(np.sum(np.isclose(a, b, rtol=0, atol=1e-12))),
    )


# ---------------------------------------------------------------------------------------------------------
# Gao et al. (2022) fits and t-based confidence intervals
# ---------------------------------------------------------------------------------------------------------


def fit_gao(kl: Sequence[float], reward: Sequence[float], kind: str, baseline: float | None = None) -> dict:
    """Least-squares fit of the Gao et al. (2022) scaling laws, with d = sqrt(KL) (KL in nats).

    - ``kind="rl"``:  R(d) = d · (alpha − beta · log d)   (RL against a reward model)
    - ``kind="bon"``: R(d) = d · (alpha − beta · d)       (best-of-N sampling)

    R is the gain over the reference policy, ``reward − R0``; R0 is ``baseline`` when given, else the mean
    reward of the points with KL < 1e-6, else 0.  Both laws are linear in (alpha, beta): one ``lstsq``.

    Args:
        kl, reward: shape (M,); non-finite points are dropped.

    Returns:
        ``dict(alpha, beta, r2, n, baseline)``; alpha, beta, r2 NaN with fewer than two points at KL > 0.
    """
    if kind not in ("rl", "bon"):
        raise ValueError(f"kind must be 'rl' or 'bon', got {kind!r}")
    kl = np.asarray(kl, dtype=float).ravel()
    reward = np.asarray(reward, dtype=float).ravel()
    ok = np.isfinite(kl) & np.isfinite(reward)
    kl, reward = np.clip(kl[ok], 0.0, None), reward[ok]  # exact KL is >= 0; clip float noise below 0
    if baseline is None:
        at_zero = kl < ZERO_KL
        baseline = float(reward[at_zero].mean()) if at_zero.any() else 0.0
    nan = float("nan")
    result = dict(alpha=nan, beta=nan, r2=nan, n=int(kl.size), baseline=float(baseline))
    d = np.sqrt(kl)
    if np.count_nonzero(d > np.sqrt(ZERO_KL)) < 2:
        return result
    gain = reward - baseline
    if kind == "rl":
        d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        design = np.stack([d, -d_log_d], axis=1)
    else:
        design = np.stack([d, -d * d], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    ss_res = float(np.sum((gain - design @ np.array([alpha, beta])) ** 2))
    ss_tot = float(np.sum((gain - gain.mean()) ** 2))
    result.update(alpha=float(alpha), beta=float(beta), r2=1.0 - ss_res / ss_tot if ss_tot > 0 else nan)
    return result


def gao_curve(d: np.ndarray, alpha: float, beta: float, kind: str) -> np.ndarray:
    """The fitted gain R(d) of ``fit_gao`` at d = sqrt(KL); same shape as ``d``."""
    d = np.asarray(d, dtype=float)
    if kind == "rl":
        return d * alpha - beta * np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return d * (alpha - beta * d)


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile: the table for df 1..30, the normal 1.96 beyond (NaN for df < 1)."""
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width ``t_{0.975, n−1} · s / sqrt(n)`` of the finite values (n,).

    One value: half-width NaN; none: both NaN.
    """
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(t_quantile_975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


# ---------------------------------------------------------------------------------------------------------
# Unimodal envelope and selection
# ---------------------------------------------------------------------------------------------------------


def unimodal_envelope(kl, reward) -> tuple[np.ndarray, np.ndarray]:
    """The smallest unimodal curve above the points, and which points are on it.

    With points sorted by KL (ties: highest reward first), ``E_i = min(max_{j<=i} r_j, max_{j>=i} r_j)``.
    The first and last points in KL order are always selected; of points tied in KL only the highest-reward
    one can be.  Vectorised over any leading axes (e.g. bootstrap replicates).

    Args:
        kl, reward: shape (..., M), finite.

    Returns:
        ``(envelope, selected)``: shape (..., M) float and bool, in the input's point order; ``selected[i]``
        is ``reward[i] >= envelope[i]`` (and not a tie loser).
    """
    kl = np.asarray(kl, dtype=float)
    reward = np.asarray(reward, dtype=float)
    if kl.shape[-1] == 0:
        return np.empty(kl.shape), np.zeros(kl.shape, dtype=bool)
    order = np.lexsort((-reward, kl), axis=-1)
    k = np.take_along_axis(kl, order, axis=-1)
    r = np.take_along_axis(reward, order, axis=-1)
    forward = np.maximum.accumulate(r, axis=-1)
    backward = np.flip(np.maximum.accumulate(np.flip(r, axis=-1), axis=-1), axis=-1)
    env = np.minimum(forward, backward)
    sel = r >= env
    sel[..., 1:] &= k[..., 1:] != k[..., :-1]
    env_out, sel_out = np.empty_like(env), np.empty_like(sel)
    np.put_along_axis(env_out, order, env, axis=-1)
    np.put_along_axis(sel_out, order, sel, axis=-1)
    return env_out, sel_out


def interp_selected(grid, kl, reward, selected, extrapolate: str = "nan", max_cells: int = 4_000_000) -> np.ndarray:
    """Linear interpolation through each replicate's selected points, sorted by their KL.

    For each grid KL x the nearest selected point on its left (KL <= x) and on its right (KL >= x) are found
    with (R, G, M) masks, so every replicate may select a different set.

    Args:
        grid: (G,) KLs.
        kl, reward: (R, M) the points' KL and reward in each replicate.
        selected: (R, M) bool, the points the curve passes through.
        extrapolate: ``"nan"``: NaN outside the selected points' KL range; ``"flat"``: held at the end values.
        max_cells: replicates are processed in chunks of at most this many R×G×M cells (memory).

    Returns:
        (R, G) curve values; NaN everywhere for a replicate without selected points.
    """
    if extrapolate not in ("nan", "flat"):
        raise ValueError(f"extrapolate must be 'nan' or 'flat', got {extrapolate!r}")
    grid = np.asarray(grid, dtype=float)
    kl = np.atleast_2d(np.asarray(kl, dtype=float))
    reward = np.atleast_2d(np.asarray(reward, dtype=float))
    selected = np.atleast_2d(np.asarray(selected, dtype=bool))
    n_rep, n_pts = kl.shape
    out = np.full((n_rep, grid.size), np.nan)
    if n_pts == 0 or grid.size == 0:
        return out
    step = max(1, max_cells // (grid.size * n_pts))
    x = grid[None, :, None]
    for a in range(0, n_rep, step):
        k, y, s = kl[a : a + step], reward[a : a + step], selected[a : a + step]
        kk, ss = k[:, None, :], s[:, None, :]
        left = ss & (kk <= x)
        right = ss & (kk >= x)
        il = np.where(left, kk, -np.inf).argmax(axis=-1)  # (r, G)
        ir = np.where(right, kk, np.inf).argmin(axis=-1)
        has_l, has_r = left.any(axis=-1), right.any(axis=-1)
        kl_l, kl_r = np.take_along_axis(k, il, axis=1), np.take_along_axis(k, ir, axis=1)
        y_l, y_r = np.take_along_axis(y, il, axis=1), np.take_along_axis(y, ir, axis=1)
        span = kl_r - kl_l
        t = np.where(span > 0, (grid[None, :] - kl_l) / np.where(span > 0, span, 1.0), 0.0)
        val = y_l + t * (y_r - y_l)
        if extrapolate == "flat":
            val = np.where(has_l & ~has_r, y_l, val)
            val = np.where(~has_l & has_r, y_r, val)
            val = np.where(has_l | has_r, val, np.nan)
        else:
            val = np.where(has_l & has_r, val, np.nan)
        out[a : a + step] = val
    return out


# ---------------------------------------------------------------------------------------------------------
# Prompt halves, bootstrap weights, cross-fitting
# ---------------------------------------------------------------------------------------------------------


def split_halves(n_prompts: int, seed: int = HALVES_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split of prompt indices 0..P-1 into halves A (P//2 prompts) and B (the rest), by a seeded
    permutation; each half sorted.  With P < 2 there is nothing to split: both halves are all prompts
    (no cross-fitting)."""
    if n_prompts < 2:
        every = np.arange(n_prompts)
        return every, every
    perm = np.random.default_rng(seed).permutation(n_prompts)
    return np.sort(perm[: n_prompts // 2]), np.sort(perm[n_prompts // 2 :])


def half_weights(n_prompts: int, halves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(2, 1, P) weights of the plain per-half means: 1/|h| on half h's prompts, 0 elsewhere."""
    w = np.zeros((2, 1, n_prompts))
    for h, idx in enumerate(halves):
        w[h, 0, idx] = 1.0 / len(idx)
    return w


def resample_weights(
    n_prompts: int, halves: tuple[np.ndarray, np.ndarray], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(2, R, P) bootstrap weights: replicate r of half h draws |h| of h's prompts with replacement;
    weight = (times drawn) / |h|, so ``weights @ values.T`` are the resampled per-half means."""
    w = np.zeros((2, n_boot, n_prompts))
    for h, idx in enumerate(halves):
        n = len(idx)
        draws = idx[rng.integers(0, n, size=(n_boot, n))]
        flat = (np.arange(n_boot)[:, None] * n_prompts + draws).ravel()
        w[h] = np.bincount(flat, minlength=n_boot * n_prompts).reshape(n_boot, n_prompts) / n
    return w


def seed_counts(uniform: np.ndarray, n_seeds: int) -> np.ndarray:
    """(R, S) times each of a method's ``n_seeds`` seeds is drawn in each replicate.

    ``uniform`` (R, S_max) holds the replicate's shared uniform draws (S_max >= n_seeds); seed position
    ``floor(u · n_seeds)`` of the first ``n_seeds`` columns is drawn, so two methods with the same seed list
    draw the same seeds (paired)."""
    n_rep = uniform.shape[0]
    pos = np.minimum((uniform[:, :n_seeds] * n_seeds).astype(int), n_seeds - 1)
    flat = (np.arange(n_rep)[:, None] * n_seeds + pos).ravel()
    return np.bincount(flat, minlength=n_rep * n_seeds).reshape(n_rep, n_seeds).astype(float)


def _folds(gold: np.ndarray, kl: np.ndarray, weights: np.ndarray):
    """Per fold: (reported KL (R, M), reported reward (R, M), selected (R, M)); fold 0 selects on half A
    and reports half B, fold 1 the reverse."""
    g = weights @ np.asarray(gold, float).T  # (2, R, M)
    k = weights @ np.asarray(kl, float).T
    for pick, show in ((0, 1), (1, 0)):
        _, sel = unimodal_envelope(k[pick], g[pick])
        yield k[show], g[show], sel


def crossfit_curves(gold, kl, weights: np.ndarray, grid, extrapolate: str = "nan") -> np.ndarray:
    """Cross-fitted unimodal-envelope curve of one method and seed, per replicate.

    Args:
        gold, kl: (M, P) per-prompt means of the points.
        weights: (2, R, P) per-half prompt weights (``half_weights`` for the estimate, ``resample_weights``
            for the bootstrap).
        grid: (G,) KLs.
        extrapolate: see ``interp_selected``.

    Returns:
        (R, G): the mean of the two folds' curves.
    """
    curves = [interp_selected(grid, k, g, s, extrapolate) for k, g, s in _folds(gold, kl, weights)]
    return (curves[0] + curves[1]) / 2.0


def crossfit_range(gold, kl, halves: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """KL range ``(lo, hi)`` on which the (non-resampled) cross-fitted curve of ``gold``, ``kl`` (M, P) is
    defined: the intersection of the two folds' selected reported-KL ranges; NaNs without points."""
    gold = np.asarray(gold, float)
    if gold.shape[0] == 0:
        return float("nan"), float("nan")
    los, his = [], []
    for k, _, s in _folds(gold, kl, half_weights(gold.shape[1], halves)):
        los.append(k[0][s[0]].min())
        his.append(k[0][s[0]].max())
    return float(max(los)), float(min(his))


# ---------------------------------------------------------------------------------------------------------
# Statistics of curves on a grid
# ---------------------------------------------------------------------------------------------------------


def value_at(grid, curves, x: float) -> np.ndarray:
    """Curves (..., G) at KL ``x`` by linear interpolation along the grid (G,); shape (...); NaN outside."""
    grid = np.asarray(grid, float)
    curves = np.asarray(curves, float)
    j = int(np.searchsorted(grid, x))
    if j < grid.size and math.isclose(grid[j], x, rel_tol=0, abs_tol=1e-12):
        return curves[..., j]
    if j == 0 or j == grid.size:
        return np.full(curves.shape[:-1], np.nan)
    t = (x - grid[j - 1]) / (grid[j] - grid[j - 1])
    return (1 - t) * curves[..., j - 1] + t * curves[..., j]


def curve_area(grid, curves, lo: float, hi: float) -> np.ndarray:
    """Trapezoid area of curves (..., G) over ``[lo, hi]`` using the grid (G,) points inside plus the
    interpolated ends; shape (...).  NaN where a curve is undefined somewhere on the range or the range is
    not finite / reversed; 0 when ``lo == hi``."""
    grid = np.asarray(grid, float)
    curves = np.asarray(curves, float)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        return np.full(curves.shape[:-1], np.nan)
    inner = (grid > lo) & (grid < hi)
    xs = np.concatenate([[lo], grid[inner], [hi]])
    ys = np.concatenate(
        [value_at(grid, curves, lo)[..., None], curves[..., inner], value_at(grid, curves, hi)[..., None]], axis=-1
    )
    return np.sum(np.diff(xs) * (ys[..., 1:] + ys[..., :-1]) / 2.0, axis=-1)


def curve_max(curves, defined) -> np.ndarray:
    """Max of curves (..., G) over the grid columns where ``defined`` (G,) bool; shape (...); NaN if none."""
    curves = np.asarray(curves, float)
    defined = np.asarray(defined, bool)
    if not defined.any():
        return np.full(curves.shape[:-1], np.nan)
    return np.max(curves[..., defined], axis=-1)


def percentile_interval(reps, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over replicates: reps (R, ...) -> (lo (...), hi (...)).
    NaN wherever some replicate is NaN."""
    reps = np.asarray(reps, float)
    lo = np.full(reps.shape[1:], np.nan)
    hi = np.full(reps.shape[1:], np.nan)
    ok = np.isfinite(reps).all(axis=0)
    if ok.any():
        q = np.percentile(reps[:, ok], [50 * (1 - level), 50 * (1 + level)], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


def stat(est, reps, level: float = LEVEL) -> dict:
    """``dict(est, lo, hi)`` of a scalar statistic: its estimate and the percentile interval of reps (R,)."""
    lo, hi = percentile_interval(np.asarray(reps, float)[:, None], level)
    est = float(est)
    if not np.isfinite(est):
        return dict(est=float("nan"), lo=float("nan"), hi=float("nan"))
    return dict(est=est, lo=float(lo[0]), hi=float(hi[0]))


def sign_runs(grid, lo, hi) -> dict[str, list[tuple[float, float]]]:
    """Classify each grid KL (G,) by a difference's pointwise interval ``[lo, hi]`` (G,): ``above`` where
    lo > 0, ``below`` where hi < 0, else ``indistinguishable``; returns each class's maximal KL intervals
    ``[(start, end), ...]`` (grid points; a run of one point is ``(x, x)``)."""
    grid, lo, hi = (np.asarray(v, float) for v in (grid, lo, hi))
    return dict(
        above=higher_intervals(grid, lo > 0),
        below=higher_intervals(grid, hi < 0),
        indistinguishable=higher_intervals(grid, ~((lo > 0) | (hi < 0))),
    )


def compare_curves(grid, est_a, reps_a, est_b, reps_b, level: float = LEVEL) -> dict | None:
    """A − B for two methods' curves from the SAME bootstrap replicates (paired).

    Args:
        grid: (G,) KLs; est_a, est_b: (G,) estimates (NaN where undefined); reps_a, reps_b: (R, G).

    Returns:
        None when the curves share fewer than two grid KLs, else ``dict(lo, hi, grid (K,), diff (K,),
        diff_lo, diff_hi, area (dict est/lo/hi: ∫ (A − B) dKL over [lo, hi]), mean (area / (hi − lo)),
        runs (``sign_runs``), n_grid)`` on the K grid KLs of the overlap.
    """
    grid = np.asarray(grid, float)
    both = np.isfinite(est_a) & np.isfinite(est_b)
    if both.sum() < 2:
        return None
    g = grid[both]
    diff = np.asarray(est_a)[both] - np.asarray(est_b)[both]
    reps = np.asarray(reps_a)[:, both] - np.asarray(reps_b)[:, both]
    d_lo, d_hi = percentile_interval(reps, level)
    area = stat(curve_area(g, diff, g[0], g[-1]), curve_area(g, reps, g[0], g[-1]), level)
    width = g[-1] - g[0]
    mean = {k: v / width for k, v in area.items()}
    return dict(
        lo=float(g[0]),
        hi=float(g[-1]),
        grid=g,
        diff=diff,
        diff_lo=d_lo,
        diff_hi=d_hi,
        area=area,
        mean=mean,
        runs=sign_runs(g, d_lo, d_hi),
        n_grid=int(g.size),
    )


# ---------------------------------------------------------------------------------------------------------
# The common KL range and the whole analysis
# ---------------------------------------------------------------------------------------------------------


def common_kl_range(
    ranges: Mapping[str, tuple[float, float]], min_kl: float = MIN_COMMON_KL, reference: Sequence[str] = ()
) -> dict:
    """The KL range ``[lo, hi]`` every range-setting method's curve covers.

    Args:
        ranges: ``{method: (lo, hi)}`` of each method's (point-estimate) curve; NaN for no curve.
        min_kl: a method whose curve ends below this while another reaches it does not set the range (it
            would squeeze every comparison into a sliver: Best-of-N with small N, Preferred-FT).
        reference: the methods that are the reference policy itself (one point at KL 0): they never set it.

    Returns:
        ``dict(lo, hi, limited_by, excluded)``: ``limited_by`` the method whose curve ends first,
        ``excluded`` ``{method: reason}``; ``lo = hi = NaN`` when no method can set the range.
    """
    excluded = {}
    setters = []
    for m, (lo, hi) in ranges.items():
        if m in reference:
            excluded[m] = "the reference policy, a single point at KL 0"
        elif not (np.isfinite(lo) and np.isfinite(hi)):
            excluded[m] = "it has no curve"
        else:
            setters.append(m)
    if len(setters) > 1 and any(ranges[m][1] >= min_kl for m in setters):
        for m in [m for m in setters if ranges[m][1] < min_kl]:
            setters.remove(m)
            excluded[m] = (
                f"its curve ends at {ranges[m][1]:.2f} nats, below {min_kl:g}, while other methods reach further"
            )
    if not setters:
        return dict(lo=float("nan"), hi=float("nan"), limited_by=None, excluded=excluded)
    limited_by = min(setters, key=lambda m: ranges[m][1])
    lo, hi = max(ranges[m][0] for m in setters), ranges[limited_by][1]
    if hi < lo:
        return dict(lo=float("nan"), hi=float("nan"), limited_by=None, excluded=excluded)
    return dict(lo=float(lo), hi=float(hi), limited_by=limited_by, excluded=excluded)


def analysis_grid(
    ranges: Mapping[str, tuple[float, float]], extra: Iterable[float] = (), n_grid: int = GRID_POINTS
) -> np.ndarray:
    """(G,) sorted KLs: ``n_grid`` evenly spaced over [min lo, max hi] of the methods' ranges, plus every
    range end and the ``extra`` KLs inside that span (so areas, ends and fixed-KL rewards fall on it)."""
    ends = [v for lo_hi in ranges.values() for v in lo_hi if np.isfinite(v)]
    if not ends:
        return np.zeros(1)
    lo, hi = min(ends), max(ends)
    pts = [np.linspace(lo, hi, n_grid), np.asarray(ends, float)]
    pts.append(np.asarray([x for x in extra if np.isfinite(x) and lo <= x <= hi], float))
    return np.unique(np.concatenate(pts))


def analyse(
    points: Mapping[str, Mapping[Hashable, tuple[np.ndarray, np.ndarray]]],
    kls: Sequence[float] = DEFAULT_KLS,
    pairs: Sequence[tuple[str, str]] = (),
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    n_grid: int = GRID_POINTS,
    min_kl: float = MIN_COMMON_KL,
    reference: Sequence[str] = (),
    level: float = LEVEL,
) -> dict:
    """Every method's cross-fitted curve with bootstrap intervals, its statistics and pairwise differences.

    Args:
        points: ``{method: {seed: (gold (M, P), kl (M, P))}}``, the same P prompts (same order) everywhere.
            A point without per-prompt evidence is a constant row (its aggregate value for every prompt).
        kls: KLs at which each curve's reward is reported.
        pairs: ``(a, b)`` method pairs whose difference a − b is analysed.
        n_boot: bootstrap replicates R; seed: their rng seed.
        n_grid: evenly spaced grid KLs (range ends and ``kls`` are added).
        min_kl, reference: see ``common_kl_range``.

    Returns:
        ``dict(grid (G,), n_prompts, n_boot, halves, range, seeds {m: [seed, ...]}, curves {m: dict(est (G,),
        band_lo (G,), band_hi (G,), reps (R, G), lo, hi)}, stats {m: dict(area, at_kl {x: ...}, max_reward)}``
        (each a ``stat`` dict est/lo/hi), ``comparisons {(a, b): compare_curves dict | None |
        {"missing": [...]}}``).  Estimates are from the full data; intervals are percentile intervals of
        the paired bootstrap.
    """
    points = {
        m: {
            s: (np.asarray(g, float), np.asarray(k, float))
            for s, (g, k) in per_seed.items()
            if np.asarray(g).shape[0] > 0
        }
        for m, per_seed in points.items()
    }
    points = {m: ps for m, ps in points.items() if ps}
    sizes = {g.shape[1] for ps in points.values() for g, _ in ps.values()}
    if len(sizes) > 1:
        raise ValueError(f"points have different prompt counts {sorted(sizes)}: evaluated on different prompts")
    n_prompts = sizes.pop() if sizes else 1
    halves = split_halves(n_prompts)

    seed_ranges = {m: [crossfit_range(g, k, halves) for g, k in ps.values()] for m, ps in points.items()}
    ranges = {}
    for m, rs in seed_ranges.items():
        lo, hi = max(r[0] for r in rs), min(r[1] for r in rs)
        ranges[m] = (lo, hi) if hi >= lo else (float("nan"), float("nan"))
    rng_common = common_kl_range(ranges, min_kl, reference)
    extra = list(kls) + [rng_common["lo"], rng_common["hi"]]
    grid = analysis_grid(ranges, extra, n_grid)

    rng = np.random.default_rng(seed)
    w_est = half_weights(n_prompts, halves)
    w_boot = resample_weights(n_prompts, halves, n_boot, rng)
    max_seeds = max((len(ps) for ps in points.values()), default=1)
    uniform = rng.random((n_boot, max_seeds))

    curves, stats = {}, {}
    for m, ps in points.items():
        seeds = sorted(ps, key=str)
        est = np.mean([crossfit_curves(*ps[s], w_est, grid, "nan")[0] for s in seeds], axis=0)
        per_seed = np.stack([crossfit_curves(*ps[s], w_boot, grid, "flat") for s in seeds])  # (S, R, G)
        counts = seed_counts(uniform, len(seeds))  # (R, S)
        reps = np.einsum("rs,srg->rg", counts, per_seed) / counts.sum(axis=1, keepdims=True)
        defined = np.isfinite(est)
        reps[:, ~defined] = np.nan
        band_lo, band_hi = percentile_interval(reps, level)
        curves[m] = dict(est=est, reps=reps, band_lo=band_lo, band_hi=band_hi, lo=ranges[m][0], hi=ranges[m][1])
        lo, hi = rng_common["lo"], rng_common["hi"]
        if m in rng_common["excluded"]:
            lo = hi = float("nan")
        stats[m] = dict(
            area=stat(curve_area(grid, est, lo, hi), curve_area(grid, reps, lo, hi), level),
            at_kl={x: stat(value_at(grid, est, x), value_at(grid, reps, x), level) for x in kls},
            max_reward=stat(curve_max(est, defined), curve_max(reps, defined), level),
        )

    comparisons = {}
    for a, b in pairs:
        missing = [m for m in (a, b) if m not in curves]
        if missing:
            comparisons[(a, b)] = {"missing": missing}
            continue
        comparisons[(a, b)] = compare_curves(
            grid, curves[a]["est"], curves[a]["reps"], curves[b]["est"], curves[b]["reps"], level
        )
    return dict(
        grid=grid,
        n_prompts=n_prompts,
        n_boot=n_boot,
        halves=halves,
        range=rng_common,
        seeds={m: sorted(ps, key=str) for m, ps in points.items()},
        curves=curves,
        stats=stats,
        comparisons=comparisons,
    )


def pool_methods(
    points: Mapping[str, Mapping[Hashable, tuple[np.ndarray, np.ndarray]]], members: Sequence[str]
) -> dict[Hashable, tuple[np.ndarray, np.ndarray]]:
    """One pseudo-method from several: per seed, the points of every member stacked (``analyse``'s input format).

    Only seeds that every present member has are kept, so a family is compared on the seeds it was run with in
    full.  Its cross-fitted envelope is then the best member at each KL, selected on one half of the prompts and
    reported on the other, so taking the best of several methods is not an upward bias of its own."""
    present = [m for m in members if points.get(m)]
    if not present:
        return {}
    seeds = set.intersection(*(set(points[m]) for m in present))
    return {
        s: (
            np.concatenate([np.asarray(points[m][s][0], float) for m in present]),
            np.concatenate([np.asarray(points[m][s][1], float) for m in present]),
        )
        for s in sorted(seeds, key=str)
    }


def constant_evidence(kl: float, gold: float, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """(gold (P,), kl (P,)) rows for a point without per-prompt evidence: its aggregate values repeated, so
    prompt resampling leaves them fixed."""
    return np.full(n_prompts, float(gold)), np.full(n_prompts, float(kl))
