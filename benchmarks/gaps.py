"""Each gap the roofline found, closed and measured before/after in one run (issue 12, item 2).

Four A/B pairs on the embedded default's model (GPT-2, 4 layers, 128 wide, vocabulary 1024; π_SFT from the stage
cache when there is one, else random weights of that shape), each side timed alternately, best of ``--rounds``:

1. padding: forward+backward of one DPO batch (128 pairs = 256 sequences of the preference set's lengths) padded
   to its longest sequence, against the same batch sorted and split into micro-batches of 16 pairs
   (``harness.lm.batching``; the same update);
2. activation: forward+backward of a batch with GPT-2's ``gelu_new`` against PyTorch's fused tanh-GELU
   (``harness.lm.models.use_fused_gelu``; the same function to 3e-7);
3. sampling: one token per row for 256 rows over the vocabulary with ``torch.multinomial`` against the inverse-CDF
   draw (``harness.lm.sampling.draw``);
4. evaluation's exact KL: a policy forward plus the reference forward over 256 sampled responses, against the
   reference forward alone with the policy's log-distributions kept from sampling (``sample(keep_logprobs=True)``).

    python benchmarks/gaps.py --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import time

import numpy as np
import torch


def best_of(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def model_and_tok():
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from harness.lm.models import load_pretrained_lm, train_tokenizer

    found = sorted(glob.glob(".cache/harness/sft/*[0-9a-f]"))
    if found:
        tok = AutoTokenizer.from_pretrained(found[-1])
        return load_pretrained_lm(found[-1], tok), tok, found[-1]
    from harness.config import TaskConfig
    from harness.data.tasks import load_task

    tok = train_tokenizer(load_task(TaskConfig()).train_texts, 1024)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_positions=96,
        n_embd=128,
        n_layer=4,
        n_head=4,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(conf), tok, "random weights"


def pair_lengths(n: int, rng) -> np.ndarray:
    """Sequence lengths like the preference set's (prompt 2-8 words + completion, EOS): mean ~17, max ~41."""
    return np.clip(rng.gamma(4.0, 4.3, size=n).round().astype(int) + 2, 4, 41)


def fwd_bwd(model, lengths) -> None:
    width = int(max(lengths))
    ids = torch.randint(0, model.config.vocab_size - 2, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]).long()
    model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from harness.config import TaskConfig
    from harness.data.tasks import load_task
    from harness.eval.evaluator import kl_stats
    from harness.lm.models import use_fused_gelu
    from harness.lm.sampling import draw, sample

    model, tok, source = model_and_tok()
    rng = np.random.default_rng(0)
    results = []

    def ab(name, before, after):
        b, a = best_of(before, args.rounds), best_of(after, args.rounds)
        results.append({"gap": name, "before_s": round(b, 4), "after_s": round(a, 4), "speedup": round(b / a, 2)})

    # 1. padding
    batch = np.concatenate([pair_lengths(128, rng)] * 2)  # rows [chosen; rejected], same prompts
    fused = use_fused_gelu(copy.deepcopy(model))
    chunks = np.array_split(np.sort(batch), len(batch) // (2 * 16))  # micro-batches of 16 pairs, as measured then
    ab(
        "DPO batch fwd+bwd: padded whole -> length-sorted micro-batches",
        lambda: fwd_bwd(fused, batch),
        lambda: [fwd_bwd(fused, c) for c in chunks],
    )
    # 2. activation
    from transformers.activations import NewGELUActivation

    unfused = copy.deepcopy(model)
    for module in unfused.modules():  # the checkpoint as transformers builds it: gelu_new
        for n, child in module.named_children():
            if isinstance(child, torch.nn.GELU):
                setattr(module, n, NewGELUActivation())
    ab(
        "fwd+bwd 256 x 24 tokens: gelu_new -> fused tanh-GELU",
        lambda: fwd_bwd(unfused, [24] * 256),
        lambda: fwd_bwd(fused, [24] * 256),
    )
    # 3. sampling
    probs = torch.softmax(torch.randn(256, model.config.vocab_size) * 3, -1)
    gen = torch.Generator().manual_seed(0)
    ab(
        "draw 1 token x 256 rows, 32 steps: multinomial -> inverse CDF",
        lambda: [torch.multinomial(probs, 1, generator=gen) for _ in range(32)],
        lambda: [draw(probs, gen) for _ in range(32)],
    )
    # 4. evaluation's exact KL
    prompts = load_task(TaskConfig()).eval_prompts
    reference = copy.deepcopy(fused).eval()
    fused.eval()
    with torch.no_grad():
        kept = sample(fused, tok, prompts, 2, 32, 1.0, generator=torch.Generator().manual_seed(1), keep_logprobs=True)
    plain = copy.copy(kept)
    plain.logprobs = None
    ab(
        "exact KL of 256 samples: policy + reference forward -> reference only",
        lambda: kl_stats(fused, reference, plain, 256),
        lambda: kl_stats(fused, reference, kept, 256),
    )

    load = os.getloadavg()[0]
    print(
        f"model: {source}; threads {args.threads}; torch {torch.__version__}; best of {args.rounds}; "
        f"1-min load {load:.2f}\n"
    )
    print("| gap | before (s) | after (s) | speedup |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['gap']} | {r['before_s']:.4f} | {r['after_s']:.4f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "load": load, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
