"""Tracking: the run folder (resolved config, points.jsonl) and W&B (offline by default, no account needed).

Result rows are appended to ``points.jsonl`` first and logged to W&B second, so nothing computed is lost if the
tracker fails. W&B keys are namespaced: ``objective/``, ``policy/``, ``val/``, ``loss/``, ``rewards/``, ``frontier/``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import yaml

from harness.config import LoggerConfig

log = logging.getLogger(__name__)


def save_resolved_config(raw: dict, folder: Path) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Tracker:
    """One run: a folder on disk and, unless disabled, a W&B run in the sweep's group with job_type = method."""

    def __init__(self, folder: str | Path, cfg: LoggerConfig, raw_config: dict, *, method: str, name: str, group: str | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.points_path = self.folder / "points.jsonl"
        self.evidence_path = self.folder / "evidence.jsonl"  # per-prompt means, one line per row (the report's bootstrap)
        for path in (self.points_path, self.evidence_path):
            path.unlink(missing_ok=True)  # a job that starts again starts its rows again (no duplicates)
        self.start = time.time()
        self.run = None
        self.run_id = name
        save_resolved_config(raw_config, self.folder)
        if cfg.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group or group, job_type=method, name=name,
                config=raw_config, dir=str(self.folder), mode=cfg.wandb_mode, reinit="finish_previous",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
            self.run_id = f"{name}-{self.run.id}"
            self.run.define_metric("frontier/*", step_metric="frontier/step")

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, "train/step": step})

    def log_eval(self, point) -> dict:
        """Log an ``harness.evaluator.EvalPoint``: its row and its per-prompt evidence (see ``log_point``)."""
        return self.log_point(point.row(), point.evidence)

    def log_point(self, row: dict, evidence: dict | None = None) -> dict:
        """Append one evaluation row (wall_s = seconds since the run started) and, when given, its per-prompt
        evidence (``evidence.jsonl``, keyed like the row by run_id, setting and step); mirror the row to W&B."""
        row = {**row, "wall_s": round(time.time() - self.start, 3), "run_id": self.run_id}
        if evidence is not None:
            keys = {k: row[k] for k in ("run_id", "method", "setting", "seed", "step")}
            with self.evidence_path.open("a") as f:
                f.write(json.dumps({**keys, **evidence}) + "\n")
        with self.points_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log({f"frontier/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and v is not None})
        return row

    def summary(self, facts: dict) -> None:
        (self.folder / "summary.json").write_text(json.dumps(facts, indent=2, default=str))
        if self.run is not None:
            self.run.summary.update({k: v for k, v in facts.items() if isinstance(v, (int, float, str))})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
