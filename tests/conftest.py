"""Shared test helpers: compose the real Hydra config (the same files a user runs) and run a job in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a name that is not a local folder must fail at once
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.app.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.fixture
def run_pipeline(tmp_path):
    """Run ``pipeline`` on the tiny_debug config with a private cache; returns (result, job folder)."""
    from harness.app.jobs import run_job

    def _run(pipeline: str, *overrides: str, cache: Path | None = None, folder: str = "job"):
        cfg = compose([f"pipeline={pipeline}", "experiment=tiny_debug", f"cache_dir={cache or tmp_path / 'cache'}",
                       "logger.wandb_mode=disabled", *overrides])
        out = tmp_path / folder
        return run_job(cfg, out), out

    return _run
