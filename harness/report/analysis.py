"""From result rows (and their per-prompt evidence) to every number of the report: no I/O, no drawing.

``summarize`` joins rows to evidence (``evidence_points``), runs ``harness.report.stats.analyse`` (cross-fitted
curves, the paired bootstrap, areas, the comparisons the caller names), fits the Gao et al. (2022) laws per method
(``gao_fits``) and pools the online and offline families into one curve each (``family_comparison``). What a method
is (its family, its Gao law, whether it is the reference policy) comes from the registry records the caller passes.

Rules (also stated in ``summary.md``):

- **Rows without evidence** (older sweeps) enter with their aggregate ``kl`` and ``gold_reward`` as fixed
  values: prompt resampling does not move them.
- **Common KL range** for areas: the overlap of the range-setting methods' curves.  The reference policy never
  sets it; nor does a method whose curve ends below ``MIN_COMMON_KL`` (2 nats) while another reaches that far
  (Best-of-N with small N, Preferred-FT): it would squeeze every comparison into a sliver.  A method whose curve
  does not cover the range gets "—" for its area.
- **Gao fits** use every point of a method (all settings, steps and seeds) and the reward at KL = 0 measured
  on the reference policy: the method's own KL≈0 points if any, else those of any method, else 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from harness.eval.row import evidence_key
from harness.methods import Method, in_family
from harness.report import stats
from harness.report.rows import finite, gao_form, group_by, ordered_methods, reference_methods

# The family comparison (Tang et al. 2024): online methods learn from samples of the policy being trained, scored by
# the learned reward model; offline ones from the fixed preference set. Members are the registry's records with
# that family (the gold-reward variants and the baselines are in neither).
FAMILY_COMPARISON = ("online", "offline")


def evidence_points(rows: Sequence[dict], evidence: dict | None = None):
    """Per-prompt point arrays for ``harness.report.stats.analyse``.

    Args:
        rows: result rows; rows with a non-finite ``kl`` or ``gold_reward`` are left out.
        evidence: ``load_evidence`` output (or None).

    Returns:
        ``(points, info)``: ``points = {method: {seed: (gold (M, P), kl (M, P))}}``; a row without (finite)
        evidence gets its aggregate values as constant rows.  ``info = dict(n_prompts, with_evidence,
        without_evidence, prompts_key)`` (counts of rows).

    Raises:
        ValueError: when the joined evidence comes from different prompts.
    """
    evidence = evidence or {}
    keys, sizes = set(), set()
    joined = []
    for r in rows:
        if not (finite(r.get("kl")) and finite(r.get("gold_reward"))):
            continue
        ev = evidence.get(evidence_key(r))
        if ev is not None and not (np.isfinite(ev["gold"]).all() and np.isfinite(ev["kl"]).all()):
            ev = None
        if ev is not None:
            keys.add(ev["prompts_key"])
            sizes.add(ev["gold"].size)
        joined.append((r, ev))
    if len(keys) > 1 or len(sizes) > 1:
        raise ValueError(
            f"the runs were evaluated on different prompts (prompts_key {sorted(map(str, keys))}, "
            f"prompt counts {sorted(sizes)})"
        )
    n_prompts = sizes.pop() if sizes else 2
    grouped: dict[str, dict] = {}
    n_with = 0
    for r, ev in joined:
        if ev is not None:
            gold, kl = ev["gold"], ev["kl"]
            n_with += 1
        else:
            gold, kl = stats.constant_evidence(r["kl"], r["gold_reward"], n_prompts)
        grouped.setdefault(r["method"], {}).setdefault(r["seed"], []).append((gold, kl))
    points = {
        m: {s: (np.stack([g for g, _ in pts]), np.stack([k for _, k in pts])) for s, pts in per_seed.items()}
        for m, per_seed in grouped.items()
    }
    info = dict(
        n_prompts=n_prompts if n_with else 0,
        with_evidence=n_with,
        without_evidence=len(joined) - n_with,
        prompts_key=keys.pop() if keys else None,
    )
    return points, info


def summarize(
    rows: Sequence[dict],
    methods: Mapping[str, Method],
    comparisons: Sequence[tuple[str, str]] = (),
    kls: Sequence[float] = stats.DEFAULT_KLS,
    evidence: dict | None = None,
    n_boot: int = stats.N_BOOT,
    min_kl: float = stats.MIN_COMMON_KL,
    seed: int = stats.BOOT_SEED,
    n_grid: int = stats.GRID_POINTS,
) -> dict:
    """All numbers of the report (no I/O).

    Args:
        rows: result rows; evidence: ``load_evidence`` output (None: every row enters with fixed values).
        methods: the method registry's records (``pipelines.registry.METHODS``): order, families, Gao laws.
        comparisons: ``(method, rival)`` pairs whose difference method − rival is analysed, in the summary's order.
        kls: KLs (nats) at which each curve's reward is reported; n_boot, seed: the bootstrap.

    Returns:
        A dict with ``methods`` (display order), ``range`` (``common_kl_range``), ``kls``, ``per_method``
        ``{method: dict(runs, points, seeds, area, at_kl {kl: ...}, max_reward)}`` (each statistic a dict
        ``est, lo, hi``: estimate and 95% percentile bootstrap interval), ``ordering`` (methods by area, best
        first; without an area left out), ``comparisons`` ``{(method, rival): compare_curves dict | None |
        {"missing"}}``, ``fits`` (Gao), ``analysis`` (``harness.report.stats.analyse``), ``evidence`` (join counts),
        ``families`` (``family_comparison``), ``n_boot``, ``n_rows``, ``seeds``, ``truncated`` ``{method: mean
        truncated_frac}`` where rows have it.
    """
    points, info = evidence_points(rows, evidence)
    comparisons = tuple(tuple(pair) for pair in comparisons)
    analysis = stats.analyse(
        points,
        kls=kls,
        pairs=comparisons,
        n_boot=n_boot,
        seed=seed,
        n_grid=n_grid,
        min_kl=min_kl,
        reference=reference_methods(methods),
    )
    shown = ordered_methods((r["method"] for r in rows), methods)
    by_method = group_by(rows, "method")
    nan_stat = dict(est=float("nan"), lo=float("nan"), hi=float("nan"))
    per_method = {}
    for m in shown:
        group = by_method[m]
        st = analysis["stats"].get(m)
        per_method[m] = dict(
            runs=len({r["run_id"] for r in group}),
            points=len(group),
            seeds=analysis["seeds"].get(m, []),
            area=st["area"] if st else nan_stat,
            at_kl={x: (st["at_kl"][x] if st else nan_stat) for x in kls},
            max_reward=st["max_reward"] if st else nan_stat,
        )
    ordering = sorted(
        (m for m in shown if np.isfinite(per_method[m]["area"]["est"])), key=lambda m: -per_method[m]["area"]["est"]
    )
    truncated = {
        m: float(np.mean([r["truncated_frac"] for r in by_method[m] if finite(r.get("truncated_frac"))]))
        for m in shown
        if any(finite(r.get("truncated_frac")) for r in by_method[m])
    }
    families = family_comparison(points, methods, kls=kls, n_boot=n_boot, seed=seed, n_grid=n_grid, min_kl=min_kl)
    return dict(
        methods=shown,
        range=analysis["range"],
        kls=tuple(kls),
        per_method=per_method,
        ordering=ordering,
        comparisons={pair: analysis["comparisons"][pair] for pair in comparisons},
        fits=gao_fits(rows, methods),
        analysis=analysis,
        evidence=info,
        families=families,
        n_boot=n_boot,
        n_rows=len(rows),
        seeds=sorted({r["seed"] for r in rows}, key=str),
        truncated=truncated,
    )


def gao_fits(rows: Sequence[dict], methods: Mapping[str, Method]) -> dict[str, dict]:
    """The Gao et al. (2022) fit of every method but the reference policy, in display order: ``stats.fit_gao`` with
    the method's law (its record's ``gao_form``) on all its points, R0 its own KL≈0 points' mean reward, else that of
    any method's KL≈0 points, else 0; each fit dict gains ``kind`` and ``baseline_from``."""
    reference = [
        r["gold_reward"] for r in rows if finite(r["kl"]) and r["kl"] < stats.ZERO_KL and finite(r["gold_reward"])
    ]
    by_method = group_by(rows, "method")
    fits = {}
    for m in ordered_methods(by_method, methods):
        if m in reference_methods(methods):
            continue
        group = by_method[m]
        own = [r["gold_reward"] for r in group if finite(r["kl"]) and r["kl"] < stats.ZERO_KL]
        baseline = float(np.mean(own)) if own else (float(np.mean(reference)) if reference else None)
        kind = gao_form(m, methods)
        fit = stats.fit_gao([r["kl"] for r in group], [r["gold_reward"] for r in group], kind, baseline=baseline)
        fit.update(
            kind=kind,
            baseline_from="own KL≈0 points"
            if own
            else ("other methods' KL≈0 points" if reference else "none (R0 = 0)"),
        )
        fits[m] = fit
    return fits


def family_comparison(
    points: dict,
    methods: Mapping[str, Method],
    kls: Sequence[float] = stats.DEFAULT_KLS,
    n_boot: int = stats.N_BOOT,
    seed: int = stats.BOOT_SEED,
    n_grid: int = stats.GRID_POINTS,
    min_kl: float = stats.MIN_COMMON_KL,
) -> dict | None:
    """Online − offline (``FAMILY_COMPARISON``; the members are the records of ``methods`` with that family): each
    family's points pooled into one curve (``stats.pool_methods``: the best member at each KL), compared like the
    method comparisons with the same bootstrap seed, so the prompt resampling is the one the per-method intervals
    use.

    Returns None unless both families are present and the sweep has more than one member in one of them (with
    one method each, this is a method comparison again); else ``dict(members {family: [methods]},
    comparison (compare_curves dict | None), stats {family: ...}, seeds {family: [...]})``.
    """
    (a, members_a), (b, members_b) = ((f, in_family(methods, f)) for f in FAMILY_COMPARISON)
    present = {a: [m for m in members_a if points.get(m)], b: [m for m in members_b if points.get(m)]}
    if not (present[a] and present[b]) or len(present[a]) + len(present[b]) < 3:
        return None
    pooled = {f: stats.pool_methods(points, ms) for f, ms in present.items()}
    if not (pooled[a] and pooled[b]):
        return None
    an = stats.analyse(pooled, kls=kls, pairs=((a, b),), n_boot=n_boot, seed=seed, n_grid=n_grid, min_kl=min_kl)
    return dict(members=present, comparison=an["comparisons"][(a, b)], stats=an["stats"], seeds=an["seeds"])
