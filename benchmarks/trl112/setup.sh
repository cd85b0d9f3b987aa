#!/usr/bin/env bash
# Creates /work/main/.venv-trl112: TRL 1.12.0 + transformers 5.x on the CPU torch 2.13.0 wheel.
# Idempotent: does nothing when the venv already imports trl 1.12.0 (set FORCE=1 to reinstall).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$REPO/.venv-trl112}"
PY="${PYTHON:-python3}"

# Exact pins, resolved once from `trl==1.12.0 transformers>=5,<6` (trl 1.12.0 itself only asks for
# transformers>=4.56.2, accelerate>=1.4.0, datasets>=4.7.0). Override TRANSFORMERS_SPEC to try another 5.x.
TORCH_SPEC="torch==2.13.0"
TRL_SPEC="trl==1.12.0"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers==5.24.0}"
EXTRA_SPECS=("accelerate==1.15.0" "datasets==5.2.0" "tokenizers==0.23.3")

if [[ "${FORCE:-0}" != "1" && -x "$VENV/bin/python" ]] && \
   TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import trl, transformers, torch, sys
assert trl.__version__ == "1.12.0", trl.__version__
assert transformers.__version__.split(".")[0] == "5", transformers.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401
PY
then
  echo "[trl112] $VENV already has trl 1.12.0 + transformers 5.x; skipping (FORCE=1 to redo)"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
# Keep the venv out of git without touching the repo's .gitignore.
echo '*' > "$VENV/.gitignore"

PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >/dev/null
# torch FIRST and pinned: the local CPU wheel (find-links /opt/wheels) satisfies it, so nothing
# afterwards will pull the multi-GB CUDA build from PyPI.
"${PIP[@]}" "$TORCH_SPEC"
# Then trl + transformers 5 + PPOTrainer's runtime deps, with torch held at the pinned version.
"${PIP[@]}" "$TORCH_SPEC" "$TRL_SPEC" "$TRANSFORMERS_SPEC" "${EXTRA_SPECS[@]}"

TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" - <<'PY'
import torch, transformers, trl, accelerate, datasets, tokenizers
print("[trl112] torch", torch.__version__, "| transformers", transformers.__version__,
      "| trl", trl.__version__, "| accelerate", accelerate.__version__,
      "| datasets", datasets.__version__, "| tokenizers", tokenizers.__version__)
assert trl.__version__ == "1.12.0"
assert transformers.__version__.split(".")[0] == "5"
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401
PY
