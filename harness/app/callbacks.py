"""Hydra callbacks: the frontier report is made when a sweep ends (and on demand: python -m harness.report)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("harness.report")


class FrontierReport(Callback):
    """On multirun end: frontier.png, points.csv, summary.md in the sweep folder, and a W&B report run in the
    sweep's group with the table, the scatter chart and the plot."""

    def __init__(self, title: str | None = None) -> None:
        self.title = title

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.app.study_output import to_file

        folder = Path(config.hydra.sweep.dir)
        # The report's own output (W&B's banners, plotting warnings) goes to report.log; the terminal gets the verdict
        # and where the report is, the study's last lines.
        with to_file(folder / "report.log"):
            paths = self._report(config, folder)
        if paths is None:
            print(f"no result rows under {folder}; no report")
            return
        print(paths["verdict_txt"].read_text(encoding="utf-8"), end="")
        print(
            f"\nfrontier plot: {paths['frontier_png']}\nsummary:       {paths['summary_md']}\npoints:        {paths['points_csv']}"
        )

    def _report(self, config: DictConfig, folder: Path) -> dict | None:
        from harness.report.load import load_points
        from harness.report.make import make_report
        from harness.report.wandb_log import log_report_to_wandb
        from pipelines.registry import COMPARISONS, METHODS

        rows = load_points(folder)
        if not rows:
            return None
        paths = make_report(folder, METHODS, COMPARISONS, title=self.title, rows=rows)
        mode = config.logger.wandb_mode
        if mode != "disabled":
            import wandb

            run = wandb.init(
                project=config.logger.project,
                entity=config.logger.entity,
                group=config.logger.group or folder.name,
                job_type="report",
                name=f"report-{folder.name}",
                dir=str(folder),
                mode=mode,
                reinit="finish_previous",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
            log_report_to_wandb(folder, rows, run, METHODS, COMPARISONS, title=self.title or "Reward vs KL frontier")
            run.finish()
        return paths
