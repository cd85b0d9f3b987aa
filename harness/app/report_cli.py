"""``python -m harness.report <sweep folder>``: remake a sweep's frontier report on demand, with the method registry's
records (labels, styles, families, Gao laws) and its headline comparisons.

A user error (a folder that does not exist, one without result rows, a damaged row or evidence file, a bad argument)
is one line on stderr and exit status 2, through the command line's own handler (``harness.app.cli``), with the same
redaction of secrets."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from harness.fields import ConfigError
from harness.preflight.checks import check_real_path
from harness.report.load import load_evidence, load_points
from harness.report.make import make_report
from harness.report.stats import DEFAULT_KLS, N_BOOT
from pipelines.registry import COMPARISONS, METHODS


def _parser() -> argparse.ArgumentParser:
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

    def error(message: str):  # argparse's usage + message over two lines, exit 2 -> our one line
        raise ConfigError(f"command line: {message}; see python -m harness.report --help")

    parser.error = error
    return parser


def _report(argv: Sequence[str] | None) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    args = _parser().parse_args(argv)
    if args.n_boot < 1:
        raise ConfigError(f"--n-boot: must be >= 1 (got {args.n_boot}); set --n-boot 1000")
    bad = next((k for k in args.kl if not (math.isfinite(k) and k >= 0)), None)
    if bad is not None:
        raise ConfigError(f"--kl: {bad} is not a KL (a finite number of nats >= 0); e.g. --kl 2 5 10")
    folder: Path = args.folder
    # a link that loops or leads nowhere, or a name too long, is said as that (is_dir reads it as "does not exist")
    check_real_path(folder.expanduser().absolute(), "folder", "the sweep folder (multirun/<experiment>)")
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(f"folder: '{folder}' {what}; give the sweep folder (multirun/<experiment>)")
    with _held(logging.getLogger(load_points.__module__)) as notes:
        try:  # a damaged row or evidence file is the user's data: one line naming the file and line
            rows, evidence = load_points(folder), load_evidence(folder)
        except ValueError as e:
            raise ConfigError(f"folder: {str(e).splitlines()[0]}; fix or remove that line") from None
    if not rows:
        cut = f"; {len(notes)} cut last line(s) skipped, the first at {notes[0].args[0]}" if notes else ""
        raise ConfigError(f"folder: '{folder}' holds no result rows (no points.jsonl with data below it){cut}")
    for note in notes:  # the report goes on: now they may be said
        logging.getLogger(note.name).handle(note)
    paths = make_report(
        folder,
        METHODS,
        COMPARISONS,
        kls=args.kl,
        title=args.title,
        rows=rows,
        evidence=evidence,
        n_boot=args.n_boot,
        commit=args.commit,
    )
    print(paths["frontier_png"])
    print(paths["summary_md"])
    return paths


@contextlib.contextmanager
def _held(logger: logging.Logger):
    """The warnings ``logger`` logs in the block, held back (a list of records) instead of printed: a refusal that
    follows is the one line on stderr, and says what they said."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI: ``python -m harness.report <folder> [--title T] [--kl 2 5 10] [--n-boot 1000] [--commit SHA]``;
    prints the written paths."""
    from harness.app.cli import stop_on_user_error

    return stop_on_user_error(_report, argv)
