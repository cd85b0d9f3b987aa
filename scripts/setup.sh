#!/usr/bin/env bash
# One-time set-up of the project virtual environment (.venv); cheap to rerun (it skips what is there).
# torch goes in first, pinned to the CPU wheel this machine keeps on disk: a bare `torch` requirement would pull a
# ~5 GB CUDA build. Everything else comes from pyproject.toml (editable, with the dev extra for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
if ! .venv/bin/python -c "import harness, trl, pytest, nbclient" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q -e ".[dev]"
  touch .venv/.installed
fi
