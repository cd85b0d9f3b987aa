"""``python -m harness.report <sweep folder>``: remake a sweep's frontier report on demand, with the method registry's
records (labels, styles, families, Gao laws) and its headline comparisons."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from harness.report.make import make_report
from harness.report.stats import DEFAULT_KLS, N_BOOT
from pipelines.registry import COMPARISONS, METHODS


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI: ``python -m harness.report <folder> [--title T] [--kl 2 5 10] [--n-boot 1000] [--commit SHA]``;
    prints the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="The frontier report: expected gold reward vs KL(π‖π_ref), one curve per method, with uncertainty.",
    )
    parser.add_argument("folder", type=Path, help="sweep folder; every points.jsonl / evidence.jsonl below it is read")
    parser.add_argument("--title", default=None, help="plot and summary title (e.g. the task name)")
    parser.add_argument(
        "--kl",
        type=float,
        nargs="+",
        default=list(DEFAULT_KLS),
        help="KLs (nats) at which to report each curve's reward",
    )
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates (default %(default)s)")
    parser.add_argument("--commit", default=None, help="git sha to name in summary.md (default: this checkout's HEAD)")
    args = parser.parse_args(argv)
    if args.n_boot < 1:
        parser.error("--n-boot must be >= 1")
    paths = make_report(
        args.folder, METHODS, COMPARISONS, kls=args.kl, title=args.title, n_boot=args.n_boot, commit=args.commit
    )
    print(paths["frontier_png"])
    print(paths["summary_md"])
    return paths
