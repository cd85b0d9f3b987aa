"""The frontier in W&B: the rows as a table, a scatter chart on it, and the report's plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.eval.row import REQUIRED_KEYS
from harness.methods import Method
from harness.report.make import make_report


def log_report_to_wandb(
    folder: str | Path,
    rows: Sequence[dict],
    run,
    methods: Mapping[str, Method],
    comparisons: Sequence[tuple[str, str]] = (),
    title: str = "Reward vs KL frontier",
) -> None:
    """Log the frontier to an active W&B run.

    Keys: ``frontier/points`` (a ``wandb.Table`` of all rows, schema columns), ``frontier/scatter`` (a
    gold-reward-vs-KL scatter chart on that table) and ``frontier/plot`` (``frontier.png`` from ``folder``,
    drawn by ``make_report`` first, with ``methods`` and ``comparisons``, if it is not there yet).
    """
    import wandb

    png = Path(folder) / "frontier.png"
    if not png.exists():
        make_report(folder, methods, comparisons, rows=rows, title=title)
    columns = list(REQUIRED_KEYS)
    table = wandb.Table(columns=columns, data=[[r[k] for k in columns] for r in rows])
    run.log(
        {
            "frontier/points": table,
            "frontier/scatter": wandb.plot.scatter(table, "kl", "gold_reward", title=title),
            "frontier/plot": wandb.Image(str(png)),
        }
    )
