#!/usr/bin/env bash
# Builds .whl/ (ignored by git): the Python packages benchmarks/gpu_check.sh installs, without a network, on a GPU
# machine that has PyTorch and transformers and no TRL, Hydra, W&B or datasets. Run it here (where PyPI is reachable)
# from the repository root, then hand `.whl` to the device tool's `carry`.
#
#   bash benchmarks/gpu_wheels.sh            # wheels for Python 3.12 (the GPU image's) and this machine's Python
#   PYVERS="3.12" bash benchmarks/gpu_wheels.sh
#
# Versions are the ones installed in the harness's own environment (what the tests ran on); TRL 1.12.0 for the PPO
# peer goes to its own list (gpu_check.sh installs it into a separate folder: two TRLs cannot share one). Pure-Python
# wheels only, except the small per-version ones (multiprocess); the binary dependencies the GPU image already holds
# (pyarrow, pandas, xxhash, psutil, pyyaml, numpy, matplotlib) are checked by gpu_check.sh, not carried: pyarrow alone
# would not fit the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=/work/main/.venv/bin/python
PYVERS="${PYVERS:-3.12 $("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
OUT=.whl
# what the harness needs beyond torch + transformers' own dependencies (transformers itself: pinned to the tested one)
CORE=(trl transformers accelerate datasets dill multiprocess fsspec hydra-core omegaconf antlr4-python3-runtime
      vaderSentiment filelock)
PEER="trl==1.12.0"

pins=()
for name in "${CORE[@]}"; do
  pins+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf "$OUT"; mkdir -p "$OUT/core" "$OUT/trl112"
printf '%s\n' "${pins[@]}" > "$OUT/core.txt"
echo "$PEER" > "$OUT/trl112.txt"

platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
binary_pins=() sdist_pins=()
for pin in "${pins[@]}"; do
  case "$pin" in antlr4-python3-runtime==*) sdist_pins+=("$pin") ;; *) binary_pins+=("$pin") ;; esac
done
for v in $PYVERS; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp "${platforms[@]}" \
    -d "$OUT/core" "${binary_pins[@]}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp "${platforms[@]}" \
    -d "$OUT/trl112" "$PEER"
done
# antlr4-python3-runtime 4.9.3 (omegaconf's pin) is published as source only: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w "$OUT/core" "${sdist_pins[@]}"
echo "wheelhouse $OUT: $(ls "$OUT"/core | wc -l) core wheels + $(ls "$OUT"/trl112 | wc -l) peer, $(du -sh "$OUT" | cut -f1)"
cat "$OUT/core.txt" "$OUT/trl112.txt" | tr '\n' ' '; echo
