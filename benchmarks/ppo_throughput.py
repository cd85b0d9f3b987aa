#!/usr/bin/env python
"""PPO throughput: the harness's own PPO (``pipelines/ppo.py``) against TRL 1.12.0's PPOTrainer, side by side.

Both sides run the identical configuration of ``benchmarks/trl112/ppo_peer.py`` (the peer): GPT-2 with 4 layers,
128 hidden, 4 heads, vocabulary 2048, built from config with random weights; the reference is a frozen copy of the
policy, the reward model a ``GPT2ForSequenceClassification`` on the same config and the critic a copy of it;
64 random prompts of 2–8 tokens per update, 24 new tokens at temperature 1, stop at EOS, missing-EOS penalty 1,
β_KL = 0.05 (k1), 4 PPO epochs of 1 minibatch, TRL 1.12's optimiser settings (lr 3e-6, vf_coef 0.1, clip 0.2 / 0.2,
γ = 1, λ = 0.95), fp32 on CPU. The tokenizer and the prompts come from the peer script's own builders.

Our side drives ``pipelines.ppo.PPO.step`` — the same object and update the ``ppo`` pipeline runs — without Hydra.
Throughput = 64 · (updates − 1) / wall time from the end of update 1 to the end of the last update (update 1 is
warm-up), the peer's definition.

Usage (from the repository root, harness venv active; the peer needs ``bash benchmarks/trl112/setup.sh`` once):

    python benchmarks/ppo_throughput.py                    # both sides, one after the other, then the ratio
    python benchmarks/ppo_throughput.py --updates 8 --threads 2 --rounds 2
    python benchmarks/ppo_throughput.py --side ours        # our side only; stdout = one JSON line

A benchmark, not a test: the rate depends on the machine and on what else runs on it (the 1-minute load average
before and after each side is printed; on the shared 2-core box, rerun when it is well above --threads).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "benchmarks" / "trl112" / "ppo_peer.py"
PEER_PYTHON = REPO / ".venv-trl112" / "bin" / "python"
PROMPTS_PER_UPDATE = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=("both", "ours", "peer"), default="both")
    p.add_argument("--updates", type=int, default=6, help="PPO updates of 64 episodes; the first is warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rounds", type=int, default=1, help="ours/peer pairs to run (alternating); the best of each is kept"
    )
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--n-positions", type=int, default=128)
    # The model's shape (default: the 4x128x4 CPU configuration; gpt2-large is 36 x 1280 x 20, vocab 50257, 1024
    # positions: benchmarks/gpu_check.sh), where it runs, and in which precision (harness/lm/precision.py).
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu | cuda (our side; the peer takes the same flag)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument(
        "--workload",
        choices=("random", "trained"),
        default="random",
        help="random: the models above from config (responses almost never end: always 24 tokens); trained: the "
        "embedded task's π_SFT and reward model from the stage cache and its training prompts, both sides (responses "
        "end at EOS, as in the pipeline)",
    )
    p.add_argument("--cache-dir", default=".cache/harness", help="the stage cache of --workload trained")
    a = p.parse_args(argv)
    if a.updates < 2:
        p.error("--updates must be >= 2 (the first update is warm-up)")
    return a


def _peer_module():
    """The peer script as a module, for its tokenizer and prompt builders (so both sides share them exactly)."""
    spec = importlib.util.spec_from_file_location("ppo_peer", PEER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_ours(args):
    """Tokenizer, prompt texts and the four roles, built as the peer builds them (same config, same seed)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, set_seed

    peer = _peer_module()
    set_seed(args.seed)
    tok = peer.build_tokenizer(args.vocab_size)
    n_prompts = max(512, PROMPTS_PER_UPDATE * args.updates)
    rows = peer.build_prompts(tok, n_prompts, 2, 8, args.seed)["input_ids"]
    prompts = [tok.decode(r) for r in rows]  # "w17 w903 ..." re-encodes to the same ids (WordLevel, whitespace split)
    cfg = GPT2Config(
        vocab_size=args.vocab_size,
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device(args.device):  # random init on the device itself: seconds, not minutes, for gpt2-large
        policy = GPT2LMHeadModel(cfg)
        reference = copy.deepcopy(policy)
        rm_cfg = copy.deepcopy(cfg)
        rm_cfg.num_labels = 1
        reward_model = GPT2ForSequenceClassification(rm_cfg)
        critic = copy.deepcopy(reward_model)  # the critic starts as the reward model, as in the pipeline
    return tok, prompts, [m.to(torch.float32) for m in (policy, reference, critic, reward_model)]


def trained_workload(args) -> dict:
    """The default config's π_SFT and reward model from the stage cache (the main job's), and the task's first
    training prompts, as many as the updates take: what ``--workload trained`` hands both sides."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from roofline import compose

    from harness.data.tasks import load_task
    from pipelines.stages.reward_model import reward_model_key
    from pipelines.stages.sft import sft_key

    hc = compose("sft")
    cache = Path(args.cache_dir)
    sft, rm = cache / "sft" / sft_key(hc), cache / "reward_model" / reward_model_key(hc)
    for path in (sft, rm):
        if not (path / "artifact.json").exists():
            sys.exit(f"error: {path} is not built; run the main job (bash scripts/main.sh) first, or pass --cache-dir")
    prompts = load_task(hc.task).train_prompts[: PROMPTS_PER_UPDATE * args.updates]
    return {"sft": sft, "reward_model": rm, "prompts": prompts}


def build_trained_ours(args):
    """The trained workload on our side: the harness's own loaders, as the ``ppo`` pipeline loads its roles (the
    critic starts as the reward model, as in the pipeline and the peer)."""
    from transformers import AutoTokenizer

    from harness.lm.models import load_pretrained_lm, load_scalar_model

    w = trained_workload(args)
    tok = AutoTokenizer.from_pretrained(str(w["sft"]))
    policy, reference = (load_pretrained_lm(w["sft"], tok) for _ in range(2))
    critic, reward_model = (load_scalar_model(w["reward_model"], tok) for _ in range(2))
    return tok, w["prompts"], [policy, reference, critic, reward_model]


def run_ours(args) -> dict:
    import torch

    from pipelines.ppo import PPO
    from pipelines.schemas import PPOPipeline
    from pipelines.scoring import RewardModelScore

    torch.set_num_threads(args.threads)
    if args.workload == "trained":
        tok, prompts, (policy, reference, critic, reward_model) = build_trained_ours(args)
    else:
        tok, prompts, (policy, reference, critic, reward_model) = build_ours(args)
    # TRL 1.12 PPOConfig defaults where the configuration does not fix a value.
    cfg = PPOPipeline(
        name="ppo",
        updates=args.updates,
        batch_size=PROMPTS_PER_UPDATE,
        num_minibatches=1,
        ppo_epochs=4,
        max_new_tokens=24,
        temperature=1.0,
        missing_eos_penalty=1.0,
        kl_coef=0.05,
        kl_estimator="k1",
        learning_rate=3e-6,
        critic_learning_rate=3e-6,
        vf_coef=0.1,
        cliprange=0.2,
        cliprange_value=0.2,
        gamma=1.0,
        lam=0.95,
        normalize_scores=False,
    )
    ppo = PPO(
        policy,
        reference,
        critic,
        RewardModelScore(reward_model),
        tok,
        cfg,
        score_norm=(0.0, 1.0),
        seed=args.seed,
        precision=args.precision,
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    ends, logs = [], []
    for u in range(args.updates):
        batch = prompts[u * PROMPTS_PER_UPDATE : (u + 1) * PROMPTS_PER_UPDATE]
        logs.append(ppo.step(batch))
        sync()
        ends.append(time.perf_counter())
    wall = ends[-1] - ends[0]
    import transformers

    return {
        "impl": "harness-ppo",
        "episodes_per_s": (args.updates - 1) * PROMPTS_PER_UPDATE / wall,
        "updates": args.updates,
        "timed_updates": args.updates - 1,
        "wall_s": wall,
        "kl": [lg["objective/kl"] for lg in logs],
        "scores": [lg["rewards/scores"] for lg in logs],
        "eos_rows": [round((1 - lg["rewards/missing_eos_frac"]) * PROMPTS_PER_UPDATE) for lg in logs],
        "response_tokens": [lg["rewards/response_tokens"] for lg in logs],
        "workload": args.workload,
        "torch_threads": torch.get_num_threads(),
        "warmup_s": ends[0] - t_start,
        "total_wall_s": ends[-1] - t_start,
        "episodes_per_update": PROMPTS_PER_UPDATE,
        "seed": args.seed,
        "loadavg_1m": [load_start, os.getloadavg()[0]],
        "device": args.device,
        "precision": args.precision,
        "shape": [args.n_layer, args.n_embd, args.n_head, args.vocab_size],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }


def _side(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_both(args) -> dict:
    common = [
        "--updates",
        str(args.updates),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--vocab-size",
        str(args.vocab_size),
        "--n-positions",
        str(args.n_positions),
    ]
    if not PEER_PYTHON.exists():
        sys.exit(f"error: {PEER_PYTHON} is missing; run `bash benchmarks/trl112/setup.sh` first")
    ours_only, peer_only = ["--workload", args.workload, "--cache-dir", args.cache_dir], []
    if args.workload == "trained":
        import tempfile

        w = trained_workload(args)
        prompts_file = Path(tempfile.mkdtemp(prefix="ppo-throughput-")) / "prompts.json"
        prompts_file.write_text(json.dumps(w["prompts"]))
        peer_only = [
            "--sft",
            str(w["sft"]),
            "--reward-model",
            str(w["reward_model"]),
            "--prompts-file",
            str(prompts_file),
        ]
    ours, peer = [], []
    for r in range(args.rounds):
        print(f"[round {r + 1}/{args.rounds}] ours ...", file=sys.stderr, flush=True)
        ours.append(_side([sys.executable, __file__, "--side", "ours", *common, *ours_only]))
        print(f"[round {r + 1}/{args.rounds}] TRL 1.12 peer ...", file=sys.stderr, flush=True)
        peer.append(_side([str(PEER_PYTHON), str(PEER), *common, *peer_only]))
    best_o = max(ours, key=lambda d: d["episodes_per_s"])
    best_p = max(peer, key=lambda d: d["episodes_per_s"])
    ratio = best_o["episodes_per_s"] / best_p["episodes_per_s"]

    def fmt(xs):
        return " ".join(f"{x:+.3f}" for x in xs)

    what = (
        f"GPT-2 4x128x4 (vocab {args.vocab_size}), random weights"
        if args.workload == "random"
        else "the embedded task's π_SFT and reward model, its training prompts"
    )
    print(
        f"PPO throughput, {what}, 64 episodes/update, up to 24 new tokens, 4 epochs x 1 minibatch, {args.threads} "
        f"threads, {args.updates} updates (first = warm-up), best of {args.rounds}"
    )
    print(f"{'side':<16}{'episodes/s':>12}{'s/update':>10}{'load before/after':>20}")
    for name, d in (("harness PPO", best_o), ("TRL 1.12 PPO", best_p)):
        print(
            f"{name:<16}{d['episodes_per_s']:>12.2f}{64 / d['episodes_per_s']:>10.2f}"
            f"{d['loadavg_1m'][0]:>10.2f} / {d['loadavg_1m'][1]:.2f}"
        )
    print(f"ratio ours/TRL: {ratio:.2f}x  (target >= 2.5x)")
    print(f"KL     ours: {fmt(best_o['kl'])}\n       TRL : {fmt(best_p['kl'])}")
    print(f"score  ours: {fmt(best_o['scores'])}\n       TRL : {fmt(best_p['scores'])}")
    print(
        f"rows ended at EOS (of 64) ours: {best_o.get('eos_rows')}\n                          TRL : {best_p.get('eos_rows')}"
    )
    if args.rounds > 1:
        print(
            "all rounds episodes/s: ours "
            + ", ".join(f"{d['episodes_per_s']:.2f}" for d in ours)
            + "; TRL "
            + ", ".join(f"{d['episodes_per_s']:.2f}" for d in peer)
        )
    return {"ours": best_o, "peer": best_p, "ratio": ratio, "rounds": {"ours": ours, "peer": peer}}


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.side == "ours":
        print(json.dumps(run_ours(args)))
    elif args.side == "peer":
        print(
            json.dumps(
                _side(
                    [
                        str(PEER_PYTHON),
                        str(PEER),
                        "--updates",
                        str(args.updates),
                        "--threads",
                        str(args.threads),
                        "--seed",
                        str(args.seed),
                    ]
                )
            )
        )
    else:
        run_both(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
