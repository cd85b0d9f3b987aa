"""Did a change keep the frontier? Two sweeps of one study (before and after the change), method by method.

    python benchmarks/quality_check.py BEFORE_SWEEP AFTER_SWEEP [--markdown]

For every method in both sweeps: its frontier area before and after over the KL range both curves reach, and the
paired difference after − before with its 95% interval. The curves are the report's own (``harness.report.stats``:
cross-fitted envelopes over the method's settings), and the bootstrap is paired the report's way: the same prompt
resamples and the same seed draws for both sweeps, which were evaluated on the same prompts with the same seeds.
An interval that contains 0 says the change moved that method's frontier by no more than its own noise; one that
does not is named. A change that touches PPO's arithmetic (rounding only) is expected to pass this check, not to give
identical rows: PPO's trajectories are chaotic in float rounding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from harness.report.analysis import evidence_points
from harness.report.load import load_evidence, load_points
from harness.report.stats import analyse, curve_area


def sweep_points(folder: Path) -> tuple[dict, dict]:
    rows = load_points(folder)
    if not rows:
        raise SystemExit(f"{folder}: no result rows (points.jsonl) below it")
    return evidence_points(rows, load_evidence(folder))


def compare(before: Path, after: Path) -> list[dict]:
    """One dict per method in both sweeps: area before/after over their common KL range, and the paired
    difference after − before (est, lo, hi)."""
    (pb, ib), (pa, ia) = sweep_points(before), sweep_points(after)
    if ib["prompts_key"] != ia["prompts_key"]:
        raise SystemExit(f"the sweeps were evaluated on different prompts ({ib['prompts_key']} vs {ia['prompts_key']})")
    methods = sorted(set(pb) & set(pa))
    points = {f"{m}|before": pb[m] for m in methods} | {f"{m}|after": pa[m] for m in methods}
    res = analyse(points, pairs=[(f"{m}|after", f"{m}|before") for m in methods])
    out = []
    for m in methods:
        c = res["comparisons"][(f"{m}|after", f"{m}|before")]
        if not c or "missing" in c:
            out.append(dict(method=m, missing=True))
            continue
        grid = res["grid"]
        area = {
            side: float(curve_area(grid, res["curves"][f"{m}|{side}"]["est"], c["lo"], c["hi"]))
            for side in ("before", "after")
        }
        out.append(
            dict(
                method=m,
                lo=c["lo"],
                hi=c["hi"],
                before=area["before"],
                after=area["after"],
                diff=c["area"]["est"],
                diff_lo=c["area"]["lo"],
                diff_hi=c["area"]["hi"],
                holds=bool(c["area"]["lo"] <= 0 <= c["area"]["hi"]),
                seeds=len(res["seeds"][f"{m}|after"]),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)
    rows = compare(args.before, args.after)
    if args.markdown:
        print("| method | seeds | KL range (nats) | area before | area after | after − before [95%] | contains 0 |")
        print("|---|---:|---|---:|---:|---|---|")
    for r in rows:
        if r.get("missing"):
            print(f"{r['method']}: the two curves share no KL range")
            continue
        cells = (
            r["method"],
            str(r["seeds"]),
            f"[{r['lo']:.2f}, {r['hi']:.2f}]",
            f"{r['before']:.3f}",
            f"{r['after']:.3f}",
            f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]",
            "yes" if r["holds"] else "NO",
        )
        print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(cells))
    moved = [r["method"] for r in rows if not r.get("missing") and not r["holds"]]
    print(f"moved beyond its interval: {', '.join(moved) if moved else 'none'}", file=sys.stderr)
    return 0 if np.isfinite([r.get("diff", 0.0) for r in rows]).all() else 1


if __name__ == "__main__":
    sys.exit(main())
