#!/usr/bin/env bash
# A stand-in, on this machine, for the GPU machine's Python: a venv that sees the harness environment's packages
# minus everything benchmarks/gpu_wheels.sh carries (transformers too: stricter than the image, which has one) and
# minus W&B and the joblib launcher (links, no copies; made in
# seconds). gpu_check.sh --dry-run run with it proves that the wheelhouse brings every package the image lacks:
#
#   bash benchmarks/gpu_bare_venv.sh && PYTHON=/tmp/gpu_bare_venv/bin/python bash benchmarks/gpu_check.sh --dry-run
set -euo pipefail
SRC_PY="${SRC_PYTHON:-/work/main/.venv/bin/python}"
BARE="${BARE:-/tmp/gpu_bare_venv}"
SRC="$("$SRC_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# importable names and dist-info prefixes left out: the wheelhouse's packages, W&B, the joblib launcher
LEAVE_OUT='^(trl|transformers|accelerate|datasets|dill|multiprocess|_multiprocess|fsspec|hydra|hydra_core|hydra_plugins|hydra_joblib_launcher|omegaconf|antlr4|antlr4_python3_runtime|vaderSentiment|filelock|wandb)([-.].*)?$'
rm -rf "$BARE"
"$SRC_PY" -m venv --without-pip "$BARE"
DST="$("$BARE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for entry in "$SRC"/*; do
  name="$(basename "$entry")"
  [[ "$name" =~ $LEAVE_OUT || "$name" == "__pycache__" || "$name" == *.pth && "$name" == __editable__* ]] && continue
  ln -s "$entry" "$DST/$name"
done
"$BARE/bin/python" - <<'PY'
import importlib.util as u
have = [m for m in ("torch", "transformers", "trl", "hydra", "datasets", "wandb", "pip") if u.find_spec(m)]
print("bare venv sees:", ", ".join(have))
assert "trl" not in have and "hydra" not in have and "datasets" not in have and "transformers" not in have
PY
