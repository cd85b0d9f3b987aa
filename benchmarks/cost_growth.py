#!/usr/bin/env python
"""Cost growth: seconds per PPO step and per DPO step against model size and response length, fitted power laws,
and from them an estimate of the GPU-hours of the DPO paper's IMDb setting (gpt2-large).

Grid: three GPT-2 shapes built from config with random weights (``harness.lm.models.load_causal_lm``; reference, critic
and reward model load through the harness's loaders too) — 4 layers × 128 (0.8 M weights in matrix products, the
embedded default), 6 × 384 (10.6 M), 8 × 576 (31.9 M); 128 positions, the embedded tokenizer (vocabulary 1024) — and
three response lengths, 24, 48 and 96 new tokens. On each:

* **PPO step** = ``pipelines.ppo.PPO.step`` with the default ``ppo`` config (2 epochs × 2 minibatches) except
  ``batch_size`` (``--ppo-batch`` episodes, 16 by default) and ``max_new_tokens`` = the length; random weights
  seldom sample EOS, so responses run to about the length (88 of 96 on average). Split as ``roofline.py`` splits it (sampling, scoring,
  update).
* **DPO step** = one optimizer step of ``pipelines.dpo.build_trainer`` (TRL DPOTrainer) on ``--dpo-batch`` pairs
  (16 by default) whose chosen and rejected completions are the length in tokens (slices of held-out reviews).

Batches are smaller than the paper's 64 so the grid fits in ~6 minutes on one core; the estimate scales the time
linearly to 64 (the larger models are compute-bound at these batch sizes; for the smallest, per-call overhead makes
the per-episode time higher, which lowers the fitted size exponent).

Fits: log t = c + a·log N + b·log L by least squares over the grid (N = weights in matrix products, 12·layers·d²;
L = new tokens asked), with R²; the one-variable exponents at each length (in N) and at each size (in L); and the
size exponent between the two largest sizes (the local slope, nearer the compute-bound regime).

Estimate (the assumptions are printed with it and can be changed with flags): gpt2-large (36 layers, d = 1280,
vocabulary 50257), prompts of 5 tokens, responses of 64 tokens, batch 64 for PPO and DPO, steps and runs as set by
--paper-ppo-updates / --paper-dpo-steps / --paper-ppo-runs / --paper-dpo-runs / --paper-seeds, plus SFT, preference
sampling and reward-model training once. Three ways:

* **power law**: the fitted CPU seconds at N = 708 M and L = 64, × 64 / measured batch, × the LM head's extra work
  for a 50257 vocabulary (from the FLOP model), divided by the GPU/CPU throughput ratio R = GPU peak / this CPU's
  measured fp32 matrix-multiply peak. The assumption behind R: a GPU reaches the same fraction of its peak as this CPU
  of its own.
* **cpu-frac**: the analytic FLOP count of ``roofline.py`` for the paper's shapes, divided by (GPU peak × the
  fraction of peak this CPU reached on that part at the largest size measured);
* **util**: the same FLOP count divided by (GPU peak × ``--gpu-utilisation``, 0.4 by default).

Each for two GPU peaks: an A100's 312 TFLOP/s (bf16 tensor cores, how such a run is normally done) and 19.5 TFLOP/s
(fp32 without tensor cores, the like-for-like of this CPU's fp32).

Usage (repository root or a checkout; harness imported from the current directory or PYTHONPATH, as roofline.py):

    python benchmarks/cost_growth.py                 # full grid, 1 thread, ~6 min
    python benchmarks/cost_growth.py --quick         # two smaller sizes × 24/48 tokens, batches of 8, ~1 min
    python benchmarks/cost_growth.py --json grid.json
    python benchmarks/cost_growth.py --from-json grid.json --paper-seeds 5   # re-fit / re-estimate, measures nothing
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # roofline.py, its FLOP model and probes
import roofline as R  # noqa: E402

SIZES = ((4, 128, 4), (6, 384, 6), (8, 576, 9))  # (layers, width, heads): heads of 64 dims above the default's 32
LENGTHS = (24, 48, 96)
N_POSITIONS = 128  # room for an 8-word prompt + 96 tokens + EOS

# gpt2-large, the DPO paper's IMDb base model (its public config)
PAPER_SHAPE = R.ModelShape(n_layer=36, d=1280, n_head=20, vocab=50257)
PAPER_PARAMS = 774_030_080
GPU_PEAKS = {"A100 bf16 (312 TFLOP/s)": 312_000.0, "A100 fp32 (19.5 TFLOP/s)": 19_500.0}  # GFLOP/s


# ================================================================================================================
# Measuring one grid point
# ================================================================================================================


def model_config(base, layers: int, d: int, heads: int):
    return dataclasses.replace(base, name="tiny", n_layer=layers, n_embd=d, n_head=heads, n_positions=N_POSITIONS)


def save_random_model(mcfg, tok, folder: Path) -> int:
    """A causal LM of this shape with random weights (the harness's loader, seeded), saved; returns its parameters."""
    from harness.lm.models import count_parameters, load_causal_lm

    model = load_causal_lm(mcfg, tok, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return count_parameters(model)


def load_roles(folder: Path, tok):
    """Policy, reference, critic and reward model from that checkpoint, through the harness's loaders."""
    from harness.lm.models import load_pretrained_lm, load_scalar_model

    return (
        load_pretrained_lm(folder, tok),
        load_pretrained_lm(folder, tok),
        load_scalar_model(folder, tok),
        load_scalar_model(folder, tok),
    )


def token_stream(tok, texts: list[str]) -> list[int]:
    return tok(" ".join(texts), add_special_tokens=False)["input_ids"]


def length_pairs(tok, task, stream: list[int], n: int, length: int, seed: int):
    """``n`` pairs with a 2–8-word prompt and two completions of ``length`` tokens each (slices of review text)."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        rows["prompt"].append(" ".join(rng.choice(task.heldout_texts).split()[: rng.randint(2, 8)]))
        for col in ("chosen", "rejected"):
            i = rng.randrange(0, len(stream) - length)
            rows[col].append(tok.decode(stream[i : i + length]))
    return Dataset.from_dict(rows)


def measure_ppo_point(st, roles, length: int, args) -> dict:
    import pipelines.ppo as ppo_mod
    from pipelines.scoring import RewardModelScore

    policy, reference, critic, rm = roles
    cfg = dataclasses.replace(st.cfgs["ppo"].pipeline, batch_size=args.ppo_batch, max_new_tokens=length)
    ppo = ppo_mod.PPO(policy, reference, critic, RewardModelScore(rm), st.tok, cfg, score_norm=(0.0, 1.0), seed=0)
    prompts = st.task.train_prompts
    cursor = [0]

    def next_prompts() -> list[str]:
        cursor[0] += cfg.batch_size
        return prompts[cursor[0] : cursor[0] + cfg.batch_size]

    # A small warm-up step: the one-time costs (allocator, lazy initialisation) without a full step of the big model.
    warmup = prompts[: 2 * cfg.num_minibatches]
    results = R.measure_ppo(ppo, next_prompts, args.reps, count=False, warmup=warmup)
    return {r.name.replace("ppo ", "ppo_"): r for r in results}


def measure_dpo_point(st, roles, length: int, stream, args) -> R.StageResult:
    from harness.lm.models import disable_dropout, freeze
    from pipelines.dpo import build_trainer

    policy, reference, _, _ = roles
    steps, clock = R.trainer_plan(args.reps, False)
    cfg = dataclasses.replace(
        st.cfgs["dpo"].pipeline, batch_size=args.dpo_batch, max_steps=steps, max_length=N_POSITIONS
    )
    pairs = length_pairs(st.tok, st.task, stream, steps * cfg.batch_size, length, seed=length)
    trainer = build_trainer(
        disable_dropout(policy),
        freeze(reference),
        st.tok,
        pairs,
        cfg,
        str(st.workdir / "dpo"),
        seed=0,
        use_cpu=True,
        callbacks=[clock],
    )
    res = R.run_trainer(trainer, clock, "dpo_step")
    seqs, comps = R.pair_lengths(st.tok, pairs, cfg.max_length)
    res.parts = R.dpo_parts(R.ModelShape.of(policy), seqs, comps, steps)
    res.info["completion_tokens"] = round(sum(comps) / len(comps), 1)
    return res


def measure_point(st, size, folder: Path, n_params: int, length: int, stream, args, peaks) -> dict:
    """PPO and DPO on one (shape, length), from the random checkpoint in ``folder``; fresh roles for each, so DPO
    does not start from PPO's updated policy."""
    layers, d, heads = size
    shape = R.ModelShape(layers, d, heads, len(st.tok))
    ppo = measure_ppo_point(st, load_roles(folder, st.tok), length, args)
    dpo = measure_dpo_point(st, load_roles(folder, st.tok), length, stream, args)
    point = {
        "layers": layers,
        "d": d,
        "heads": heads,
        "params": n_params,
        "matmul_params": shape.matmul_params,
        "new_tokens": length,
        "ppo_batch": args.ppo_batch,
        "dpo_batch": args.dpo_batch,
    }
    for name, res in {**ppo, "dpo_step": dpo}.items():
        row = res.row(peaks)
        point[name] = {k: row[k] for k in ("seconds", "seconds_all", "gflop", "gflop_s", "frac_peak")}
    point["ppo_response_tokens"] = ppo["ppo_sampling"].info.get("response_tokens") if "ppo_sampling" in ppo else None
    point["dpo_completion_tokens"] = dpo.info.get("completion_tokens")
    return point


# ================================================================================================================
# Fits
# ================================================================================================================


def least_squares(xs: list[list[float]], ys: list[float]) -> tuple[list[float], float]:
    """Coefficients of y ≈ c0 + Σ c_i x_i, and R²."""
    import numpy as np

    X = np.column_stack([np.ones(len(ys)), np.asarray(xs, dtype=float)])
    y = np.asarray(ys, dtype=float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return coef.tolist(), r2


def fit_stage(points: list[dict], stage: str) -> dict:
    """log t = c + a log N + b log L over the grid, and the one-variable exponents along each axis."""
    pts = [p for p in points if p.get(stage) and p[stage]["seconds"] > 0]
    logN = [math.log(p["matmul_params"]) for p in pts]
    logL = [math.log(p["new_tokens"]) for p in pts]
    logt = [math.log(p[stage]["seconds"]) for p in pts]
    out: dict = {"stage": stage}
    if len({*logN}) > 1 and len({*logL}) > 1 and len(pts) >= 4:
        (c, a, b), r2 = least_squares([[n, length] for n, length in zip(logN, logL)], logt)
        out.update(log_c=c, size_exponent=a, length_exponent=b, r2=r2)
    out["size_exponent_at_length"] = _one_axis(pts, stage, "new_tokens", "matmul_params")
    out["length_exponent_at_size"] = _one_axis(pts, stage, "matmul_params", "new_tokens")
    out["size_exponent_top2"] = _top_two(pts, stage)
    return out


def _top_two(pts: list[dict], stage: str) -> float | None:
    """The size exponent between the two largest sizes, mean over lengths: the local slope, which approaches the
    compute-bound 1.0 as per-call overheads fade (the whole-grid fit also carries the small sizes' overheads)."""
    sizes = sorted({p["matmul_params"] for p in pts})
    if len(sizes) < 2:
        return None
    lo, hi = sizes[-2:]
    slopes = []
    for length in sorted({p["new_tokens"] for p in pts}):
        a = [p for p in pts if p["new_tokens"] == length and p["matmul_params"] == lo]
        b = [p for p in pts if p["new_tokens"] == length and p["matmul_params"] == hi]
        if a and b:
            slopes.append(math.log(b[0][stage]["seconds"] / a[0][stage]["seconds"]) / math.log(hi / lo))
    return sum(slopes) / len(slopes) if slopes else None


def _one_axis(pts: list[dict], stage: str, fixed: str, varied: str) -> dict:
    out = {}
    for value in sorted({p[fixed] for p in pts}):
        sel = [p for p in pts if p[fixed] == value]
        if len(sel) >= 2:
            (c, e), r2 = least_squares(
                [[math.log(p[varied])] for p in sel], [math.log(p[stage]["seconds"]) for p in sel]
            )
            out[str(value)] = {"exponent": e, "r2": r2, "points": len(sel)}
    return out


def predict(fit: dict, n: float, length: float) -> float:
    return math.exp(fit["log_c"] + fit["size_exponent"] * math.log(n) + fit["length_exponent"] * math.log(length))


# ================================================================================================================
# The paper's setting
# ================================================================================================================


@dataclasses.dataclass
class Paper:
    """The DPO paper's IMDb setting as estimated here (Rafailov et al. 2023, §6.1 and appendices B, C.1), with what
    the paper does not state filled in by an explicit assumption (flags)."""

    prompt_tokens: int = 5  # prefixes of 2–8 tokens
    response_tokens: int = 64  # "response ≤ ~64 tokens": every response taken at the bound
    batch: int = 64  # DPO's stated batch; PPO's taken the same (the paper's own PPO used 1024 per step)
    dpo_steps: int = 2344  # one epoch over 25,000 prefixes × 6 pairs = 150,000 pairs at batch 64 (assumption)
    ppo_updates: int = 391  # one pass over the 25,000 prefixes at 64 episodes per update (assumption)
    ppo_runs: int = 8  # PPO target KL 3, 6, 9, 12 and PPO-GT at the same four (Fig. 2's sweep)
    dpo_runs: int = (
        11  # DPO β 0.05, 0.1, 1, 5; Unlikelihood α 0.05, 0.1, 0.5, 1; Preferred-FT 3 seeds, at DPO's step cost
    )
    seeds: int = (
        3  # each of the 19 trained runs repeated (Best-of-N's 3 runs only sample: left out); 22 runs in the paper
    )
    sft_tokens: float = 25_000 * 300  # 1 epoch over IMDb train, ~300 GPT-2 tokens per review
    rm_epochs: int = 3  # reward model: 3 epochs over the 150,000 pairs
    pairs: int = 150_000
    pref_completions: int = 100_000  # 4 completions for each of 25,000 prefixes


def paper_step_flops(paper: Paper, ppo_cfg) -> dict[str, float]:
    """Analytic FLOPs per PPO update (sampling, scoring, update) and per DPO step on gpt2-large."""
    B, P, T = paper.batch, paper.prompt_tokens, paper.response_tokens
    ppo = R.ppo_step_flops(
        PAPER_SHAPE, dataclasses.replace(PAPER_SHAPE, vocab=1), [P] * B, [T] * B, [False] * B, ppo_cfg
    )
    seqs, comps = [P + T + 1] * (2 * B), [T + 1] * (2 * B)  # chosen and rejected, EOS appended
    dpo = sum((p.flops for p in R.dpo_parts(PAPER_SHAPE, seqs, comps, 1)), R.Flops())
    return {
        "ppo_sampling": ppo["sampling"].total,
        "ppo_scoring": ppo["scoring"].total,
        "ppo_update": ppo["update"].total,
        "dpo_step": dpo.total,
    }


def stage_flops(paper: Paper) -> dict[str, float]:
    """SFT, preference sampling and reward-model training once (FLOP model, real lengths assumed as above)."""
    s = PAPER_SHAPE
    sft = R.TRAIN * (2.0 * s.matmul_params + 2.0 * s.d * s.vocab) * paper.sft_tokens  # attention left out (< 5%)
    gen = R.generation_flops(s, [paper.prompt_tokens], [paper.response_tokens]).total * paper.pref_completions
    rm_seq = paper.prompt_tokens + paper.response_tokens + 1
    rm = (
        R.TRAIN
        * R.forward_flops(dataclasses.replace(s, vocab=1), [rm_seq], 1, 1).total
        * 2
        * paper.pairs
        * paper.rm_epochs
    )
    return {"sft": sft, "pref_sampling": gen, "rm": rm}


def vocab_factor(vocab_measured: int) -> float:
    """How much more a forward token costs with gpt2-large's vocabulary than with the measured one (same body)."""
    s = PAPER_SHAPE
    return (2.0 * s.matmul_params + 2.0 * s.d * s.vocab) / (2.0 * s.matmul_params + 2.0 * s.d * vocab_measured)


def estimate(points: list[dict], fits: dict, paper: Paper, ppo_cfg, cpu_peak: float, vocab: int, util: float) -> dict:
    """GPU-hours of the paper's setting three ways (see the module docstring): the power laws; the FLOP count at the
    fraction of peak this CPU reached on each part at the largest size measured; the FLOP count at ``util``."""
    flops = paper_step_flops(paper, ppo_cfg)
    largest = max(p["matmul_params"] for p in points)
    big = [p for p in points if p["matmul_params"] == largest]

    def frac(part: str) -> float:  # fraction of the CPU's peak on this part at the largest size, mean over lengths
        return sum(p[part]["frac_peak"] for p in big) / len(big)

    vf = vocab_factor(vocab)
    n, L = PAPER_SHAPE.matmul_params, paper.response_tokens
    ppo_parts = ("ppo_sampling", "ppo_scoring", "ppo_update")
    # item -> (steps in all runs, measured batch, {part: FLOPs per step}); a part's efficiency is its own stage's
    items = {
        "ppo_step": (
            paper.ppo_runs * paper.seeds * paper.ppo_updates,
            points[0]["ppo_batch"],
            {k: flops[k] for k in ppo_parts},
        ),
        "dpo_step": (
            paper.dpo_runs * paper.seeds * paper.dpo_steps,
            points[0]["dpo_batch"],
            {"dpo_step": flops["dpo_step"]},
        ),
    }
    # the stages once, each at the efficiency of the measured stage most like it (training: DPO step; generation: PPO sampling)
    stages = stage_flops(paper)
    like = {"sft": "dpo_step", "pref_sampling": "ppo_sampling", "rm": "dpo_step"}
    out = {
        "assumptions": dataclasses.asdict(paper),
        "vocab_factor": vf,
        "cpu_peak_gflop_s": cpu_peak,
        "gpu_utilisation": util,
        "cpu_fraction_of_peak": {k: frac(k) for k in (*ppo_parts, "dpo_step")},
        "items": [],
    }
    for gpu, peak in GPU_PEAKS.items():
        ratio = peak / cpu_peak
        for name, (steps, batch, parts) in items.items():
            fit = fits.get(name, {})
            cpu_s = predict(fit, n, L) * (paper.batch / batch) * vf if "log_c" in fit else float("nan")
            at_cpu_frac = sum(fl / (peak * 1e9 * frac(k)) for k, fl in parts.items())
            total = sum(parts.values())
            out["items"].append(
                {
                    "gpu": gpu,
                    "item": name,
                    "steps": steps,
                    "gflop_per_step": total / 1e9,
                    "cpu_s_per_step_power_law": cpu_s,
                    "hours_power_law": cpu_s / ratio * steps / 3600,
                    "hours_cpu_fraction": at_cpu_frac * steps / 3600,
                    "hours_utilisation": total / (peak * 1e9 * util) * steps / 3600,
                }
            )
        for name, fl in stages.items():
            out["items"].append(
                {
                    "gpu": gpu,
                    "item": name,
                    "steps": 1,
                    "gflop_per_step": fl / 1e9,
                    "hours_power_law": None,
                    "hours_cpu_fraction": fl / (peak * 1e9 * frac(like[name])) / 3600,
                    "hours_utilisation": fl / (peak * 1e9 * util) / 3600,
                }
            )
    return out


# ================================================================================================================
# Output
# ================================================================================================================


def print_grid(points: list[dict], stages: list[str]) -> None:
    head = f"{'shape':<10}{'params':>8}{'N(matmul)':>10}{'tokens':>7}" + "".join(
        f"{s + ' s':>15}{'GF/s':>7}" for s in stages
    )
    print(head)
    print("-" * len(head))
    for p in points:
        line = (
            f"{p['layers']}x{p['d']:<7}{p['params'] / 1e6:>7.1f}M{p['matmul_params'] / 1e6:>9.1f}M{p['new_tokens']:>7}"
        )
        for s in stages:
            r = p.get(s)
            line += f"{r['seconds']:>15.3f}{R._fmt(r['gflop_s'], '.1f'):>7}" if r else f"{'-':>15}{'-':>7}"
        print(line)


def print_fits(fits: dict) -> None:
    print(
        f"\n{'stage':<14}{'t ∝ N^a·L^b':>14}{'R²':>7}{'a(top 2)':>9}   size exponent at each length [R²]; "
        "length exponent at each size [R²]"
    )
    for stage, f in fits.items():
        joint = f"a={f['size_exponent']:.2f} b={f['length_exponent']:.2f}" if "size_exponent" in f else "-"
        r2 = f"{f['r2']:.3f}" if "r2" in f else "-"
        top2 = R._fmt(f.get("size_exponent_top2"), ".2f")
        by_len = ", ".join(
            f"L={k}: {v['exponent']:.2f} [{v['r2']:.2f}]" for k, v in f["size_exponent_at_length"].items()
        )
        by_size = ", ".join(
            f"N={float(k) / 1e6:.1f}M: {v['exponent']:.2f} [{v['r2']:.2f}]"
            for k, v in f["length_exponent_at_size"].items()
        )
        print(f"{stage:<14}{joint:>14}{r2:>7}{top2:>9}   {by_len}; {by_size}")


def print_estimate(est: dict, cpu_peak: float) -> None:
    a = est["assumptions"]
    fr = est["cpu_fraction_of_peak"]
    print("\nGPU-hour estimate of the DPO paper's IMDb setting (gpt2-large), assumptions:")
    print(
        f"  gpt2-large: 36 layers, d=1280, vocab 50257, {PAPER_PARAMS / 1e6:.0f}M parameters "
        f"({PAPER_SHAPE.matmul_params / 1e6:.0f}M in matrix products); prompts {a['prompt_tokens']} tokens, responses "
        f"{a['response_tokens']} tokens; batch {a['batch']} (PPO episodes, DPO pairs)"
    )
    print(
        f"  PPO: {a['ppo_runs']} runs × {a['seeds']} seeds × {a['ppo_updates']} updates (harness default 2 epochs × 2 "
        f"minibatches; policy, reference, critic and RM all gpt2-large)"
    )
    print(
        f"  DPO-cost runs: {a['dpo_runs']} runs × {a['seeds']} seeds × {a['dpo_steps']} steps; stages once: SFT "
        f"{a['sft_tokens'] / 1e6:.1f}M tokens, {a['pref_completions']} completions, RM {a['rm_epochs']} epochs × {a['pairs']} pairs"
    )
    print(
        f"  law: fitted CPU seconds at N=708M, L={a['response_tokens']}, × batch {a['batch']}/measured, × {est['vocab_factor']:.3f} "
        f"(LM head of vocab 50257), ÷ R = GPU peak / this CPU's fp32 peak {cpu_peak:.1f} GFLOP/s ("
        + ", ".join(f"{g.split(' (')[0]}: {v / cpu_peak:,.0f}" for g, v in GPU_PEAKS.items())
        + "), i.e. the GPU at the same fraction of its peak as this CPU of its own"
    )
    print(
        "  cpu-frac: FLOP count ÷ (GPU peak × this CPU's fraction of peak at the largest size: "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in fr.items())
        + "; stages at DPO's or PPO sampling's)"
    )
    print(f"  util: FLOP count ÷ (GPU peak × {100 * est['gpu_utilisation']:.0f}%)")
    head = f"{'GPU':<26}{'item':<15}{'steps':>8}{'GFLOP/step':>12}{'GPU-h law':>11}{'cpu-frac':>10}{'util':>9}"
    print(head)
    for it in est["items"]:
        print(
            f"{it['gpu']:<26}{it['item']:<15}{it['steps']:>8}{it['gflop_per_step']:>12.0f}"
            f"{R._fmt(it['hours_power_law'], '.2f'):>11}{it['hours_cpu_fraction']:>10.2f}{it['hours_utilisation']:>9.2f}"
        )
    for gpu in GPU_PEAKS:
        items = [i for i in est["items"] if i["gpu"] == gpu]
        law = sum(
            i["hours_power_law"] or i["hours_cpu_fraction"] for i in items
        )  # stages have no law: their FLOP count
        print(
            f"{'total ' + gpu:<61}{law:>11.1f}{sum(i['hours_cpu_fraction'] for i in items):>10.1f}"
            f"{sum(i['hours_utilisation'] for i in items):>9.1f}"
        )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="the two smaller shapes × 24 and 48 tokens")
    p.add_argument("--reps", type=int, default=1, help="timed steps per grid point after a warm-up (default 1)")
    p.add_argument("--ppo-batch", type=int, default=None, help="episodes per PPO step on the grid (16; --quick 8)")
    p.add_argument("--dpo-batch", type=int, default=None, help="pairs per DPO step on the grid (16; --quick 8)")
    p.add_argument("--sizes", default=None, help="layers x width x heads, comma-separated, e.g. 4x128x4,6x384x6")
    p.add_argument("--lengths", default=None, help="new tokens, comma-separated (default 24,48,96)")
    for field in dataclasses.fields(Paper):
        p.add_argument(
            f"--paper-{field.name.replace('_', '-')}",
            type=type(field.default),
            default=field.default,
            help=f"paper setting: {field.name} (default {field.default})",
        )
    p.add_argument("--cache-dir", default=None, help="stage cache for the tokenizer (π_SFT's); nothing is built")
    p.add_argument("--sft", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--gpu-utilisation",
        type=float,
        default=0.4,
        help="fraction of the GPU's peak for the third estimate (default 0.4)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="re-fit and re-estimate from a saved run's grid (e.g. with other --paper-* assumptions); measures nothing",
    )
    a = p.parse_args(argv)
    a.ppo_batch = a.ppo_batch or (8 if a.quick else 16)
    a.dpo_batch = a.dpo_batch or (8 if a.quick else 16)
    a.sizes = (
        [tuple(int(x) for x in s.split("x")) for s in a.sizes.split(",")]
        if a.sizes
        else list(SIZES[:2] if a.quick else SIZES)
    )
    a.lengths = [int(x) for x in a.lengths.split(",")] if a.lengths else list(LENGTHS[:2] if a.quick else LENGTHS)
    return a


def measure_grid(args, peaks) -> tuple[list[dict], int]:
    """Every (size, length) point of the grid; returns the points and the vocabulary size measured with."""
    points = []
    with tempfile.TemporaryDirectory(prefix="cost_growth-") as tmp:
        st = R.build_setting(args, Path(tmp))
        stream = token_stream(st.tok, st.task.heldout_texts)
        for size in args.sizes:
            folder = Path(tmp) / f"model_{size[0]}x{size[1]}"
            n_params = save_random_model(model_config(st.cfgs["sft"].model, *size), st.tok, folder)
            for length in args.lengths:
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):
                    points.append(measure_point(st, size, folder, n_params, length, stream, args, peaks))
                print(
                    f"  [{size[0]}x{size[1]}, {length} tokens: {time.perf_counter() - t0:.1f} s]",
                    file=sys.stderr,
                    flush=True,
                )
        return points, len(st.tok)


def report(points: list[dict], cpu_peak: float, vocab: int, args) -> dict:
    """The grid table, the fits and the estimate (printed), as one dict."""
    stages = ["ppo_sampling", "ppo_scoring", "ppo_update", "ppo_step", "dpo_step"]
    print(
        f"\nseconds per step (PPO: {points[0]['ppo_batch']} episodes, DPO: {points[0]['dpo_batch']} pairs) and achieved GFLOP/s:"
    )
    print_grid(points, stages)
    fits = {s: fit_stage(points, s) for s in stages}
    print_fits(fits)
    paper = Paper(**{f.name: getattr(args, f"paper_{f.name}") for f in dataclasses.fields(Paper)})
    est = estimate(points, fits, paper, R.compose("ppo").pipeline, cpu_peak, vocab, args.gpu_utilisation)
    print_estimate(est, cpu_peak)
    return {"fits": fits, "estimate": est}


def main(argv=None) -> dict:
    args = parse_args(argv)
    R.use_working_tree_harness()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(
            f"cost growth from {args.from_json} (measured {saved['meta']['date']}, commit {saved['meta']['commit']}, "
            f"{saved['meta']['threads']} thread(s))"
        )
        result = {**saved, **report(saved["points"], saved["cpu_peak_gflop_s"], saved.get("vocab", 1024), args)}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        return result
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    meta = {**R.machine_identity(args.threads), **R.code_identity()}
    print(f"cost growth: harness from {meta['harness']}, pipelines from {meta['pipelines']} (commit {meta['commit']})")
    print(
        f"{meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} with {args.threads} thread(s), "
        f"load {meta['loadavg_1m_start']:.2f}, {meta['date']}",
        flush=True,
    )
    peaks = R.Peaks(1024 if args.quick else 1536, 0.3 if args.quick else 1.0)
    print(f"CPU peak: {peaks.square:.1f} GFLOP/s (fp32 mm {peaks.square_n}³)", flush=True)
    t_start = time.perf_counter()
    points, vocab = measure_grid(args, peaks)
    meta["loadavg_1m_end"] = os.getloadavg()[0]
    meta["grid_seconds"] = round(time.perf_counter() - t_start, 1)
    result = {
        "meta": meta,
        "cpu_peak_gflop_s": peaks.square,
        "vocab": vocab,
        "points": points,
        **report(points, peaks.square, vocab, args),
    }
    print(
        f"\nload average (1 min): {meta['loadavg_1m_start']:.2f} at start, {meta['loadavg_1m_end']:.2f} at end; "
        f"grid {meta['grid_seconds']:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
