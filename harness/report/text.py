"""The words and tables of ``summary.md``: numbers with their intervals, the comparison sentences, the per-method,
Gao-fit and per-setting tables. Methods are named by their registry record's label (``harness.report.rows``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from harness.methods import Method
from harness.report.rows import final_points, group_by, method_label, ordered_methods, reference_methods


def fmt_num(x: float, digits: int = 3) -> str:
    """A number for the tables; NaN / None as an em dash."""
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}f}"


def fmt_ci(s: dict, digits: int = 3) -> str:
    """A statistic ``dict(est, lo, hi)`` as ``"est [lo, hi]"``; "—" when not defined."""
    if not np.isfinite(s["est"]):
        return "—"
    if not (np.isfinite(s["lo"]) and np.isfinite(s["hi"])):
        return fmt_num(s["est"], digits)
    return f"{fmt_num(s['est'], digits)} [{fmt_num(s['lo'], digits)}, {fmt_num(s['hi'], digits)}]"


def spans(spans: Sequence[tuple[float, float]]) -> str:
    """KL intervals in words: "on [a, b], [c, d] nats", "at x nats" for a single grid point, or "nowhere"."""
    if not spans:
        return "nowhere"
    parts = [f"{a:.2f}" if a == b else f"[{a:.2f}, {b:.2f}]" for a, b in spans]
    return ("at " if len(spans) == 1 and spans[0][0] == spans[0][1] else "on ") + ", ".join(parts) + " nats"


def comparison_sentence(comparison, method: str, rival: str, methods: Mapping[str, Method]) -> str:
    """The verdict in plain words on ``method`` − ``rival`` (a ``compare_curves`` result, None, or
    ``{"missing": [...]}``): the area difference with its interval, and the KL intervals where ``method`` is
    above with 95% confidence, indistinguishable, below. Each is named by its label (``methods``; a name the
    registry does not know, e.g. a family, as it is)."""
    name, me = method_label(rival, methods), method_label(method, methods)
    head = f"{me} vs {name}"
    if isinstance(comparison, dict) and "missing" in comparison:
        absent = " and ".join(me if m == method else name for m in comparison["missing"])
        return f"{head}: not compared, this sweep has no {absent} rows."
    if comparison is None:
        return f"{head}: not compared, their curves do not overlap in KL."
    runs = comparison["runs"]
    return (
        f"{head} over their KL overlap [{comparison['lo']:.2f}, {comparison['hi']:.2f}] nats: area difference "
        f"{me} − {name} = {fmt_ci(comparison['area'])} (mean reward difference {fmt_ci(comparison['mean'])}). "
        f"{me} is above {name} with 95% confidence {spans(runs['above'])}; indistinguishable "
        f"{spans(runs['indistinguishable'])}; below {spans(runs['below'])}. These are pointwise 95% "
        f"intervals on a {comparison['n_grid']}-point KL grid (not a simultaneous band; interval ends are "
        "grid points)."
    )


def family_paragraph(families: dict, methods: Mapping[str, Method]) -> list[str]:
    """The "Online vs offline" section of summary.md: which methods each family pools, the comparison sentence
    and a verdict that says when the evidence is too weak to decide."""
    a, b = families["members"]
    names = {f: ", ".join(method_label(m, methods) for m in ms) for f, ms in families["members"].items()}
    seeds = {f: len(s) for f, s in families["seeds"].items()}
    c = families["comparison"]
    lines = [
        "## Online vs offline",
        "",
        f"{a.capitalize()} methods ({names[a]}) are pooled into one curve and {b} methods ({names[b]}) into "
        f"another ({seeds[a]} and {seeds[b]} seeds): each family's curve is the cross-fitted envelope of all its "
        "members' points, i.e. its best member at each KL, chosen on one half of the prompts and reported on the "
        "other.",
        "",
        comparison_sentence(c, a, b, methods),
        "",
    ]
    if isinstance(c, dict) and "area" in c:
        lo, hi = c["area"]["lo"], c["area"]["hi"]
        if lo > 0:
            verdict = f"{a.capitalize()} methods lie above {b} ones over the families' common KL range (the area interval excludes 0)."
        elif hi < 0:
            verdict = f"{a.capitalize()} methods lie below {b} ones over the families' common KL range (the area interval excludes 0)."
        else:
            verdict = (
                f"The evidence is too weak to decide whether {a} methods lie above {b} ones over the common "
                "KL range: the area interval contains 0."
            )
        lines += [f"**Verdict:** {verdict}", ""]
    return lines


def method_paragraph(summary: dict, methods: Mapping[str, Method]) -> str:
    """The "Method" paragraph of summary.md: how the curves and intervals were made, what they include."""
    info, an = summary["evidence"], summary["analysis"]
    reference = reference_methods(methods)
    seed_counts = sorted({len(s) for m, s in an["seeds"].items() if m not in reference}) or [1]
    n_seeds = max(seed_counts)
    text = (
        "Each method's curve is a cross-fitted unimodal upper envelope: the evaluation prompts are split once "
        "into two fixed halves; the points on the envelope (the smallest curve above all points that rises "
        "then falls, so a decline at high KL stays visible) are selected with their means over one half and "
        "drawn at their means over the other, and the two folds are averaged. This removes the upward bias of "
        "taking the best of noisy points. "
    )
    if n_seeds > 1:
        text += (
            f"A method's curve is the mean of its per-seed curves ({'/'.join(map(str, seed_counts))} seeds) "
            "over the KL range all its seeds cover. "
        )
    if info["with_evidence"]:
        text += (
            f"Intervals are 95% percentile intervals of a paired bootstrap ({summary['n_boot']} replicates) "
            f"over the {info['n_prompts']} evaluation prompts, resampled within each half, one draw shared by "
            "all methods"
        )
    else:
        text += f"Intervals are 95% percentile intervals of a bootstrap ({summary['n_boot']} replicates)"
    if n_seeds > 1:
        text += (
            f", and over training seeds ({n_seeds} seeds resampled with replacement, seed s of one method "
            "paired with seed s of another when they share the seed list)"
        )
    text += ". They include the sampling of prompts"
    text += " and of training seeds" if n_seeds > 1 else ""
    text += (
        "; they do NOT include "
        + ("training-seed variance (one seed) or " if n_seeds == 1 else "")
        + "the sampling noise of the responses beyond what the prompt means carry, nor the choice of the "
        "swept settings. They are conservative (the re-selection in each replicate adds spread)."
    )
    if info["without_evidence"]:
        text += (
            f" {info['without_evidence']} of {info['with_evidence'] + info['without_evidence']} rows had no "
            "per-prompt evidence; they enter with their aggregate KL and reward as fixed values that do not "
            "vary under resampling"
            + (" (so every interval here reflects seed resampling only)." if not info["with_evidence"] else ".")
        )
    else:
        text += " Every row had per-prompt evidence."
    return text


def verdict(summary: dict, methods: Mapping[str, Method]) -> list[str]:
    """The report's conclusions, one line each: the ordering by area, then each headline comparison (the first always,
    a later one unless the sweep lacks its rival). summary.md states them; a study's last terminal lines repeat them."""
    pm = summary["per_method"]
    if summary["ordering"]:
        order = " > ".join(f"{method_label(m, methods)} ({fmt_ci(pm[m]['area'])})" for m in summary["ordering"])
        lines = [
            f"Ordering by area under the curve (estimate [95% interval]; overlapping intervals "
            f"do not separate two methods): {order}."
        ]
    else:
        lines = ["Ordering: none, no method has an area over a common KL range."]
    for i, ((method, rival), comparison) in enumerate(summary["comparisons"].items()):
        if i == 0 or not (isinstance(comparison, dict) and rival in comparison.get("missing", [])):
            lines.append(comparison_sentence(comparison, method, rival, methods))
    return lines


def format_summary(
    summary: dict, methods: Mapping[str, Method], title: str | None = None, commit: str | None = None
) -> str:
    """The ``summary.md`` text for a ``summarize`` result (``methods``: the registry records it was made with);
    ``commit`` (a git sha) is named at the top."""
    rng, kls, pm = summary["range"], summary["kls"], summary["per_method"]
    lo, hi = rng["lo"], rng["hi"]
    lines = [f"# Frontier report{': ' + title if title else ''}", ""]
    if commit is not None:
        lines += [f"Made by commit {commit}.", ""]
    n_seeds = len(summary["seeds"])
    lines.append(
        f"{summary['n_rows']} evaluation points, {len(summary['methods'])} methods, "
        f"{n_seeds} seed{'s' if n_seeds != 1 else ''}. KL is the mean sequence KL(π‖π_ref) in nats; "
        "reward is the expected gold reward."
    )
    lines.append("")
    if np.isfinite(lo):
        limit = f"where the curve of {method_label(rng['limited_by'], methods)} ends"
        lines.append(
            f"Common KL range for areas: [{lo:.2f}, {hi:.2f}] nats (the upper end is {limit}; "
            "every range-setting method's curve covers it)."
        )
    else:
        besides = " or ".join(method_label(m, methods) for m in reference_methods(methods)) or "the reference policy"
        lines.append(f"Common KL range for areas: none (no method besides {besides} has a curve).")
    for m, why in rng["excluded"].items():
        lines.append(f"- {method_label(m, methods)} does not set the range: {why}.")
    lines.append("")
    lines.append(
        "Per method, estimate [95% bootstrap interval] (— = not defined, e.g. the curve does not reach that KL):"
    )
    lines.append("")
    area_head = f"area KL∈[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "area"
    head = ["method", "runs", "points", area_head] + [f"reward @ KL={x:g}" for x in kls] + ["max reward"]
    if summary.get("truncated"):
        head.append("truncated")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for m in summary["methods"]:
        s = pm[m]
        cells = [method_label(m, methods), str(s["runs"]), str(s["points"]), fmt_ci(s["area"])]
        cells += [fmt_ci(s["at_kl"][x]) for x in kls] + [fmt_ci(s["max_reward"])]
        if summary.get("truncated"):
            cells.append(f"{summary['truncated'][m]:.1%}" if m in summary["truncated"] else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    ordering, *stated = verdict(summary, methods)
    lines.append(ordering.replace("Ordering", "**Ordering**", 1))
    rest = [method_label(m, methods) for m in summary["methods"] if m not in summary["ordering"]]
    if summary["ordering"] and rest:
        lines.append(f"Without an area over the common range: {', '.join(rest)}.")
    lines.append("")
    for sentence in stated:
        lines += [sentence, ""]
    if summary.get("families"):
        lines += family_paragraph(summary["families"], methods)
    lines.append("## Method")
    lines.append("")
    lines.append(method_paragraph(summary, methods))
    lines.append("")
    lines.append("## Gao et al. (2022) scaling-law fits")
    lines.append("")
    bon = ", ".join(m.display for m in methods.values() if m.gao_form == "bon") or "best-of-N sampling"
    lines.append(
        f"d = sqrt(KL); RL-like methods: R(d) = d·(α − β·log d); {bon}: R(d) = d·(α − β·d); "
        "R = gold reward − R0 (reward at KL = 0). Fitted by least squares on all points of the "
        "method (all settings, steps and seeds); no intervals."
    )
    lines.append("")
    lines.append("| method | law | α | β | R² | n | R0 | R0 from |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---|")
    for m, f in summary["fits"].items():
        lines.append(
            f"| {method_label(m, methods)} | {f['kind']} | {fmt_num(f['alpha'])} | {fmt_num(f['beta'])} | "
            f"{fmt_num(f['r2'])} | {f['n']} | {fmt_num(f['baseline'])} | {f['baseline_from']} |"
        )
    lines.append("")
    return "\n".join(lines)


def settings_table(rows: Sequence[dict], methods: Mapping[str, Method]) -> str:
    """A markdown section: the last evaluation of each (method, setting), e.g. each ingredient of a PPO ablation, as
    final KL and gold reward, mean over its runs ± SEM (over the runs' seeds when there are several, else the one
    evaluation's SEM over prompts). Empty when no method has more than one setting: the per-method table says it all."""
    finals = group_by(final_points(rows), "method", "setting")
    settings_per_method = defaultdict(int)
    for m, _ in finals:
        settings_per_method[m] += 1
    if max(settings_per_method.values(), default=0) < 2:
        return ""
    lines = [
        "## Final point of each setting",
        "",
        "Last evaluation of each run, mean over runs ± SEM (across seeds; with one run, the evaluation's own "
        "SEM over prompts). KL is to the frozen π_SFT for every setting.",
        "",
        "| method | setting | runs | step | KL [nats] | gold reward |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in ordered_methods((m for m, _ in finals), methods):
        for setting in sorted(st for mm, st in finals if mm == m):
            group = finals[(m, setting)]
            cells = []
            for key in ("kl", "gold_reward"):
                xs = np.array([r[key] for r in group], dtype=float)
                sem = (
                    xs.std(ddof=1) / math.sqrt(len(xs))
                    if len(xs) > 1
                    else float(group[0].get(f"{key}_sem") or math.nan)
                )
                cells.append(f"{fmt_num(float(xs.mean()))} ± {fmt_num(sem)}")
            steps = sorted({r["step"] for r in group})
            lines.append(
                f"| {method_label(m, methods)} | {setting or '—'} | {len(group)} | {'/'.join(map(str, steps))} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


MEMORY_KINDS = {
    "resident": "peak resident memory of the job's process",
    "device": "peak GPU memory allocated",
    "process": "peak resident memory of the process over its life (the job's own could not be isolated)",
}


def cost_table(rows: Sequence[dict], methods: Mapping[str, Method]) -> str:
    """A markdown section: what each method's jobs cost, from the rows' cost fields (``harness.eval.row``): the
    models a job holds (most at any evaluation) and their parameters, training seconds per step (median over the
    method's runs, at each run's last evaluation), and the peak memory of its jobs (the largest). Empty when no row
    carries the fields (rows written before they existed)."""
    finals = [r for r in final_points(rows) if r.get("models_held") is not None]
    if not finals:
        return ""
    by_method = defaultdict(list)
    for r in finals:
        by_method[r["method"]].append(r)
    kinds = sorted({r.get("peak_memory_kind") for r in finals if r.get("peak_memory_kind")})
    lines = [
        "## Cost per method",
        "",
        "Per method: the models its jobs hold (policy, reference, critic, reward model: the transformers models alive "
        "at an evaluation) and their parameters; training seconds per step at each run's last evaluation (median "
        "over runs; a step is the row's: an optimizer step, for PPO and online DPO an update); the largest peak "
        f"memory of its jobs ({'; '.join(MEMORY_KINDS.get(k, k) for k in kinds)}). On the machine that ran them.",
        "",
        "| method | runs | models held | parameters held | s / step | peak memory [MiB] |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in ordered_methods(by_method, methods):
        group = by_method[m]
        steps = [r["step_s"] for r in group if r.get("step_s") is not None and math.isfinite(r["step_s"])]
        peaks = [r["peak_memory_mb"] for r in group if r.get("peak_memory_mb") is not None]
        held = max(r["models_held"] for r in group)
        params = max(r.get("model_parameters") or 0 for r in group)
        lines.append(
            f"| {method_label(m, methods)} | {len(group)} | {held} | {params / 1e6:.1f}M | "
            f"{fmt_num(float(np.median(steps))) if steps else '—'} | {f'{max(peaks):.0f}' if peaks else '—'} |"
        )
    return "\n".join(lines) + "\n"
