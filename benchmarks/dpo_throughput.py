#!/usr/bin/env python
"""DPO step throughput: the harness's DPO trainer (``pipelines.dpo.build_trainer``: TRL's DPOTrainer with our
length-sorted micro-batches, guards and precision flags) on a GPT-2 of a given shape with random weights.

Pairs are synthetic: a WordLevel vocabulary of ``w<i>`` words (``benchmarks/trl112/ppo_peer.py``'s tokenizer), prompts
of 2–8 words and chosen / rejected completions of ``--completion-words`` words each, so every pair has the same
lengths as the PPO benchmark's episodes (prompt + 24 tokens). The reference is a frozen copy of the policy, as
π_ref = π_SFT. Throughput = pairs per second over optimizer steps 2..N (step 1 is warm-up), timed at the trainer's
``on_step_end``.

    python benchmarks/dpo_throughput.py                                  # 4 x 128 x 4 on CPU
    python benchmarks/dpo_throughput.py --peer --threads 1               # and TRL's own DPOTrainer, same run
    python benchmarks/dpo_throughput.py --device cuda --precision bf16 --n-layer 36 --n-embd 1280 --n-head 20 \\
        --vocab-size 50257 --n-positions 1024                            # gpt2-large's shape (gpu_check.sh)

``--peer`` also steps TRL's own ``DPOTrainer`` with its defaults (``DPOConfig``: no micro-batches, TRL's sampler, its
chunked fused LM head, activation checkpointing on as TRL ships it) on the same pairs from the same weights, after
ours in the same process, and adds the ratio; ``--peer-no-checkpointing`` turns TRL's activation checkpointing off
(the one default the harness changes on purpose: recomputing activations is pure cost in memory this small).

stdout: one JSON line per trainer (and the ratio with ``--peer``). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="optimizer steps; the first is warm-up")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per optimizer step")
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=None,
        help="pairs per forward/backward (0 = the whole batch; default: the harness's)",
    )
    p.add_argument("--peer", action="store_true", help="also TRL's own DPOTrainer with its defaults, same run")
    p.add_argument(
        "--peer-no-checkpointing", action="store_true", help="TRL's DPOTrainer without activation checkpointing"
    )
    p.add_argument("--completion-words", type=int, default=24)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--n-positions", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.micro_batch_size is None:
        from harness.fields import MICRO_BATCH_SIZE

        a.micro_batch_size = MICRO_BATCH_SIZE
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    return a


def synthetic_pairs(n: int, vocab_size: int, completion_words: int, seed: int) -> dict[str, list[str]]:
    """``n`` (prompt, chosen, rejected) texts over the words w4..w<V-1>: prompts of 2–8 words, completions of
    ``completion_words`` words (with a leading space, as the preference set's completions)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(f"w{rng.randint(4, vocab_size - 1)}" for _ in range(k))

    prompts = [words(rng.randint(2, 8)) for _ in range(n)]
    return {
        "prompt": prompts,
        "chosen": [" " + words(completion_words) for _ in range(n)],
        "rejected": [" " + words(completion_words) for _ in range(n)],
    }


def run(args) -> list[dict]:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, set_seed

    sys.path.insert(0, str(REPO))
    from benchmarks.ppo_throughput import _peer_module
    from harness.lm.models import freeze
    from pipelines.dpo import build_trainer
    from pipelines.schemas import DPOPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    tok = _peer_module().build_tokenizer(args.vocab_size)
    tok.padding_side = "right"
    data = Dataset.from_dict(
        synthetic_pairs(args.batch_size * args.steps, args.vocab_size, args.completion_words, args.seed)
    )
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
    with torch.device(args.device):
        policy = GPT2LMHeadModel(cfg)
    reference = freeze(copy.deepcopy(policy))
    pipe = DPOPipeline(
        name="dpo",
        beta=0.1,
        learning_rate=1e-6,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        max_steps=args.steps,
        max_length=8 + args.completion_words + 2,
        warmup_ratio=0.0,
        checkpoint_every=0,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.step_end = []

        def on_step_end(self, _args, state, control, **kw):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.step_end.append(time.perf_counter())

    def timed(name: str, make) -> dict:
        timer = Timer()
        with tempfile.TemporaryDirectory(prefix="dpo-throughput-") as out:
            trainer = make(out, timer)
            t0 = time.perf_counter()
            result = trainer.train()
        wall = timer.step_end[-1] - timer.step_end[0]
        return {
            "impl": name,
            "pairs_per_s": (len(timer.step_end) - 1) * args.batch_size / wall,
            "steps": len(timer.step_end),
            "wall_s": wall,
            "warmup_s": timer.step_end[0] - t0,
            "train_loss": result.training_loss,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "precision": args.precision,
            "shape": [args.n_layer, args.n_embd, args.n_head, args.vocab_size],
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        }

    start = copy.deepcopy(policy.state_dict())  # the peer starts from the same weights
    records = [
        timed(
            "harness-dpo (TRL DPOTrainer)",
            lambda out, timer: build_trainer(
                policy,
                reference,
                tok,
                data,
                pipe,
                out,
                seed=args.seed,
                use_cpu=args.device == "cpu",
                callbacks=[timer],
                logging_steps=1,
                precision=args.precision,
            ),
        )
    ]
    if args.peer or args.peer_no_checkpointing:
        from trl import DPOConfig, DPOTrainer

        policy.load_state_dict(start)

        def trl_trainer(out, timer):
            config = DPOConfig(
                output_dir=out,
                beta=pipe.beta,
                learning_rate=pipe.learning_rate,
                per_device_train_batch_size=args.batch_size,
                max_steps=args.steps,
                max_length=pipe.max_length,
                seed=args.seed,
                report_to=[],
                save_strategy="no",
                logging_steps=1,
                use_cpu=args.device == "cpu",
                bf16=args.precision == "bf16",
                **({"activation_checkpointing": False} if args.peer_no_checkpointing else {}),
            )
            return DPOTrainer(
                model=policy,
                ref_model=copy.deepcopy(reference),
                args=config,
                train_dataset=data,
                processing_class=tok,
                callbacks=[timer],
            )

        name = "TRL DPOTrainer defaults" + (" without activation checkpointing" if args.peer_no_checkpointing else "")
        records.append(timed(name, trl_trainer))
        records.append({"ratio_pairs_per_s": records[0]["pairs_per_s"] / records[1]["pairs_per_s"]})
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON line only
        records = run(args)
    for record in records:
        real_stdout.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
