#!/usr/bin/env bash
# Set up (if needed), then check and test: ruff (lint and format) over the code, then the whole test suite (unit,
# config, layers, integration, the bad-input battery, kill-and-resume, the installed wheel, the notebook; benchmarks
# excluded). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast edit-test loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --no-cache --quiet .
.venv/bin/ruff format --no-cache --check --quiet .
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
