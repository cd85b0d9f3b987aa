"""Tracking: the run folder (resolved config, points.jsonl) and W&B (offline by default, no account needed).

Result rows are appended to ``points.jsonl`` first and logged to W&B second, so nothing computed is lost if the
tracker fails. W&B keys are namespaced (the scheme: ``pipelines.metrics``): ``objective/``, ``policy/``, ``critic/``,
``rewards/``, ``compute/``, ``train/``, ``eval/`` for per-step metrics, ``frontier/`` for the result rows.

A job that starts afresh starts its row files afresh; a job resumed from a checkpoint (``harness.runs.checkpoint``) cuts
them back to the lines the checkpoint counted (``Tracker.progress``), so the lines a killed attempt wrote after its
last checkpoint are written once, by the resumed run. Its W&B run keeps one id per job and is resumed, so a killed
and resumed job is one W&B run (offline, W&B keeps one folder per attempt, all with that id; synced, they are one run).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import yaml

from harness.config import LoggerConfig
from harness.eval.row import evidence_record

log = logging.getLogger(__name__)
# The run folder's line-per-record files: result rows, their per-prompt evidence, PPO's per-update log.
ROW_FILES = ("points.jsonl", "evidence.jsonl", "updates.jsonl")


def _line_ends(path: Path) -> list[int]:
    """Byte offset just past each complete line of ``path`` (a line a kill cut short has no newline: not counted)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    ends, at = [], data.find(b"\n")
    while at != -1:
        ends.append(at + 1)
        at = data.find(b"\n", at + 1)
    return ends


def keep_lines(path: Path, n: int) -> None:
    """Cut ``path`` back to its first ``n`` lines (none: remove it)."""
    if n == 0:
        path.unlink(missing_ok=True)
        return
    with path.open("r+b") as f:
        f.truncate(_line_ends(path)[n - 1])


def progress_on_disk(folder: Path, progress: dict | None) -> bool:
    """Whether ``folder``'s row files still hold at least the lines ``progress`` (``Tracker.progress``) counted."""
    lines = (progress or {}).get("lines", {})
    return all(len(_line_ends(folder / name)) >= n for name, n in lines.items())


def save_resolved_config(raw: dict, folder: Path) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Tracker:
    """One run: a folder on disk and, unless disabled, a W&B run in the sweep's group with job_type = method."""

    def __init__(
        self,
        folder: str | Path,
        cfg: LoggerConfig,
        raw_config: dict,
        *,
        method: str,
        name: str,
        group: str | None = None,
        wandb_id: str | None = None,
        resume: dict | None = None,
    ) -> None:
        """``wandb_id``: the job's fixed W&B run id (``harness.runs.checkpoint.wandb_run_id``); ``resume``: the
        ``progress()`` a checkpoint recorded, to continue the run folder from (None: start it afresh)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.points_path = self.folder / "points.jsonl"
        self.evidence_path = (
            self.folder / "evidence.jsonl"
        )  # per-prompt means, one line per row (the report's bootstrap)
        kept = (resume or {}).get("lines", {})
        self.lines = {name: kept.get(name, 0) for name in ROW_FILES}
        for row_file, n in self.lines.items():  # not `name`: that is the run id below
            keep_lines(
                self.folder / row_file, n
            )  # no line twice: what the checkpoint counted stays, the rest is redone
        self.start = time.time() - (resume or {}).get("wall_s", 0.0)  # wall_s continues across attempts
        self.run = None
        self.run_id = name
        save_resolved_config(raw_config, self.folder)
        if cfg.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or group,
                job_type=method,
                name=name,
                config=raw_config,
                dir=str(self.folder),
                mode=cfg.wandb_mode,
                reinit="finish_previous",
                id=wandb_id,
                resume="allow" if wandb_id else None,  # every attempt of a job logs to one run
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
            self.run_id = f"{name}-{self.run.id}"
            self.run.define_metric("frontier/*", step_metric="frontier/step")

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, "train/step": step})

    def log_eval(self, point) -> dict:
        """Log an ``harness.eval.row.EvalPoint``: its row and its per-prompt evidence (see ``log_point``)."""
        return self.log_point(point.row(), point.evidence)

    def log_point(self, row: dict, evidence: dict | None = None) -> dict:
        """Append one evaluation row, with its ``wall_s`` (seconds since the run started, ``EvalPoint.wall_s``) and
        this run's id, and, when given, its per-prompt evidence (``evidence.jsonl``, joined to the row on
        ``harness.eval.row.EVIDENCE_JOIN``); mirror the row to W&B."""
        row = {**row, "wall_s": round(time.time() - self.start, 3), "run_id": self.run_id}
        if evidence is not None:
            self.append("evidence.jsonl", evidence_record(row, evidence))
        self.append("points.jsonl", row)
        if self.run is not None:
            self.run.log({f"frontier/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and v is not None})
        return row

    def append(self, name: str, record: dict) -> None:
        """One line in the row file ``name`` (one of ``ROW_FILES``), counted for ``progress``. Opened and closed per
        line: a kill loses nothing written before it."""
        with (self.folder / name).open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines[name] += 1

    def rows(self) -> list[dict]:
        """The result rows written so far (a resumed run's earlier rows included)."""
        if not self.points_path.exists():
            return []
        return [json.loads(line) for line in self.points_path.read_text().splitlines() if line.strip()]

    def progress(self) -> dict:
        """What a checkpoint records of the run folder: the row files' line counts (flushed to disk first, so the
        checkpoint never counts a line the disk does not hold) and the seconds since the run started."""
        for name, n in self.lines.items():
            if n:
                with (self.folder / name).open("rb") as f:
                    os.fsync(f.fileno())
        return {"lines": dict(self.lines), "wall_s": time.time() - self.start}

    def summary(self, facts: dict) -> None:
        (self.folder / "summary.json").write_text(json.dumps(facts, indent=2, default=str))
        if self.run is not None:
            self.run.summary.update({k: v for k, v in facts.items() if isinstance(v, (int, float, str))})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class SilentTracker(Tracker):
    """The tracker of every process but the main one under multi-process training (``harness.lm.distributed``): the same
    rows and counts in memory, nothing written (no run folder files, no W&B run), so each row is written once."""

    def __init__(self, folder: str | Path, *, name: str) -> None:  # noqa: D107 - no super(): it would write
        self.folder = Path(folder)
        self.points_path = self.folder / "points.jsonl"
        self.evidence_path = self.folder / "evidence.jsonl"
        self.lines = {name_: 0 for name_ in ROW_FILES}
        self.start = time.time()
        self.run = None
        self.run_id = name

    def append(self, name: str, record: dict) -> None:
        self.lines[name] += 1

    def progress(self) -> dict:
        return {"lines": dict(self.lines), "wall_s": time.time() - self.start}

    def summary(self, facts: dict) -> None:
        pass
