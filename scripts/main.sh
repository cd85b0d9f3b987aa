#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default. Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
.venv/bin/python -m harness pipeline=sft "$@"
.venv/bin/python -m harness pipeline=preferences "$@"
