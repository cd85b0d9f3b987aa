#!/usr/bin/env bash
# Set up (if needed) and run the main job: the KL-vs-reward frontier study on the embedded default
# (experiment=frontier: SFT, preference set and reward model once, then every method and setting, then the report).
# Extra arguments are Hydra overrides, e.g. `bash scripts/main.sh seeds=[0,1,2]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m harness experiment=frontier "$@"
