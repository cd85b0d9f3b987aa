"""The frontier report of a sweep: expected gold reward vs KL(π‖π_ref), one curve per method, with uncertainty.

Every evaluation of every run is one *result row* (``harness.eval.row``), appended to a ``points.jsonl`` in the
run's folder; beside it an ``evidence.jsonl`` keeps the same evaluation's per-prompt means (gold reward, exact KL,
truncation). ``make_report`` reads a whole sweep (``harness.report.load``) and writes, into the sweep folder:

- ``points.csv``      all rows, one per line;
- ``frontier.png``    every evaluation as a point, one colour and marker per method, and each method's
                      cross-fitted curve with its 95% bootstrap band; with training-compute fields in the rows
                      a second panel, gold reward vs training tokens (``harness.report.plots``);
- ``ablations.png``   (only when some method was swept over a knob) final KL and reward vs the knob;
- ``summary.md``      per method: area over a common KL range, reward at fixed KLs, max reward, each as
                      ``estimate [95% interval]``; the ordering by area; each comparison the caller names (method −
                      rival) with a verdict on where the method is above, indistinguishable, below; online vs
                      offline; the Gao et al. (2022) fits; the commit that made the numbers (``harness.report.text``).

The numbers are ``harness.report.analysis``'s (the statistics themselves: ``harness.report.stats``, numpy only;
its docstring gives the method). What each method is called, how it looks, its family and its Gao law come from
the method registry's records, which the caller passes (``harness/app``: the sweep's callback and the
``python -m harness.report`` command).
"""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.eval.row import REQUIRED_KEYS
from harness.methods import Method
from harness.report.analysis import summarize
from harness.report.load import load_evidence, load_points
from harness.report.plots import frontier_figure, plot_ablation
from harness.report.stats import DEFAULT_KLS, N_BOOT
from harness.report.text import cost_table, format_summary, settings_table, verdict


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
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "harness", "pipelines", "conf"],
            cwd=top or where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return (sha + ("-dirty" if dirty else "")) if out.returncode == 0 and sha else "unknown"


def make_report(
    folder: str | Path,
    methods: Mapping[str, Method],
    comparisons: Sequence[tuple[str, str]] = (),
    kls: Sequence[float] = DEFAULT_KLS,
    title: str | None = None,
    rows: Sequence[dict] | None = None,
    evidence: dict | None = None,
    n_boot: int = N_BOOT,
    commit: str | None = None,
) -> dict[str, Path]:
    """Write ``points.csv``, ``frontier.png``, ``summary.md``, ``verdict.txt`` (and ``ablations.png`` when some
    method was swept over a knob) into ``folder``.

    Args:
        folder: the sweep folder; its ``points.jsonl`` (and ``evidence.jsonl``) files are read unless ``rows``
            (and ``evidence``) are given.
        methods: the method registry's records (``pipelines.registry.METHODS``); a method of the rows they do
            not know is shown under its own name in the default style.
        comparisons: ``(method, rival)`` pairs stated in summary.md (``pipelines.registry.COMPARISONS``).
        kls: KLs (nats) at which the summary reports each curve's reward.
        title: plot and summary title, e.g. the task name.
        rows, evidence: result rows / per-prompt evidence, if already loaded.
        n_boot: bootstrap replicates.
        commit: the git sha named in summary.md ("Made by commit ..."); default ``git_commit()``.

    Returns:
        ``{"points_csv", "frontier_png", "summary_md", "verdict_txt"[, "ablations_png"]}`` -> paths; verdict.txt
        holds the summary's conclusions, one per line (``harness.report.text.verdict``).

    Raises:
        ValueError: when there are no rows.
    """
    folder = Path(folder)
    rows = load_points(folder) if rows is None else list(rows)
    if not rows:
        raise ValueError(f"{folder}: no result rows (no points.jsonl with data below it)")
    evidence = load_evidence(folder) if evidence is None else evidence
    commit = git_commit() if commit is None else commit
    summary = summarize(rows, methods, comparisons, kls, evidence=evidence, n_boot=n_boot)
    paths = {"points_csv": write_points_csv(rows, folder / "points.csv")}

    fig = frontier_figure(rows, methods, summary, title=title)
    paths["frontier_png"] = folder / "frontier.png"
    fig.savefig(paths["frontier_png"], dpi=150)

    abl = plot_ablation(rows, methods)
    if abl is not None:
        paths["ablations_png"] = folder / "ablations.png"
        abl.savefig(paths["ablations_png"], dpi=120)

    # summary.md's conclusions, one per line, on their own: a study's last terminal lines, and easy to grep or diff
    paths["verdict_txt"] = folder / "verdict.txt"
    paths["verdict_txt"].write_text("\n".join(verdict(summary, methods)) + "\n", encoding="utf-8")
    paths["summary_md"] = folder / "summary.md"
    table = settings_table(rows, methods)  # each setting's final point (an ablation's table); "" when nothing was swept
    cost = cost_table(rows, methods)  # models held, s / step, peak memory per method; "" for rows without the fields
    paths["summary_md"].write_text(
        format_summary(summary, methods, title, commit=commit) + "".join("\n" + t for t in (table, cost) if t),
        encoding="utf-8",
    )
    return paths
