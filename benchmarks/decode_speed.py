"""The sampler's two decode loops side by side: transformers' cached forward over every row (``_sample_hf_cache``)
against our forward over a preallocated cache of the live rows only (``_sample_live_rows``, what ``sample`` runs for
GPT-2 and llama).

The embedded default's model shape (GPT-2, 4 layers, 128 wide, 4 heads, vocabulary 1024 trained on the reviews
task), random weights, 128 held-out-style prompts × 4 samples, 32 new tokens, temperature 1: as initialised (almost
no row draws EOS, so both loops decode every row to the end), then with heads whose EOS logit is raised by
``--eos-bias`` (3: rows end gradually, mean length ~24; 6: most end within a few tokens), as a trained policy's rows
end (there the old loop keeps decoding finished rows). Each side is timed alternately, best of ``--rounds``, from
one seed, in wall-clock and in this process's CPU time (the steadier of the two on a shared machine, at one thread),
and the rows the two loops sampled alike are counted (a row may part at a draw within fp32 rounding of a CDF
boundary: the loops' kernels round differently).

    python benchmarks/decode_speed.py --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import torch


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def model_and_prompts(eos_bias: float, n_prompts: int = 128):
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.config import TaskConfig
    from harness.data.tasks import load_task
    from harness.lm.models import train_tokenizer, use_fused_gelu

    task = load_task(TaskConfig())
    tok = train_tokenizer(task.train_texts, 1024)
    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_positions=96,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = use_fused_gelu(GPT2LMHeadModel(conf)).eval()
    if eos_bias:  # an untied head with a bias on the EOS logit only
        head = torch.nn.Linear(conf.n_embd, conf.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[tok.eos_token_id] = eos_bias
        model.lm_head = head
    prompts = (task.eval_prompts * n_prompts)[:n_prompts]
    return model, tok, prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--eos-bias", type=float, nargs="*", default=[3.0, 6.0], help="EOS logit biases of the heads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from harness.lm import sampling

    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), 1-min load {os.getloadavg()[0]:.2f}")
    for bias in [0.0, *args.eos_bias]:
        label = f"EOS bias {bias:g}" if bias else "random weights"
        model, tok, prompts = model_and_prompts(bias, args.prompts)
        wall = {"hf_cache": [], "live_rows": []}
        cpu = {"hf_cache": [], "live_rows": []}
        out = {}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, step in (("hf_cache", None), ("live_rows", sampling._decode_step(model))):
                saved = sampling._decode_step
                sampling._decode_step = lambda m, step=step: step
                try:
                    w0, c0 = time.perf_counter(), time.process_time()
                    out[name] = sampling.sample(
                        model, tok, prompts, args.samples, args.new_tokens, generator=torch.Generator().manual_seed(0)
                    )
                    wall[name].append(time.perf_counter() - w0)
                    cpu[name].append(time.process_time() - c0)
                finally:
                    sampling._decode_step = saved
        old, new = out["hf_cache"], out["live_rows"]
        same = sum(torch.equal(a, b) for a, b in zip(old.response.unbind(), new.response.unbind()))
        print(
            f"{label}: {old.response.shape[0]} rows, {old.response.shape[1]} steps, mean length "
            f"{old.lengths().mean():.1f}, {old.ended.float().mean():.0%} ended; rows sampled alike {same}"
        )
        for what, t in (("wall", wall), ("cpu", cpu)):
            a, b = min(t["hf_cache"][1:]), min(t["live_rows"][1:])
            print(f"  {what}: hf_cache {a:.3f} s, live_rows {b:.3f} s, {a / b:.2f}x")


if __name__ == "__main__":
    main()
