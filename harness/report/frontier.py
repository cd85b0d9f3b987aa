"""The frontier report: expected gold reward vs KL(π‖π_ref), one curve per method, with uncertainty.

Every evaluation of every run is one *result row* (see ``REQUIRED_KEYS``), appended to a ``points.jsonl`` in
the run's folder; beside it an ``evidence.jsonl`` keeps the same evaluation's per-prompt means (gold reward,
exact KL, truncation; see ``load_evidence``).  This module reads a whole sweep and writes, into the sweep folder:

- ``points.csv``      all rows, one per line;
- ``frontier.png``    every evaluation as a point, one colour and marker per method, and each method's
                      cross-fitted curve with its 95% bootstrap band; with training-compute fields in the rows
                      a second panel, gold reward vs training tokens;
- ``ablations.png``   (only when some method was swept over a knob) final KL and reward vs the knob;
- ``summary.md``      per method: area over a common KL range, reward at fixed KLs, max reward, each as
                      ``estimate [95% interval]``; the ordering by area; DPO − PPO and DPO − PPO-GT with a
                      verdict on where DPO is above, indistinguishable, below; the Gao et al. (2022) fits; the
                      commit that made the numbers.

The statistics live in ``harness.report.stats`` (numpy only; its docstring gives the method): a method's
curve is the cross-fitted unimodal upper envelope of its points (selected on one half of the prompts, reported
on the other), averaged over seeds, with intervals from a paired bootstrap over prompts (and seeds) shared by
all methods.  This module joins rows to evidence, renders and writes.

Rules chosen here (also stated in ``summary.md``):

- **Rows without evidence** (older sweeps) enter with their aggregate ``kl`` and ``gold_reward`` as fixed
  values: prompt resampling does not move them.
- **Common KL range** for areas: the overlap of the range-setting methods' curves.  SFT never sets it; nor
  does a method whose curve ends below ``MIN_COMMON_KL`` (2 nats) while another reaches that far (Best-of-N with
  small N, Preferred-FT): it would squeeze every comparison into a sliver.  A method whose curve does not cover
  the range gets "—" for its area.
- **Gao fits** use every point of a method (all settings, steps and seeds) and the reward at KL = 0 measured
  on the reference policy: the method's own KL≈0 points if any, else those of any method, else 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from harness.report import stats as fstats
from harness.report.stats import (
    DEFAULT_KLS,
    MIN_COMMON_KL,
    N_BOOT,
    ZERO_KL,
    common_kl_range,
    compare_envelopes,
    envelope_area,
    envelope_at,
    fit_gao,
    gao_curve,
    higher_intervals,
    mean_ci95,
    t_quantile_975,
    unimodal_envelope,
    upper_envelope,
)

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
    "rloo":         ("RLOO (learned RM)",    "#7F3C8D", "p"),
    "rloo_gt":      ("RLOO-GT (gold reward)", "#B07AA1", "<"),
    "grpo":         ("GRPO (learned RM)",    "#117733", ">"),
    "grpo_gt":      ("GRPO-GT (gold reward)", "#999933", "d"),
    "dpo":          ("DPO",                  "#0072B2", "o"),
    "ipo":          ("IPO",                  "#56B4E9", "v"),
    "cdpo":         ("cDPO",                 "#009E73", "^"),
    "unlikelihood": ("Unlikelihood",         "#CC79A7", "P"),
    "preferred_ft": ("Preferred-FT",         "#8C564B", "X"),
    "best_of_n":    ("Best of N",            "#555555", "*"),
    "kto":          ("KTO",                  "#882255", "8"),
    "online_dpo":   ("Online DPO",           "#44AA99", "H"),
    "sft":          ("SFT",                  "#000000", "h"),
    "evaluate":     ("Evaluated checkpoint", "#E73F74", "x"),
}
_FALLBACK_COLOURS = ("#7F3C8D", "#11A579", "#3969AC", "#F2B701", "#E73F74", "#80BA5A")

# Optional row fields (new rows carry them, old rows may not; REQUIRED_KEYS is unchanged).
OPTIONAL_KEYS = ("truncated_frac", "compute_tokens_generated", "compute_tokens_trained", "compute_wall_s")
# One line of evidence.jsonl per evaluation row, joined to the row on (run_id, setting, step).
EVIDENCE_KEYS = ("run_id", "method", "setting", "seed", "step", "prompts_key", "gold", "kl", "truncated")
GRID_POINTS = fstats.GRID_POINTS
COMPARISONS = (("dpo", "ppo"), ("dpo", "ppo_gt"))
# Method families for the online-vs-offline question (Tang et al. 2024): online methods learn from samples of the
# policy being trained, scored by the learned reward model; offline ones from the fixed preference set. The
# gold-reward variants (PPO-GT, RLOO-GT, GRPO-GT) see a different reward, not different data, so neither family
# holds them; nor do the baselines (Preferred-FT, Unlikelihood, Best-of-N).
FAMILIES = {"online": ("ppo", "rloo", "grpo", "online_dpo"), "offline": ("dpo", "ipo", "cdpo", "kto")}
KL_LABEL = "KL(π‖π_ref)  [nats]"
REWARD_LABEL = "Expected gold reward"


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
    for _, row in json_lines(folder, "points.jsonl", REQUIRED_KEYS):
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def json_lines(folder: str | Path, name: str, required: Sequence[str]):
    """Yield ``("<file>:<line>", object)`` for every non-blank line of every file ``name`` under ``folder`` (any
    depth, sorted path order); a line that is not a JSON object or lacks a ``required`` key is a one-line
    ValueError naming the file and line."""
    for path in sorted(Path(folder).rglob(name)):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: bad JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                missing = [k for k in required if k not in obj]
                if missing:
                    raise ValueError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
                yield where, obj


def parse_setting(setting: str) -> dict[str, str]:
    """``"cliprange=0.2,cliprange_value=0.2"`` -> ``{"cliprange": "0.2", "cliprange_value": "0.2"}``."""
    knobs = {}
    for part in (setting or "").split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            knobs[name.strip()] = value.strip()
    return knobs




def evidence_key(rec: dict) -> tuple[str, str, str, str, int]:
    """The join key of a row and its evidence (both carry these fields): ``(run_id, method, seed, setting, step)``.

    Method and seed are in it although a run id should name one run: when run ids once collided (every run
    called "updates.jsonl"), PPO-GT's rows joined PPO's evidence at the same setting and step without a word."""
    return str(rec["run_id"]), str(rec["method"]), str(rec["seed"]), str(rec["setting"] or ""), int(rec["step"])


def load_evidence(folder: str | Path) -> dict[tuple[str, str, str, str, int], dict]:
    """Read every ``evidence.jsonl`` under ``folder`` (any depth, sorted path order).

    Each line is one evaluation: ``{"run_id", "method", "setting", "seed", "step", "prompts_key", "gold": [P],
    "kl": [P], "truncated": [P]}``, index p being the p-th evaluation prompt of the sweep.

    Returns:
        ``{evidence_key: record}`` with ``gold``, ``kl``, ``truncated`` as float arrays (P,); a record repeated
        verbatim (a copied run folder) is kept once.  Empty when there is no evidence.

    Raises:
        ValueError: one line, ``<file>:<line>: ...``, for a line that is not a JSON object, lacks a key, has
            lists of different lengths or non-numbers; or when runs were evaluated on different prompts
            (different ``prompts_key`` or prompt counts); or when two different records share a key (two runs
            with one id: their rows could not be told apart).
    """
    out: dict[tuple[str, str, str, str, int], dict] = {}
    origin: dict[tuple[str, str, str, str, int], str] = {}
    first = None                                    # (prompts_key, P, where) of the first record
    for where, rec in json_lines(folder, "evidence.jsonl", EVIDENCE_KEYS):
        arrays = {}
        for k in ("gold", "kl", "truncated"):
            v = rec[k]
            if not isinstance(v, list) or not v or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"{where}: {k!r} must be a non-empty list of numbers")
            arrays[k] = np.asarray(v, dtype=float)
        sizes = {k: a.size for k, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{where}: gold, kl, truncated have different lengths {sizes}")
        n = arrays["gold"].size
        if first is None:
            first = (rec["prompts_key"], n, where)
        elif (rec["prompts_key"], n) != first[:2]:
            raise ValueError(f"{where}: the runs were evaluated on different prompts (prompts_key "
                             f"{rec['prompts_key']!r}, {n} prompts; {first[2]} has {first[0]!r}, "
                             f"{first[1]} prompts)")
        try:
            key = evidence_key(rec)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: step must be an integer, got {rec['step']!r}") from None
        if key not in out:
            out[key], origin[key] = {**rec, **arrays}, where
        elif not all(np.array_equal(out[key][k], arrays[k]) for k in arrays):
            raise ValueError(f"{where}: run {key[0]!r} ({key[1]}, seed {key[2]}, {key[3] or 'no setting'}, step {key[4]}) "
                             f"already has different evidence in {origin[key]}: two runs share one run_id")
    return out


# ---------------------------------------------------------------------------------------------------------
# From rows (and evidence) to the statistics of the report
# ---------------------------------------------------------------------------------------------------------

def _by(rows: Iterable[dict], *keys: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]].append(r)
    return groups


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def evidence_points(rows: Sequence[dict], evidence: dict | None = None):
    """Per-prompt point arrays for ``frontier_stats.analyse``.

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
        if not (_finite(r.get("kl")) and _finite(r.get("gold_reward"))):
            continue
        ev = evidence.get(evidence_key(r))
        if ev is not None and not (np.isfinite(ev["gold"]).all() and np.isfinite(ev["kl"]).all()):
            ev = None
        if ev is not None:
            keys.add(ev["prompts_key"])
            sizes.add(ev["gold"].size)
        joined.append((r, ev))
    if len(keys) > 1 or len(sizes) > 1:
        raise ValueError(f"the runs were evaluated on different prompts (prompts_key {sorted(map(str, keys))}, "
                         f"prompt counts {sorted(sizes)})")
    n_prompts = sizes.pop() if sizes else 2
    grouped: dict[str, dict] = {}
    n_with = 0
    for r, ev in joined:
        if ev is not None:
            gold, kl = ev["gold"], ev["kl"]
            n_with += 1
        else:
            gold, kl = fstats.constant_evidence(r["kl"], r["gold_reward"], n_prompts)
        grouped.setdefault(r["method"], {}).setdefault(r["seed"], []).append((gold, kl))
    points = {m: {s: (np.stack([g for g, _ in pts]), np.stack([k for _, k in pts])) for s, pts in per_seed.items()}
              for m, per_seed in grouped.items()}
    info = dict(n_prompts=n_prompts if n_with else 0, with_evidence=n_with, without_evidence=len(joined) - n_with,
                prompts_key=keys.pop() if keys else None)
    return points, info


def summarize(rows: Sequence[dict], kls: Sequence[float] = DEFAULT_KLS, evidence: dict | None = None,
              n_boot: int = N_BOOT, min_kl: float = MIN_COMMON_KL, seed: int = fstats.BOOT_SEED,
              n_grid: int = GRID_POINTS) -> dict:
    """All numbers of the report (no I/O).

    Args:
        rows: result rows; evidence: ``load_evidence`` output (None: every row enters with fixed values).
        kls: KLs (nats) at which each curve's reward is reported; n_boot, seed: the bootstrap.

    Returns:
        A dict with ``methods`` (display order), ``range`` (``common_kl_range``), ``kls``, ``per_method``
        ``{method: dict(runs, points, seeds, area, at_kl {kl: ...}, max_reward)}`` (each statistic a dict
        ``est, lo, hi``: estimate and 95% percentile bootstrap interval), ``ordering`` (methods by area, best
        first; without an area left out), ``comparisons`` ``{rival: compare_curves dict | None | {"missing"}}``
        for DPO − rival, ``fits`` (Gao), ``analysis`` (``frontier_stats.analyse``), ``evidence`` (join counts),
        ``n_boot``, ``n_rows``, ``seeds``, ``truncated`` ``{method: mean truncated_frac}`` where rows have it.
    """
    points, info = evidence_points(rows, evidence)
    analysis = fstats.analyse(points, kls=kls, pairs=COMPARISONS, n_boot=n_boot, seed=seed, n_grid=n_grid,
                              min_kl=min_kl)
    methods = ordered_methods(r["method"] for r in rows)
    by_method = _by(rows, "method")
    nan_stat = dict(est=float("nan"), lo=float("nan"), hi=float("nan"))
    per_method = {}
    for m in methods:
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
    ordering = sorted((m for m in methods if np.isfinite(per_method[m]["area"]["est"])),
                      key=lambda m: -per_method[m]["area"]["est"])
    comparisons = {b: analysis["comparisons"][(a, b)] for a, b in COMPARISONS}

    reference = [r["gold_reward"] for r in rows if _finite(r["kl"]) and r["kl"] < ZERO_KL and _finite(r["gold_reward"])]
    fits = {}
    for m in methods:
        if m == "sft":
            continue
        group = by_method[m]
        own = [r["gold_reward"] for r in group if _finite(r["kl"]) and r["kl"] < ZERO_KL]
        baseline = float(np.mean(own)) if own else (float(np.mean(reference)) if reference else None)
        kind = "bon" if m == "best_of_n" else "rl"
        fit = fit_gao([r["kl"] for r in group], [r["gold_reward"] for r in group], kind, baseline=baseline)
        fit.update(kind=kind, baseline_from="own KL≈0 points" if own else
                   ("other methods' KL≈0 points" if reference else "none (R0 = 0)"))
        fits[m] = fit
    truncated = {m: float(np.mean([r["truncated_frac"] for r in by_method[m] if _finite(r.get("truncated_frac"))]))
                 for m in methods if any(_finite(r.get("truncated_frac")) for r in by_method[m])}
    families = family_comparison(points, kls=kls, n_boot=n_boot, seed=seed, n_grid=n_grid, min_kl=min_kl)
    return dict(methods=methods, range=analysis["range"], kls=tuple(kls), per_method=per_method,
                ordering=ordering, comparisons=comparisons, fits=fits, analysis=analysis, evidence=info,
                families=families,
                n_boot=n_boot, n_rows=len(rows), seeds=sorted({r["seed"] for r in rows}, key=str),
                truncated=truncated)


def family_comparison(points: dict, kls: Sequence[float] = DEFAULT_KLS, n_boot: int = N_BOOT,
                      seed: int = fstats.BOOT_SEED, n_grid: int = GRID_POINTS, min_kl: float = MIN_COMMON_KL,
                      families: dict[str, Sequence[str]] = FAMILIES) -> dict | None:
    """Online − offline (``FAMILIES``): each family's points pooled into one curve (``frontier_stats.pool_methods``:
    the best member at each KL), compared like DPO − PPO with the same bootstrap seed, so the prompt resampling
    is the one the per-method intervals use.

    Returns None unless both families are present and the sweep has more than one member in one of them (with
    one method each, this is the DPO − PPO comparison again); else ``dict(members {family: [methods]},
    comparison (compare_curves dict | None), stats {family: ...}, seeds {family: [...]})``.
    """
    (a, members_a), (b, members_b) = families.items()
    present = {a: [m for m in members_a if points.get(m)], b: [m for m in members_b if points.get(m)]}
    if not (present[a] and present[b]) or len(present[a]) + len(present[b]) < 3:
        return None
    pooled = {f: fstats.pool_methods(points, ms) for f, ms in present.items()}
    if not (pooled[a] and pooled[b]):
        return None
    an = fstats.analyse(pooled, kls=kls, pairs=((a, b),), n_boot=n_boot, seed=seed, n_grid=n_grid, min_kl=min_kl,
                        never=())
    return dict(members=present, comparison=an["comparisons"][(a, b)], stats=an["stats"], seeds=an["seeds"])


def family_paragraph(families: dict) -> list[str]:
    """The "Online vs offline" section of summary.md: which methods each family pools, the comparison sentence
    and a verdict that says when the evidence is too weak to decide."""
    a, b = families["members"]
    names = {f: ", ".join(method_label(m) for m in ms) for f, ms in families["members"].items()}
    seeds = {f: len(s) for f, s in families["seeds"].items()}
    c = families["comparison"]
    lines = ["## Online vs offline", "",
             f"{a.capitalize()} methods ({names[a]}) are pooled into one curve and {b} methods ({names[b]}) into "
             f"another ({seeds[a]} and {seeds[b]} seeds): each family's curve is the cross-fitted envelope of all its "
             "members' points, i.e. its best member at each KL, chosen on one half of the prompts and reported on the "
             "other.", "", comparison_sentence(c, rival=b, method=a), ""]
    if isinstance(c, dict) and "area" in c:
        lo, hi = c["area"]["lo"], c["area"]["hi"]
        if lo > 0:
            verdict = f"{a.capitalize()} methods lie above {b} ones over the families' common KL range (the area interval excludes 0)."
        elif hi < 0:
            verdict = f"{a.capitalize()} methods lie below {b} ones over the families' common KL range (the area interval excludes 0)."
        else:
            verdict = (f"The evidence is too weak to decide whether {a} methods lie above {b} ones over the common "
                       "KL range: the area interval contains 0.")
        lines += [f"**Verdict:** {verdict}", ""]
    return lines


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------

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


def _spans(spans: Sequence[tuple[float, float]]) -> str:
    """KL intervals in words: "on [a, b], [c, d] nats", "at x nats" for a single grid point, or "nowhere"."""
    if not spans:
        return "nowhere"
    parts = [f"{a:.2f}" if a == b else f"[{a:.2f}, {b:.2f}]" for a, b in spans]
    return ("at " if len(spans) == 1 and spans[0][0] == spans[0][1] else "on ") + ", ".join(parts) + " nats"


def comparison_sentence(comparison, rival: str = "ppo", method: str = "dpo") -> str:
    """The verdict in plain words on ``method`` − ``rival`` (a ``compare_curves`` result, None, or
    ``{"missing": [...]}``): the area difference with its interval, and the KL intervals where ``method`` is
    above with 95% confidence, indistinguishable, below."""
    name = "PPO" if rival == "ppo" else method_label(rival)
    me = "DPO" if method == "dpo" else method_label(method)
    head = f"{me} vs {name}"
    if isinstance(comparison, dict) and "missing" in comparison:
        absent = " and ".join(me if m == method else name for m in comparison["missing"])
        return f"{head}: not compared, this sweep has no {absent} rows."
    if comparison is None:
        return f"{head}: not compared, their curves do not overlap in KL."
    runs = comparison["runs"]
    return (f"{head} over their KL overlap [{comparison['lo']:.2f}, {comparison['hi']:.2f}] nats: area difference "
            f"{me} − {name} = {fmt_ci(comparison['area'])} (mean reward difference {fmt_ci(comparison['mean'])}). "
            f"{me} is above {name} with 95% confidence {_spans(runs['above'])}; indistinguishable "
            f"{_spans(runs['indistinguishable'])}; below {_spans(runs['below'])}. These are pointwise 95% "
            f"intervals on a {comparison['n_grid']}-point KL grid (not a simultaneous band; interval ends are "
            "grid points).")


def method_paragraph(summary: dict) -> str:
    """The "Method" paragraph of summary.md: how the curves and intervals were made, what they include."""
    info, an = summary["evidence"], summary["analysis"]
    seed_counts = sorted({len(s) for m, s in an["seeds"].items() if m != "sft"}) or [1]
    n_seeds = max(seed_counts)
    text = ("Each method's curve is a cross-fitted unimodal upper envelope: the evaluation prompts are split once "
            "into two fixed halves; the points on the envelope (the smallest curve above all points that rises "
            "then falls, so a decline at high KL stays visible) are selected with their means over one half and "
            "drawn at their means over the other, and the two folds are averaged. This removes the upward bias of "
            "taking the best of noisy points. ")
    if n_seeds > 1:
        text += (f"A method's curve is the mean of its per-seed curves ({'/'.join(map(str, seed_counts))} seeds) "
                 "over the KL range all its seeds cover. ")
    if info["with_evidence"]:
        text += (f"Intervals are 95% percentile intervals of a paired bootstrap ({summary['n_boot']} replicates) "
                 f"over the {info['n_prompts']} evaluation prompts, resampled within each half, one draw shared by "
                 "all methods")
    else:
        text += f"Intervals are 95% percentile intervals of a bootstrap ({summary['n_boot']} replicates)"
    if n_seeds > 1:
        text += (f", and over training seeds ({n_seeds} seeds resampled with replacement, seed s of one method "
                 "paired with seed s of another when they share the seed list)")
    text += ". They include the sampling of prompts"
    text += " and of training seeds" if n_seeds > 1 else ""
    text += ("; they do NOT include " + ("training-seed variance (one seed) or " if n_seeds == 1 else "")
             + "the sampling noise of the responses beyond what the prompt means carry, nor the choice of the "
             "swept settings. They are conservative (the re-selection in each replicate adds spread).")
    if info["without_evidence"]:
        text += (f" {info['without_evidence']} of {info['with_evidence'] + info['without_evidence']} rows had no "
                 "per-prompt evidence; they enter with their aggregate KL and reward as fixed values that do not "
                 "vary under resampling" + (" (so every interval here reflects seed resampling only)."
                                            if not info["with_evidence"] else "."))
    else:
        text += " Every row had per-prompt evidence."
    return text


def format_summary(summary: dict, title: str | None = None, commit: str | None = None) -> str:
    """The ``summary.md`` text for a ``summarize`` result; ``commit`` (a git sha) is named at the top."""
    rng, kls, pm = summary["range"], summary["kls"], summary["per_method"]
    lo, hi = rng["lo"], rng["hi"]
    lines = [f"# Frontier report{': ' + title if title else ''}", ""]
    if commit is not None:
        lines += [f"Made by commit {commit}.", ""]
    n_seeds = len(summary["seeds"])
    lines.append(f"{summary['n_rows']} evaluation points, {len(summary['methods'])} methods, "
                 f"{n_seeds} seed{'s' if n_seeds != 1 else ''}. KL is the mean sequence KL(π‖π_ref) in nats; "
                 "reward is the expected gold reward.")
    lines.append("")
    if np.isfinite(lo):
        limit = f"where the curve of {method_label(rng['limited_by'])} ends"
        lines.append(f"Common KL range for areas: [{lo:.2f}, {hi:.2f}] nats (the upper end is {limit}; "
                     "every range-setting method's curve covers it).")
    else:
        lines.append("Common KL range for areas: none (no method besides SFT has a curve).")
    for m, why in rng["excluded"].items():
        lines.append(f"- {method_label(m)} does not set the range: {why}.")
    lines.append("")
    lines.append("Per method, estimate [95% bootstrap interval] (— = not defined, e.g. the curve does not reach "
                 "that KL):")
    lines.append("")
    area_head = f"area KL∈[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "area"
    head = ["method", "runs", "points", area_head] + [f"reward @ KL={x:g}" for x in kls] + ["max reward"]
    if summary.get("truncated"):
        head.append("truncated")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for m in summary["methods"]:
        s = pm[m]
        cells = [method_label(m), str(s["runs"]), str(s["points"]), fmt_ci(s["area"])]
        cells += [fmt_ci(s["at_kl"][x]) for x in kls] + [fmt_ci(s["max_reward"])]
        if summary.get("truncated"):
            cells.append(f"{summary['truncated'][m]:.1%}" if m in summary["truncated"] else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if summary["ordering"]:
        order = " > ".join(f"{method_label(m)} ({fmt_ci(pm[m]['area'])})" for m in summary["ordering"])
        lines.append(f"**Ordering** by area under the curve (estimate [95% interval]; overlapping intervals "
                     f"do not separate two methods): {order}.")
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
    if summary.get("families"):
        lines += family_paragraph(summary["families"])
    lines.append("## Method")
    lines.append("")
    lines.append(method_paragraph(summary))
    lines.append("")
    lines.append("## Gao et al. (2022) scaling-law fits")
    lines.append("")
    lines.append("d = sqrt(KL); RL-like methods: R(d) = d·(α − β·log d); Best of N: R(d) = d·(α − β·d); "
                 "R = gold reward − R0 (reward at KL = 0). Fitted by least squares on all points of the "
                 "method (all settings, steps and seeds); no intervals.")
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


def plot_frontier(rows: Sequence[dict], ax=None, title: str | None = None, evidence: dict | None = None,
                  summary: dict | None = None, n_boot: int = N_BOOT):
    """Draw the frontier on ``ax``: every evaluation as a point, each method's cross-fitted curve (running to
    its largest KL) with its 95% bootstrap band shaded.

    Args:
        rows: result rows.  evidence: ``load_evidence`` output, used when ``summary`` is not given.
        summary: a ``summarize`` result for these rows (computed when None, with ``n_boot`` replicates).
        ax: the axes; a standalone figure is made when None.

    Returns:
        The axes.
    """
    if ax is None:
        _, ax = _new_axes((8.0, 5.2))
    if summary is None:
        summary = summarize(rows, evidence=evidence, n_boot=n_boot)
    an = summary["analysis"]
    grid = an["grid"]
    by_method = _by(rows, "method")
    bounded = all(0.0 <= r["gold_reward"] <= 1.0 for r in rows if _finite(r["gold_reward"]))
    for m in ordered_methods(by_method):
        colour, marker = method_style(m)
        group = [r for r in by_method[m] if _finite(r["kl"]) and _finite(r["gold_reward"])]
        kl = np.array([r["kl"] for r in group], dtype=float)
        reward = np.array([r["gold_reward"] for r in group], dtype=float)
        curve = an["curves"].get(m)
        defined = np.isfinite(curve["est"]) if curve is not None else np.zeros(grid.shape, bool)
        single = m == "sft" or defined.sum() < 2
        ax.scatter(kl, reward, s=80 if single else 22, marker=marker, color=colour,
                   alpha=0.9 if single else 0.35, linewidths=0, zorder=5 if single else 2,
                   label=method_label(m) if single else None)
        if single:
            continue
        ax.plot(grid[defined], curve["est"][defined], color=colour, lw=2.2, zorder=4, label=method_label(m))
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
        ax.legend(loc="lower right", fontsize=8, title="line: cross-fitted envelope; band: 95% bootstrap",
                  title_fontsize=8, framealpha=0.9)
    return ax


def training_tokens(row: dict) -> float:
    """Training tokens spent so far (generated + trained) of a row; NaN when the row has no compute fields."""
    gen, trained = row.get("compute_tokens_generated"), row.get("compute_tokens_trained")
    if not (_finite(gen) or _finite(trained)):
        return float("nan")
    return float(gen if _finite(gen) else 0.0) + float(trained if _finite(trained) else 0.0)


def has_compute(rows: Sequence[dict]) -> bool:
    """Whether some row carries training-compute fields with a positive token count."""
    return any(training_tokens(r) > 0 for r in rows)


COMPUTE_LABEL = "training tokens, generated + trained  [log scale; step-0 evaluations omitted]"


def plot_compute(rows: Sequence[dict], ax=None, title: str | None = None):
    """Gold reward vs training tokens (generated + trained, log x): one line per run through its evaluations,
    coloured by method.  Rows without compute fields or with 0 tokens (step 0, Best-of-N) are omitted."""
    if ax is None:
        _, ax = _new_axes((7.0, 5.2))
    for m in ordered_methods(r["method"] for r in rows):
        colour, marker = method_style(m)
        runs = _by([r for r in rows if r["method"] == m and training_tokens(r) > 0 and _finite(r["gold_reward"])],
                   "run_id", "setting", "seed")
        for i, (_, group) in enumerate(sorted(runs.items(), key=lambda kv: str(kv[0]))):
            group = sorted(group, key=training_tokens)
            ax.plot([training_tokens(r) for r in group], [r["gold_reward"] for r in group], color=colour,
                    marker=marker, markersize=4, lw=1.2, alpha=0.7, label=method_label(m) if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel(REWARD_LABEL)
    ax.set_title(title or "Reward vs training compute")
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    return ax


def frontier_figure(rows: Sequence[dict], summary: dict, title: str | None = None):
    """The ``frontier.png`` figure: reward vs KL, and beside it reward vs training tokens when the rows carry
    compute fields (``has_compute``)."""
    from matplotlib.figure import Figure
    two = has_compute(rows)
    fig = Figure(figsize=(15.0, 5.4) if two else (8.0, 5.2), layout="constrained")
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
    plot_frontier(rows, ax=axes[0], title=title, summary=summary)
    if two:
        plot_compute(rows, ax=axes[1])
    return fig


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


def settings_table(rows: Sequence[dict]) -> str:
    """A markdown section: the last evaluation of each (method, setting), e.g. each ingredient of a PPO ablation, as
    final KL and gold reward, mean over its runs ± SEM (over the runs' seeds when there are several, else the one
    evaluation's SEM over prompts). Empty when no method has more than one setting: the per-method table says it all."""
    finals = _by(final_points(rows), "method", "setting")
    settings_per_method = defaultdict(int)
    for m, _ in finals:
        settings_per_method[m] += 1
    if max(settings_per_method.values(), default=0) < 2:
        return ""
    lines = ["## Final point of each setting", "",
             "Last evaluation of each run, mean over runs ± SEM (across seeds; with one run, the evaluation's own "
             "SEM over prompts). KL is to the frozen π_SFT for every setting.", "",
             "| method | setting | runs | step | KL [nats] | gold reward |", "|---|---|---:|---:|---:|---:|"]
    for m in ordered_methods(m for m, _ in finals):
        for setting in sorted(st for mm, st in finals if mm == m):
            group = finals[(m, setting)]
            cells = []
            for key in ("kl", "gold_reward"):
                xs = np.array([r[key] for r in group], dtype=float)
                sem = xs.std(ddof=1) / math.sqrt(len(xs)) if len(xs) > 1 else float(group[0].get(f"{key}_sem") or math.nan)
                cells.append(f"{fmt_num(float(xs.mean()))} ± {fmt_num(sem)}")
            steps = sorted({r["step"] for r in group})
            lines.append(f"| {method_label(m)} | {setting or '—'} | {len(group)} | {'/'.join(map(str, steps))} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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




def git_commit(where: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD`` of the checkout holding ``where`` (default: this code), with "-dirty" when
    the code or configuration (harness/, pipelines/, conf/) has uncommitted changes, so a number never claims a
    commit that did not make it; "unknown" outside a git checkout."""
    where = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10)
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "harness", "pipelines",
                                "conf"], cwd=top or where, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return (sha + ("-dirty" if dirty else "")) if out.returncode == 0 and sha else "unknown"


def make_report(folder: str | Path, kls: Sequence[float] = DEFAULT_KLS, title: str | None = None,
                rows: Sequence[dict] | None = None, evidence: dict | None = None, n_boot: int = N_BOOT,
                commit: str | None = None) -> dict[str, Path]:
    """Write ``points.csv``, ``frontier.png``, ``summary.md`` (and ``ablations.png`` when some method was
    swept over a knob) into ``folder``.

    Args:
        folder: the sweep folder; its ``points.jsonl`` (and ``evidence.jsonl``) files are read unless ``rows``
            (and ``evidence``) are given.
        kls: KLs (nats) at which the summary reports each curve's reward.
        title: plot and summary title, e.g. the task name.
        rows, evidence: result rows / per-prompt evidence, if already loaded.
        n_boot: bootstrap replicates.
        commit: the git sha named in summary.md ("Made by commit ..."); default ``git_commit()``.

    Returns:
        ``{"points_csv", "frontier_png", "summary_md"[, "ablations_png"]}`` -> paths.

    Raises:
        ValueError: when there are no rows.
    """
    folder = Path(folder)
    rows = load_points(folder) if rows is None else list(rows)
    if not rows:
        raise ValueError(f"{folder}: no result rows (no points.jsonl with data below it)")
    evidence = load_evidence(folder) if evidence is None else evidence
    commit = git_commit() if commit is None else commit
    summary = summarize(rows, kls, evidence=evidence, n_boot=n_boot)
    paths = {"points_csv": write_points_csv(rows, folder / "points.csv")}

    fig = frontier_figure(rows, summary, title=title)
    paths["frontier_png"] = folder / "frontier.png"
    fig.savefig(paths["frontier_png"], dpi=150)

    abl = plot_ablation(rows)
    if abl is not None:
        paths["ablations_png"] = folder / "ablations.png"
        abl.savefig(paths["ablations_png"], dpi=120)

    paths["summary_md"] = folder / "summary.md"
    table = settings_table(rows)  # each setting's final point (an ablation's table); "" when nothing was swept
    paths["summary_md"].write_text(format_summary(summary, title, commit=commit) + ("\n" + table if table else ""),
                                   encoding="utf-8")
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
    """CLI: ``python -m harness.report <folder> [--title T] [--kl 2 5 10] [--n-boot 1000] [--commit SHA]``;
    prints the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="sweep folder; every points.jsonl / evidence.jsonl below it is read")
    parser.add_argument("--title", default=None, help="plot and summary title (e.g. the task name)")
    parser.add_argument("--kl", type=float, nargs="+", default=list(DEFAULT_KLS),
                        help="KLs (nats) at which to report each curve's reward")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates (default %(default)s)")
    parser.add_argument("--commit", default=None, help="git sha to name in summary.md (default: this checkout's HEAD)")
    args = parser.parse_args(argv)
    if args.n_boot < 1:
        parser.error("--n-boot must be >= 1")
    paths = make_report(args.folder, kls=args.kl, title=args.title, n_boot=args.n_boot, commit=args.commit)
    print(paths["frontier_png"])
    print(paths["summary_md"])
    return paths


if __name__ == "__main__":
    main()
