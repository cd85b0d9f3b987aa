"""The frontier report: expected gold reward vs KL(π‖π_ref), one curve per method.

Every evaluation of every run is one *result row* (see ``REQUIRED_KEYS``), appended to a
``points.jsonl`` in the run's folder.  This module reads the rows of a whole sweep and writes, into the
sweep folder:

- ``points.csv``      all rows, one per line;
- ``frontier.png``    the DPO paper's Fig. 2 (left): every evaluation as a point, one colour and marker
                      per method, and each method's upper envelope (the Pareto frontier);
- ``ablations.png``   (only when some method was swept over a knob) final KL and reward vs the knob;
- ``summary.md``      per method: runs, points, area under the envelope over a common KL range, reward
                      at fixed KLs, max reward (mean ± 95% CI across seeds), the ordering by area, whether
                      DPO lies above PPO, and the Gao et al. (2022) scaling-law fits.

The math is in small pure functions (numpy only, no I/O); plotting and writing sit on top of them.

Rules chosen here (also stated in ``summary.md``):

- **Envelope per seed.**  A method's envelope pools all its settings and steps *within one seed*; every
  number in the summary is computed per seed and reported as mean ± 95% CI across seeds.  On the plot, a
  method with one seed shows its envelope; a method with several seeds shows the mean of its per-seed
  envelopes with a shaded 95% CI band, over the KL range that every seed's envelope covers.
- **Common KL range** for areas: ``[lo, hi]`` with ``hi`` the smallest max-envelope-KL over the per-seed
  envelopes of the *range-setting* methods, and ``lo`` the largest min-envelope-KL over them (0 whenever
  each run has its step-0 evaluation, which the evaluator always makes).  SFT never sets the range (it is
  the reference policy, a single point at KL 0).  Nor does a method whose envelope ends below
  ``MIN_COMMON_KL`` (2 nats) while another method reaches that far — Best-of-N with small N (N ≤ 16 gives at
  most 1.8 nats), Preferred-FT's single setting: it would squeeze every comparison into a sliver, so it is
  left out of the range and its own area is "—".  Any method whose envelope does not cover the range gets "—" for its area.
- **Gao fits** use every point of a method (all settings, steps and seeds) and the reward at KL = 0
  measured on the same reference policy: the method's own KL≈0 points if it has any, else those of any
  method in the sweep (every step-0 evaluation is of π_SFT = π_ref), else 0 (stated in the table).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# Row schema and display conventions
# ---------------------------------------------------------------------------------------------------------

REQUIRED_KEYS = (
    "method", "setting", "seed", "step", "kl", "kl_sem", "kl_sample", "gold_reward",
    "gold_reward_sem", "proxy_reward", "response_tokens", "wall_s", "run_id",
)

# Fixed order, label, colour (Okabe–Ito, colour-blind safe) and marker per method, so that a method looks
# the same in every figure of every sweep.
METHOD_STYLE = {
    "ppo":          ("PPO (learned RM)",     "#D55E00", "s"),
    "ppo_gt":       ("PPO-GT (gold reward)", "#E69F00", "D"),
    "dpo":          ("DPO",                  "#0072B2", "o"),
    "ipo":          ("IPO",                  "#56B4E9", "v"),
    "cdpo":         ("cDPO",                 "#009E73", "^"),
    "unlikelihood": ("Unlikelihood",         "#CC79A7", "P"),
    "preferred_ft": ("Preferred-FT",         "#8C564B", "X"),
    "best_of_n":    ("Best of N",            "#555555", "*"),
    "sft":          ("SFT",                  "#000000", "h"),
}
_FALLBACK_COLOURS = ("#7F3C8D", "#11A579", "#3969AC", "#F2B701", "#E73F74", "#80BA5A")

MIN_COMMON_KL = 2.0     # nats; a method whose envelope ends below this does not set the common KL range
ZERO_KL = 1e-6          # nats; points below this are evaluations of the reference policy itself
DEFAULT_KLS = (2.0, 5.0, 10.0)
GRID_POINTS = 50        # KL grid for the DPO-vs-PPO comparison and the plotted mean envelopes
KL_LABEL = "KL(π‖π_ref)  [nats]"
REWARD_LABEL = "Expected gold reward"

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30; beyond 30 we use the normal 1.96
# (at df = 40 the exact value is 2.021, so the band is then at most 3% too narrow).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def method_label(method: str) -> str:
    """Readable name of a method for legends and tables ("ppo" -> "PPO (learned RM)")."""
    return METHOD_STYLE.get(method, (method,))[0]


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method; unknown methods get a stable fallback from their name."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method][1], METHOD_STYLE[method][2]
    colour = _FALLBACK_COLOURS[sum(map(ord, method)) % len(_FALLBACK_COLOURS)]
    return colour, "."


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """Methods in the fixed display order of METHOD_STYLE, unknown ones after, alphabetically."""
    known = list(METHOD_STYLE)
    return sorted(set(methods), key=lambda m: (known.index(m) if m in known else len(known), m))


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

def load_points(folder: str | Path) -> list[dict]:
    """Read every result row under ``folder``.

    Args:
        folder: a sweep (or run) folder; every ``points.jsonl`` below it, at any depth, is read in sorted
            path order.

    Returns:
        The rows as dicts, in file order.  Blank lines are skipped.  A row repeated verbatim (the same run
        reached through two files, e.g. a copied run folder) is kept once, so that nothing is counted twice.
        An empty list when there is no ``points.jsonl``.

    Raises:
        ValueError: one line, ``<file>:<line>: ...``, for a line that is not a JSON object or lacks one of
            ``REQUIRED_KEYS`` (the missing keys are named).
    """
    rows, seen = [], set()
    for path in sorted(Path(folder).rglob("points.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: bad JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                missing = [k for k in REQUIRED_KEYS if k not in row]
                if missing:
                    raise ValueError(f"{path}:{lineno}: missing key(s) {', '.join(map(repr, missing))}")
                key = json.dumps(row, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return rows


def parse_setting(setting: str) -> dict[str, str]:
    """``"cliprange=0.2,cliprange_value=0.2"`` -> ``{"cliprange": "0.2", "cliprange_value": "0.2"}``."""
    knobs = {}
    for part in (setting or "").split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            knobs[name.strip()] = value.strip()
    return knobs


# ---------------------------------------------------------------------------------------------------------
# Pure math: envelopes, areas, fits, confidence intervals
# ---------------------------------------------------------------------------------------------------------

def upper_envelope(kl: Sequence[float], reward: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The upper envelope (Pareto frontier) of reward vs KL.

    A point is kept when no other point has KL <= its KL and reward >= its reward (of exact duplicates one
    is kept).  Non-finite points are ignored.

    Returns:
        ``(kl_env, reward_env)``, both shape (M,), with KL strictly increasing and reward strictly
        increasing: each frontier point buys more reward with more KL.
    """
    kl = np.asarray(kl, dtype=float).ravel()
    reward = np.asarray(reward, dtype=float).ravel()
    ok = np.isfinite(kl) & np.isfinite(reward)
    kl, reward = kl[ok], reward[ok]
    order = np.lexsort((-reward, kl))          # by KL, ties: highest reward first
    keep_kl, keep_r, best = [], [], -np.inf
    for i in order:
        if reward[i] > best:                   # strictly better than everything at lower or equal KL
            keep_kl.append(kl[i])
            keep_r.append(reward[i])
            best = reward[i]
    return np.asarray(keep_kl, dtype=float), np.asarray(keep_r, dtype=float)


def envelope_at(kl_env: np.ndarray, reward_env: np.ndarray, x) -> np.ndarray | float:
    """Reward of the envelope at KL ``x`` by linear interpolation; NaN outside ``[kl_env[0], kl_env[-1]]``.

    ``x`` may be a scalar (a float is returned) or an array.  An empty envelope gives NaN everywhere.
    """
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
    """Area under the linearly interpolated envelope over ``[lo, hi]`` (reward × nats).

    Exact for the piecewise-linear envelope: the trapezoid rule on the envelope's own vertices inside the
    range plus the two interpolated end points.  NaN when the envelope does not cover ``[lo, hi]`` (we do not
    extrapolate) or when ``hi < lo``; 0 when ``lo == hi``.  Divide by ``hi - lo`` for the mean reward over
    the range.
    """
    kl_env = np.asarray(kl_env, dtype=float)
    reward_env = np.asarray(reward_env, dtype=float)
    if kl_env.size == 0 or not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        return float("nan")
    if lo < kl_env[0] or hi > kl_env[-1]:
        return float("nan")
    inner = (kl_env > lo) & (kl_env < hi)
    xs = np.concatenate([[lo], kl_env[inner], [hi]])
    ys = np.concatenate([[envelope_at(kl_env, reward_env, lo)], reward_env[inner],
                         [envelope_at(kl_env, reward_env, hi)]])
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def fit_gao(kl: Sequence[float], reward: Sequence[float], kind: str, baseline: float | None = None) -> dict:
    """Least-squares fit of the Gao et al. (2022) scaling laws, with d = sqrt(KL) (KL in nats).

    - ``kind="rl"``:  R(d) = d · (alpha − beta · log d)   (RL against a reward model)
    - ``kind="bon"``: R(d) = d · (alpha − beta · d)       (best-of-N sampling)

    R is the gain over the reference policy, ``reward − R0``.  The baseline R0 is ``baseline`` when given,
    else the mean reward of the points with KL < 1e-6 (evaluations of the reference itself), else 0 — in
    which case the curve is forced through the origin on the raw reward, which only makes sense if rewards
    are already gains.  Both laws are linear in (alpha, beta), so the fit is one ``lstsq`` on all points
    (d·log d → 0 at d = 0).

    Returns:
        ``dict(alpha, beta, r2, n, baseline)``: r2 = 1 − SS_res/SS_tot of the gain (NaN if the gains do
        not vary), n the number of finite points used.  alpha, beta, r2 are NaN with fewer than two points
        at KL > 0.
    """
    if kind not in ("rl", "bon"):
        raise ValueError(f"kind must be 'rl' or 'bon', got {kind!r}")
    kl = np.asarray(kl, dtype=float).ravel()
    reward = np.asarray(reward, dtype=float).ravel()
    ok = np.isfinite(kl) & np.isfinite(reward)
    kl, reward = np.clip(kl[ok], 0.0, None), reward[ok]   # exact KL is >= 0; clip float noise below 0
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
    """The fitted gain R(d) of ``fit_gao`` evaluated at d = sqrt(KL)."""
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
    """Mean and half-width of its 95% confidence interval, ``t_{0.975, n−1} · s / sqrt(n)``.

    Non-finite values are dropped first (callers report how many remained).  ``s`` is the sample standard
    deviation (ddof = 1); the t quantile comes from a table for df 1..30 and is 1.96 beyond.  With one value
    the half-width is NaN (no spread to estimate); with none both are NaN.
    """
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(t_quantile_975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def higher_intervals(grid: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Maximal runs of consecutive grid points where ``mask`` is True, as ``[(start, end), ...]`` in KL."""
    runs, start = [], None
    for i, flag in enumerate(mask):
        if flag and start is None:
            start = i
        if start is not None and (not flag or i == len(mask) - 1):
            end = i if flag else i - 1
            runs.append((float(grid[start]), float(grid[end])))
            start = None
    return runs


def compare_envelopes(kl_a, reward_a, kl_b, reward_b, n_grid: int = GRID_POINTS) -> dict | None:
    """Compare curve A with curve B on ``n_grid`` KLs spread evenly over the overlap of their KL ranges.

    Returns ``None`` when the ranges do not overlap (or meet in a single point), else
    ``dict(lo, hi, grid, a, b, b_higher)`` with ``b_higher`` the list of KL intervals (grid points) where B
    is strictly above A, and ``ties`` the number of grid points where they are equal.
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
    return dict(lo=float(lo), hi=float(hi), grid=grid, a=a, b=b,
                b_higher=higher_intervals(grid, b > a), ties=int(np.sum(np.isclose(a, b, rtol=0, atol=1e-12))))


# ---------------------------------------------------------------------------------------------------------
# From rows to per-method, per-seed envelopes and summary numbers
# ---------------------------------------------------------------------------------------------------------

def _by(rows: Iterable[dict], *keys: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]].append(r)
    return groups


def seed_envelopes(rows: Sequence[dict]) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """``{method: {seed: (kl_env, reward_env)}}``: each method's envelope over all its settings and steps,
    one per seed."""
    out: dict[str, dict] = {}
    for (method, seed), group in sorted(_by(rows, "method", "seed").items(), key=lambda kv: str(kv[0])):
        env = upper_envelope([r["kl"] for r in group], [r["gold_reward"] for r in group])
        if env[0].size:
            out.setdefault(method, {})[seed] = env
    return out


def common_kl_range(envelopes: dict[str, dict[int, tuple]], min_kl: float = MIN_COMMON_KL) -> dict:
    """The KL range ``[lo, hi]`` over which every range-setting method's every seed has an envelope.

    SFT never sets the range; nor does a method whose envelope ends below ``min_kl`` nats while some other
    method reaches that far (module docstring).  Returns ``dict(lo, hi, limited_by, excluded)``, where
    ``limited_by`` is the method whose envelope ends first and ``excluded`` maps left-out methods to the
    reason; ``lo = hi = NaN`` when no method can set the range.
    """
    def ends(methods):
        his = {m: min(e[0][-1] for e in envelopes[m].values()) for m in methods}
        los = {m: max(e[0][0] for e in envelopes[m].values()) for m in methods}
        return los, his

    excluded = {}
    setters = [m for m in envelopes if m != "sft"]
    if "sft" in envelopes:
        excluded["sft"] = "the reference policy, a single point at KL 0"
    if len(setters) > 1:
        # A method whose envelope ends below ``min_kl`` (Best-of-N with small N, Preferred-FT's one setting) would
        # squeeze every comparison into a sliver; it does not set the range while others reach ``min_kl``.
        _, his = ends(setters)
        if any(h >= min_kl for h in his.values()):
            for m in [m for m in setters if his[m] < min_kl]:
                setters.remove(m)
                excluded[m] = (f"its envelope ends at {his[m]:.2f} nats, below {min_kl:g}, while other methods "
                               "reach further")
    if not setters:
        return dict(lo=float("nan"), hi=float("nan"), limited_by=None, excluded=excluded)
    los, his = ends(setters)
    limited_by = min(his, key=his.get)
    return dict(lo=float(max(los.values())), hi=float(his[limited_by]), limited_by=limited_by,
                excluded=excluded)


def mean_envelope(per_seed: dict[int, tuple[np.ndarray, np.ndarray]], n_grid: int = 200):
    """Mean and 95% CI half-width across seeds of the per-seed envelopes.

    Evaluated on ``n_grid`` KLs over the range that every seed covers.  Returns ``(grid, mean, half_width)``
    (half-width NaN with one seed), or ``None`` when the seeds' ranges do not overlap.
    """
    envs = list(per_seed.values())
    if len(envs) == 1:
        kl_env, r_env = envs[0]
        return kl_env, r_env, np.full(kl_env.shape, np.nan)
    lo, hi = max(e[0][0] for e in envs), min(e[0][-1] for e in envs)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, n_grid)
    curves = np.stack([envelope_at(k, r, grid) for k, r in envs])
    stats = [mean_ci95(col) for col in curves.T]
    return grid, np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


def summarize(rows: Sequence[dict], kls: Sequence[float] = DEFAULT_KLS,
              min_kl: float = MIN_COMMON_KL) -> dict:
    """All numbers of the report, computed from the rows (no I/O).

    Returns a dict with ``methods`` (display order), ``range`` (``common_kl_range``), ``kls``, ``per_method``
    ``{method: dict(runs, points, seeds, area, at_kl{kl: values}, max_reward)}`` where each statistic is the
    list of per-seed values, ``ordering`` (methods by mean area, best first, methods without an area
    left out), ``comparisons`` (DPO vs PPO and vs PPO-GT, see ``compare_envelopes``) and ``fits``.
    """
    envs = seed_envelopes(rows)
    rng = common_kl_range(envs, min_kl)
    methods = ordered_methods(r["method"] for r in rows)
    by_method = _by(rows, "method")
    per_method = {}
    for m in methods:
        group = by_method[m]
        seeds = envs.get(m, {})
        per_method[m] = dict(
            runs=len({r["run_id"] for r in group}),
            points=len(group),
            seeds=sorted(seeds, key=str),
            area=[envelope_area(k, r, rng["lo"], rng["hi"]) if m not in rng["excluded"] else float("nan")
                  for k, r in seeds.values()],
            at_kl={x: [envelope_at(k, r, x) for k, r in seeds.values()] for x in kls},
            max_reward=[float(r[-1]) for _, r in seeds.values()],
        )
    area_mean = {m: mean_ci95(per_method[m]["area"])[0] for m in methods}
    ordering = sorted((m for m in methods if np.isfinite(area_mean[m])), key=lambda m: -area_mean[m])

    comparisons = {}
    for rival in ("ppo", "ppo_gt"):
        missing = [m for m in ("dpo", rival) if m not in envs]
        if missing:
            comparisons[rival] = {"missing": missing}
            continue
        a, b = mean_envelope(envs["dpo"]), mean_envelope(envs[rival])
        comparisons[rival] = None if a is None or b is None else compare_envelopes(a[0], a[1], b[0], b[1])

    reference = [r["gold_reward"] for r in rows if r["kl"] < ZERO_KL and np.isfinite(r["gold_reward"])]
    fits = {}
    for m in methods:
        if m == "sft":
            continue
        group = by_method[m]
        own = [r["gold_reward"] for r in group if r["kl"] < ZERO_KL]
        baseline = float(np.mean(own)) if own else (float(np.mean(reference)) if reference else None)
        kind = "bon" if m == "best_of_n" else "rl"
        fit = fit_gao([r["kl"] for r in group], [r["gold_reward"] for r in group], kind, baseline=baseline)
        fit.update(kind=kind, baseline_from="own KL≈0 points" if own else
                   ("other methods' KL≈0 points" if reference else "none (R0 = 0)"))
        fits[m] = fit
    return dict(methods=methods, range=rng, kls=tuple(kls), per_method=per_method, ordering=ordering,
                area_mean=area_mean, comparisons=comparisons, fits=fits, n_rows=len(rows),
                seeds=sorted({r["seed"] for r in rows}, key=str))


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------

def fmt_num(x: float, digits: int = 3) -> str:
    """A number for the tables; NaN / None as an em dash."""
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}f}"


def fmt_stat(values: Sequence[float], digits: int = 3) -> str:
    """Per-seed values as "mean ± CI95" (just the value with one seed), with "(k/n seeds)" when some
    seeds have no value (e.g. their envelope does not reach that KL)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "—"
    mean, hw = mean_ci95(finite)
    text = fmt_num(mean, digits) if len(values) == 1 or not np.isfinite(hw) else \
        f"{fmt_num(mean, digits)} ± {fmt_num(hw, digits)}"
    if len(finite) < len(values):
        text += f" ({len(finite)}/{len(values)} seeds)"
    return text


def comparison_sentence(comparison, rival: str = "ppo") -> str:
    """The plain-words verdict on whether DPO's envelope lies above ``rival``'s (see ``summarize``)."""
    name = "PPO" if rival == "ppo" else method_label(rival)
    if isinstance(comparison, dict) and "missing" in comparison:
        absent = " and ".join("DPO" if m == "dpo" else name for m in comparison["missing"])
        return f"DPO vs {name}: not compared, this sweep has no {absent} rows."
    if comparison is None:
        return f"DPO vs {name}: not compared, their envelopes do not overlap in KL."
    lo, hi, n = comparison["lo"], comparison["hi"], len(comparison["grid"])
    if not comparison["b_higher"]:
        ties = f" (equal at {comparison['ties']} of {n} grid points)" if comparison["ties"] else ""
        return f"DPO lies above {name} at every KL in [{lo:.2f}, {hi:.2f}] nats{ties}."
    spans = ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in comparison["b_higher"])
    return (f"DPO does not lie above {name} everywhere: {name} is higher on {spans} nats "
            f"(overlap [{lo:.2f}, {hi:.2f}], {n}-point grid).")


def format_summary(summary: dict, title: str | None = None) -> str:
    """The ``summary.md`` text for a ``summarize`` result."""
    rng, kls, pm = summary["range"], summary["kls"], summary["per_method"]
    lo, hi = rng["lo"], rng["hi"]
    lines = [f"# Frontier report{': ' + title if title else ''}", ""]
    n_seeds = len(summary["seeds"])
    lines.append(f"{summary['n_rows']} evaluation points, {len(summary['methods'])} methods, "
                 f"{n_seeds} seed{'s' if n_seeds != 1 else ''}. KL is the mean sequence KL(π‖π_ref) in nats; "
                 "reward is the expected gold reward.")
    lines.append("")
    if np.isfinite(lo):
        limit = f"where the envelope of {method_label(rng['limited_by'])} ends"
        lines.append(f"Common KL range for areas: [{lo:.2f}, {hi:.2f}] nats (the upper end is {limit}; "
                     "every seed's envelope of every range-setting method covers it).")
    else:
        lines.append("Common KL range for areas: none (no method besides SFT has points).")
    for m, why in rng["excluded"].items():
        lines.append(f"- {method_label(m)} does not set the range: {why}.")
    lines.append("")
    stat_note = "mean ± 95% CI across seeds, envelope per seed" if n_seeds > 1 else "one seed"
    lines.append(f"Per method ({stat_note}; — = not defined, e.g. the envelope does not reach that KL):")
    lines.append("")
    area_head = f"area KL∈[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "area"
    head = ["method", "runs", "points", area_head] + [f"reward @ KL={x:g}" for x in kls] + ["max reward"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for m in summary["methods"]:
        s = pm[m]
        cells = [method_label(m), str(s["runs"]), str(s["points"]), fmt_stat(s["area"])]
        cells += [fmt_stat(s["at_kl"][x]) for x in kls] + [fmt_stat(s["max_reward"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if summary["ordering"]:
        order = " > ".join(f"{method_label(m)} ({fmt_num(summary['area_mean'][m])})"
                           for m in summary["ordering"])
        lines.append(f"**Ordering** by area under the envelope (mean over seeds): {order}.")
        rest = [method_label(m) for m in summary["methods"] if m not in summary["ordering"]]
        if rest:
            lines.append(f"Without an area over the common range: {', '.join(rest)}.")
    else:
        lines.append("**Ordering**: none, no method has an area over a common KL range.")
    lines.append("")
    for rival in ("ppo", "ppo_gt"):
        comparison = summary["comparisons"][rival]
        if rival == "ppo" or not (isinstance(comparison, dict) and rival in comparison.get("missing", [])):
            lines.append(comparison_sentence(comparison, rival))
            lines.append("")
    lines.append("Curves compared: each method's envelope (the mean of its per-seed envelopes when there are "
                 f"several seeds) on a {GRID_POINTS}-point KL grid over the overlap of the two curves.")
    lines.append("")
    lines.append("## Gao et al. (2022) scaling-law fits")
    lines.append("")
    lines.append("d = sqrt(KL); RL-like methods: R(d) = d·(α − β·log d); Best of N: R(d) = d·(α − β·d); "
                 "R = gold reward − R0 (reward at KL = 0). Fitted by least squares on all points of the "
                 "method (all settings, steps and seeds).")
    lines.append("")
    lines.append("| method | law | α | β | R² | n | R0 | R0 from |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---|")
    for m, f in summary["fits"].items():
        lines.append(f"| {method_label(m)} | {f['kind']} | {fmt_num(f['alpha'])} | {fmt_num(f['beta'])} | "
                     f"{fmt_num(f['r2'])} | {f['n']} | {fmt_num(f['baseline'])} | {f['baseline_from']} |")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Figures (object-oriented matplotlib: no pyplot state, so make_report is safe in any process)
# ---------------------------------------------------------------------------------------------------------

def _new_axes(figsize):
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_frontier(rows: Sequence[dict], ax=None, title: str | None = None):
    """Draw the frontier: every evaluation as a point, each method's envelope as a line, on ``ax``.

    One colour and marker per method (``METHOD_STYLE``).  With several seeds a method's line is the mean of
    its per-seed envelopes and the shaded band its 95% CI.  Creates a standalone figure when ``ax`` is None.

    Returns:
        The axes.
    """
    if ax is None:
        _, ax = _new_axes((8.0, 5.2))
    envs = seed_envelopes(rows)
    by_method = _by(rows, "method")
    seed_counts = {len(envs[m]) for m in envs if m != "sft"}
    # one seed count for all curves goes into the legend title; mixed counts go into each label
    shared_seeds = seed_counts.pop() if len(seed_counts) == 1 else None
    # gold rewards live in [0, 1]; a mean's CI band beyond that says nothing, so clip it there
    bounded = all(0.0 <= r["gold_reward"] <= 1.0 for r in rows if np.isfinite(r["gold_reward"]))
    for m in ordered_methods(by_method):
        colour, marker = method_style(m)
        group = by_method[m]
        kl = np.array([r["kl"] for r in group], dtype=float)
        reward = np.array([r["gold_reward"] for r in group], dtype=float)
        single = m == "sft" or len({(round(k, 9), round(v, 9)) for k, v in zip(kl, reward)}) == 1
        ax.scatter(kl, reward, s=80 if single else 22, marker=marker, color=colour,
                   alpha=0.9 if single else 0.35, linewidths=0, zorder=5 if single else 2,
                   label=method_label(m) if single else None)
        if single or m not in envs:
            continue
        curve = mean_envelope(envs[m])
        if curve is None:
            continue
        grid, mean, hw = curve
        n_seeds = len(envs[m])
        suffix = f" ({n_seeds} seeds)" if shared_seeds is None and n_seeds > 1 else ""
        ax.plot(grid, mean, color=colour, lw=2.2, zorder=4, marker=marker if n_seeds == 1 else None,
                markersize=10 if marker == "*" else 6, markeredgecolor="white", markeredgewidth=0.6,
                label=method_label(m) + suffix)
        if n_seeds > 1 and np.isfinite(hw).any():
            low, high = mean - hw, mean + hw
            if bounded:
                low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
            ax.fill_between(grid, low, high, color=colour, alpha=0.10, linewidth=0, zorder=1)
    ax.set_xlabel(KL_LABEL)
    ax.set_ylabel(REWARD_LABEL)
    ax.set_title(title or "Reward vs KL frontier")
    ax.grid(True, alpha=0.3)
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    if ax.get_legend_handles_labels()[0]:
        legend_title = (f"mean of {shared_seeds} per-seed envelopes, band: 95% CI"
                        if shared_seeds and shared_seeds > 1 else None)
        ax.legend(loc="lower right", fontsize=8, title=legend_title, title_fontsize=8, framealpha=0.9)
    return ax


def ablation_panels(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """``[(method, knob), ...]`` for every knob that takes more than one value within a method."""
    panels = []
    for m in ordered_methods(r["method"] for r in rows):
        values = defaultdict(set)
        for r in rows:
            if r["method"] == m:
                for knob, value in parse_setting(r["setting"]).items():
                    values[knob].add(value)
        panels += [(m, knob) for knob in sorted(values) if len(values[knob]) > 1]
    return panels


def final_points(rows: Sequence[dict]) -> list[dict]:
    """The last evaluation (highest step) of every run; a run is a (run_id, setting, seed) triple, so that
    Best-of-N's one-row-per-N (all at step 0) counts each N as its own run."""
    last = {}
    for r in rows:
        key = (r["run_id"], r["setting"], r["seed"], r["method"])
        if key not in last or r["step"] >= last[key]["step"]:
            last[key] = r
    return list(last.values())


def _knob_value(value: str):
    try:
        return float(value)
    except ValueError:
        return None


def plot_knob(rows: Sequence[dict], method: str, knob: str, ax_reward, ax_kl) -> None:
    """Final gold reward (on ``ax_reward``) and final KL (on ``ax_kl``) of ``method``'s runs vs ``knob``.

    Each run is a faint point, the mean over runs (seeds, other knobs) at each knob value a line.  Numeric
    knobs spanning a factor ≥ 20 get a log axis; non-numeric values are placed evenly as categories.
    """
    colour, marker = method_style(method)
    finals = [r for r in final_points(rows) if r["method"] == method and knob in parse_setting(r["setting"])]
    raw = [parse_setting(r["setting"])[knob] for r in finals]
    numeric = all(_knob_value(v) is not None for v in raw)
    if numeric:
        xs = np.array([_knob_value(v) for v in raw])
        levels = sorted(set(xs.tolist()))
    else:
        levels_raw = sorted(set(raw))
        xs = np.array([levels_raw.index(v) for v in raw], dtype=float)
        levels = list(range(len(levels_raw)))
    for ax, key, ylabel in ((ax_reward, "gold_reward", "final gold reward"), (ax_kl, "kl", "final KL [nats]")):
        ys = np.array([r[key] for r in finals], dtype=float)
        ax.scatter(xs, ys, color=colour, marker=marker, alpha=0.4, s=28, linewidths=0)
        means = [np.nanmean(ys[xs == lv]) for lv in levels]
        ax.plot(levels, means, color=colour, marker=marker, lw=1.8, markersize=6)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if numeric and min(levels) > 0 and max(levels) / min(levels) >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(levels, levels_raw)
    ax_reward.set_title(f"{method_label(method)}: {knob}", fontsize=10)
    ax_kl.set_xlabel(knob)


def plot_ablation(rows: Sequence[dict], panels: Sequence[tuple[str, str]] | None = None, fig=None):
    """One column per (method, knob) panel, final reward on top and final KL below (see ``plot_knob``).

    ``panels`` defaults to ``ablation_panels(rows)``.  Draws into ``fig`` (a matplotlib Figure) or a new
    standalone Figure; returns the figure, or None when there is nothing to draw.
    """
    panels = ablation_panels(rows) if panels is None else list(panels)
    if not panels:
        return None
    if fig is None:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(3.4 * len(panels), 5.6), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, (method, knob) in enumerate(panels):
        plot_knob(rows, method, knob, axes[0, j], axes[1, j])
    fig.suptitle("Ablations: last evaluation of each run vs the swept knob")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Writing the report
# ---------------------------------------------------------------------------------------------------------

def write_points_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """All rows to CSV: the schema's columns first, any extra keys after (sorted); null as empty."""
    extras = sorted({k for r in rows for k in r} - set(REQUIRED_KEYS))
    columns = list(REQUIRED_KEYS) + extras
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return Path(path)


def make_report(folder: str | Path, kls: Sequence[float] = DEFAULT_KLS, title: str | None = None,
                rows: Sequence[dict] | None = None) -> dict[str, Path]:
    """Write ``points.csv``, ``frontier.png``, ``summary.md`` (and ``ablations.png`` when some method was
    swept over a knob) into ``folder``.

    Args:
        folder: the sweep folder; its ``points.jsonl`` files are read unless ``rows`` is given.
        kls: KLs (nats) at which the summary interpolates each envelope.
        title: plot and summary title, e.g. the task name.
        rows: result rows, if already loaded.

    Returns:
        ``{"points_csv", "frontier_png", "summary_md"[, "ablations_png"]}`` -> paths.

    Raises:
        ValueError: when there are no rows.
    """
    folder = Path(folder)
    rows = load_points(folder) if rows is None else list(rows)
    if not rows:
        raise ValueError(f"{folder}: no result rows (no points.jsonl with data below it)")
    paths = {"points_csv": write_points_csv(rows, folder / "points.csv")}

    fig, ax = _new_axes((8.0, 5.2))
    plot_frontier(rows, ax=ax, title=title)
    paths["frontier_png"] = folder / "frontier.png"
    fig.savefig(paths["frontier_png"], dpi=150)

    abl = plot_ablation(rows)
    if abl is not None:
        paths["ablations_png"] = folder / "ablations.png"
        abl.savefig(paths["ablations_png"], dpi=120)

    paths["summary_md"] = folder / "summary.md"
    paths["summary_md"].write_text(format_summary(summarize(rows, kls), title), encoding="utf-8")
    return paths


def log_report_to_wandb(folder: str | Path, rows: Sequence[dict], run, title: str = "Reward vs KL frontier") -> None:
    """Log the frontier to an active W&B run.

    Keys: ``frontier/points`` (a ``wandb.Table`` of all rows, schema columns), ``frontier/scatter`` (a
    gold-reward-vs-KL scatter chart on that table) and ``frontier/plot`` (``frontier.png`` from ``folder``,
    drawn by ``make_report`` first if it is not there yet).
    """
    import wandb

    png = Path(folder) / "frontier.png"
    if not png.exists():
        make_report(folder, rows=rows, title=title)
    columns = list(REQUIRED_KEYS)
    table = wandb.Table(columns=columns, data=[[r[k] for k in columns] for r in rows])
    run.log({
        "frontier/points": table,
        "frontier/scatter": wandb.plot.scatter(table, "kl", "gold_reward", title=title),
        "frontier/plot": wandb.Image(str(png)),
    })


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI: ``python -m harness.report <folder> [--title T] [--kl 2 5 10]``; prints the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="sweep folder; every points.jsonl below it is read")
    parser.add_argument("--title", default=None, help="plot and summary title (e.g. the task name)")
    parser.add_argument("--kl", type=float, nargs="+", default=list(DEFAULT_KLS),
                        help="KLs (nats) at which to report each envelope's reward")
    args = parser.parse_args(argv)
    paths = make_report(args.folder, kls=args.kl, title=args.title)
    print(paths["frontier_png"])
    print(paths["summary_md"])
    return paths


if __name__ == "__main__":
    main()
