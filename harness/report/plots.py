"""The report's figures, object-oriented matplotlib (no pyplot state, so a report can be made in any process): the
frontier (every evaluation a point, each method's cross-fitted curve and 95% band), reward vs training compute, the
ablation panels. Colours, markers and labels are the registry records' (``harness.report.rows``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from harness.methods import Method
from harness.report.analysis import summarize
from harness.report.rows import (
    final_points,
    finite,
    group_by,
    has_compute,
    method_label,
    method_style,
    ordered_methods,
    parse_setting,
    reference_methods,
    training_tokens,
)
from harness.report.stats import N_BOOT

KL_LABEL = "KL(π‖π_ref)  [nats]"


REWARD_LABEL = "Expected gold reward"


COMPUTE_LABEL = "training tokens, generated + trained  [log scale; step-0 evaluations omitted]"


def new_axes(figsize):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_frontier(
    rows: Sequence[dict],
    methods: Mapping[str, Method],
    ax=None,
    title: str | None = None,
    evidence: dict | None = None,
    summary: dict | None = None,
    n_boot: int = N_BOOT,
):
    """Draw the frontier on ``ax``: every evaluation as a point, each method's cross-fitted curve (running to
    its largest KL) with its 95% bootstrap band shaded.

    Args:
        rows: result rows.  methods: the registry's records (labels, styles, the reference policy).
        evidence: ``load_evidence`` output, used when ``summary`` is not given.
        summary: a ``summarize`` result for these rows (computed when None, with ``n_boot`` replicates).
        ax: the axes; a standalone figure is made when None.

    Returns:
        The axes.
    """
    if ax is None:
        _, ax = new_axes((8.0, 5.2))
    if summary is None:
        summary = summarize(rows, methods, evidence=evidence, n_boot=n_boot)
    an = summary["analysis"]
    grid = an["grid"]
    by_method = group_by(rows, "method")
    reference = reference_methods(methods)
    bounded = all(0.0 <= r["gold_reward"] <= 1.0 for r in rows if finite(r["gold_reward"]))
    for m in ordered_methods(by_method, methods):
        colour, marker = method_style(m, methods)
        group = [r for r in by_method[m] if finite(r["kl"]) and finite(r["gold_reward"])]
        kl = np.array([r["kl"] for r in group], dtype=float)
        reward = np.array([r["gold_reward"] for r in group], dtype=float)
        curve = an["curves"].get(m)
        defined = np.isfinite(curve["est"]) if curve is not None else np.zeros(grid.shape, bool)
        single = m in reference or defined.sum() < 2
        ax.scatter(
            kl,
            reward,
            s=80 if single else 22,
            marker=marker,
            color=colour,
            alpha=0.9 if single else 0.35,
            linewidths=0,
            zorder=5 if single else 2,
            label=method_label(m, methods) if single else None,
        )
        if single:
            continue
        ax.plot(grid[defined], curve["est"][defined], color=colour, lw=2.2, zorder=4, label=method_label(m, methods))
        low, high = curve["band_lo"][defined], curve["band_hi"][defined]
        if bounded:
            low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
        ax.fill_between(grid[defined], low, high, color=colour, alpha=0.15, linewidth=0, zorder=1)
    ax.set_xlabel(KL_LABEL)
    ax.set_ylabel(REWARD_LABEL)
    ax.set_title(title or "Reward vs KL frontier")
    ax.grid(True, alpha=0.3)
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            loc="lower right",
            fontsize=8,
            title="line: cross-fitted envelope; band: 95% bootstrap",
            title_fontsize=8,
            framealpha=0.9,
        )
    return ax


def plot_compute(rows: Sequence[dict], methods: Mapping[str, Method], ax=None, title: str | None = None):
    """Gold reward vs training tokens (generated + trained, log x): one line per run through its evaluations,
    coloured by method.  Rows without compute fields or with 0 tokens (step 0, Best-of-N) are omitted."""
    if ax is None:
        _, ax = new_axes((7.0, 5.2))
    for m in ordered_methods((r["method"] for r in rows), methods):
        colour, marker = method_style(m, methods)
        runs = group_by(
            [r for r in rows if r["method"] == m and training_tokens(r) > 0 and finite(r["gold_reward"])],
            "run_id",
            "setting",
            "seed",
        )
        for i, (_, group) in enumerate(sorted(runs.items(), key=lambda kv: str(kv[0]))):
            group = sorted(group, key=training_tokens)
            ax.plot(
                [training_tokens(r) for r in group],
                [r["gold_reward"] for r in group],
                color=colour,
                marker=marker,
                markersize=4,
                lw=1.2,
                alpha=0.7,
                label=method_label(m, methods) if i == 0 else None,
            )
    ax.set_xscale("log")
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel(REWARD_LABEL)
    ax.set_title(title or "Reward vs training compute")
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    return ax


def frontier_figure(rows: Sequence[dict], methods: Mapping[str, Method], summary: dict, title: str | None = None):
    """The ``frontier.png`` figure: reward vs KL, and beside it reward vs training tokens when the rows carry
    compute fields (``has_compute``)."""
    from matplotlib.figure import Figure

    two = has_compute(rows)
    fig = Figure(figsize=(15.0, 5.4) if two else (8.0, 5.2), layout="constrained")
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
    plot_frontier(rows, methods, ax=axes[0], title=title, summary=summary)
    if two:
        plot_compute(rows, methods, ax=axes[1])
    return fig


def ablation_panels(rows: Sequence[dict], methods: Mapping[str, Method]) -> list[tuple[str, str]]:
    """``[(method, knob), ...]`` for every knob that takes more than one value within a method (methods in display order)."""
    panels = []
    for m in ordered_methods((r["method"] for r in rows), methods):
        values = defaultdict(set)
        for r in rows:
            if r["method"] == m:
                for knob, value in parse_setting(r["setting"]).items():
                    values[knob].add(value)
        panels += [(m, knob) for knob in sorted(values) if len(values[knob]) > 1]
    return panels


def knob_value(value: str):
    try:
        return float(value)
    except ValueError:
        return None


def plot_knob(rows: Sequence[dict], methods: Mapping[str, Method], method: str, knob: str, ax_reward, ax_kl) -> None:
    """Final gold reward (on ``ax_reward``) and final KL (on ``ax_kl``) of ``method``'s runs vs ``knob``.

    Each run is a faint point, the mean over runs (seeds, other knobs) at each knob value a line.  Numeric
    knobs spanning a factor ≥ 20 get a log axis; non-numeric values are placed evenly as categories.
    """
    colour, marker = method_style(method, methods)
    finals = [r for r in final_points(rows) if r["method"] == method and knob in parse_setting(r["setting"])]
    raw = [parse_setting(r["setting"])[knob] for r in finals]
    numeric = all(knob_value(v) is not None for v in raw)
    if numeric:
        xs = np.array([knob_value(v) for v in raw])
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
    ax_reward.set_title(f"{method_label(method, methods)}: {knob}", fontsize=10)
    ax_kl.set_xlabel(knob)


def plot_ablation(
    rows: Sequence[dict], methods: Mapping[str, Method], panels: Sequence[tuple[str, str]] | None = None, fig=None
):
    """One column per (method, knob) panel, final reward on top and final KL below (see ``plot_knob``).

    ``panels`` defaults to ``ablation_panels(rows, methods)``.  Draws into ``fig`` (a matplotlib Figure) or a new
    standalone Figure; returns the figure, or None when there is nothing to draw.
    """
    panels = ablation_panels(rows, methods) if panels is None else list(panels)
    if not panels:
        return None
    if fig is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.4 * len(panels), 5.6), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, (method, knob) in enumerate(panels):
        plot_knob(rows, methods, method, knob, axes[0, j], axes[1, j])
    fig.suptitle("Ablations: last evaluation of each run vs the swept knob")
    return fig
