#!/usr/bin/env python
"""Peer side of the PPO throughput benchmark: TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer``.

Runs in its own virtualenv (``/work/main/.venv-trl112``, made by ``benchmarks/trl112/setup.sh``):
TRL 1.12.0 + transformers 5.x + torch 2.13.0 (CPU). Nothing is downloaded: the tokenizer, the
prompts and all four models (policy, reference, reward, value) are built in memory with random
weights from a GPT-2 config (n_layer=4, n_embd=128, n_head=4).

Configuration (matches the issue): 64 prompts per update (per_device_train_batch_size=64,
gradient_accumulation_steps=1, one process), num_mini_batches=1, num_ppo_epochs=4,
response_length=24, temperature=1.0, stop_token='eos', missing_eos_penalty=1.0, kl_coef=0.05,
fp32 on CPU, no eval, no checkpoints, report_to none. Every other PPOConfig field keeps its
TRL 1.12.0 default (lr 3e-6 AdamW + linear decay, gamma 1.0, lam 0.95, cliprange 0.2,
cliprange_value 0.2, vf_coef 0.1, kl_estimator k1, whiten_rewards False).

Throughput = episodes/s over updates 2..N (update 1 is warm-up), timed at ``on_step_end``, which
TRL calls once per PPO update, after the rollout, the 4 PPO epochs and the metric logging.

stdout gets exactly one line, the final JSON record; everything else (TRL's prints and logs) is
sent to stderr.

CPU-only / random-weights notes and workarounds (see comments at each site):
  * tokenizer ``padding_side='left'``: PPOTrainer concatenates ``query + response`` and
    ``generate`` needs left-padded prompts for a decoder-only model; PreTrainedTokenizerFast
    defaults to right padding.
  * pad token != eos token: TRL derives every mask from ``token == pad_token_id`` and the stop
    from ``token == eos_token_id``; with pad == eos every EOS would be read as padding.
  * ``num_sample_generations=0`` and ``eval_dataset=None``: no sample-generation / eval pass
    inside the timed loop (TRL would otherwise run ``generate_completions`` every N updates).
  * ``save_strategy='no'`` and a throw-away temp ``output_dir``: nothing is written.
  * ``use_cpu=True``, ``bf16=False``, ``fp16=False``: fp32 on CPU (TRL's own Accelerator then
    picks the CPU device; ``empty_cache()`` falls through to a harmless ``torch.cuda.empty_cache``).
  * the dataset holds only ``input_ids`` (TRL's DataCollatorWithPadding pads them and adds an
    attention_mask, which the trainer ignores: it rebuilds masks from the pad id).
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

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched from a hub
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
N_SPECIAL = 4
PROMPTS_PER_UPDATE = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=10, help="PPO updates (64 episodes each); the first is warm-up")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--n-positions", type=int, default=128)
    p.add_argument(
        "--num-prompts", type=int, default=None, help="size of the prompt dataset (default: max(512, 64*updates))"
    )
    p.add_argument("--min-prompt-len", type=int, default=2)
    p.add_argument("--max-prompt-len", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    # Shape, device and precision (defaults: the CPU configuration above; benchmarks/gpu_check.sh passes gpt2-large's
    # 36 x 1280 x 20 on cuda). --bf16 is TRL's own flag: autocast over fp32 weights, as the harness's precision=bf16.
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--bf16", action="store_true")
    # The trained workload (ppo_throughput.py --workload trained): π_SFT and the reward model of the embedded task from
    # the harness's stage cache, and the task's training prompts, so responses end at EOS as a trained policy's do.
    p.add_argument("--sft", default=None, help="a π_SFT folder: policy and reference (and the tokenizer)")
    p.add_argument("--reward-model", default=None, help="a reward-model folder: reward and value model")
    p.add_argument("--prompts-file", default=None, help="a JSON list of prompt strings (with --sft)")
    a = p.parse_args(argv)
    if a.updates < 2:
        p.error("--updates must be >= 2 (the first update is warm-up)")
    if a.vocab_size <= N_SPECIAL + 1:
        p.error("--vocab-size too small")
    if a.max_prompt_len + 24 > a.n_positions:
        p.error("--n-positions must hold max prompt length + 24 response tokens")
    if (a.sft is None) != (a.reward_model is None) or (a.sft is None) != (a.prompts_file is None):
        p.error("--sft, --reward-model and --prompts-file go together (the trained workload)")
    return a


def build_trained(args):
    """The trained workload: tokenizer, prompts, policy, reference, reward and value model from saved folders."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.sft, padding_side="left")  # left: generate's prompts
    assert tokenizer.pad_token_id != tokenizer.eos_token_id, "TRL 1.12 finds padding by the pad id"
    with open(args.prompts_file) as f:
        texts = json.load(f)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    policy = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
    for m in (policy, ref_policy, reward_model, value_model):
        m.config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    return tokenizer, Dataset.from_dict({"input_ids": ids}), (policy, ref_policy, reward_model, value_model)


def build_tokenizer(vocab_size: int):
    """WordLevel tokenizer over a synthetic vocabulary: 4 specials + words 'w4'..'w{V-1}'.

    Token id == position in the vocabulary, so the tokenizer size is exactly ``vocab_size`` and
    matches the model's embedding table. pad (0) and eos (1) are distinct.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, BOS: 2, UNK: 3}
    for i in range(N_SPECIAL, vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        # Workaround: left padding for decoder-only generation (default would be 'right').
        padding_side="left",
    )
    assert hf_tok.pad_token_id == 0 and hf_tok.eos_token_id == 1 and len(hf_tok) == vocab_size
    return hf_tok


def build_prompts(tokenizer, n: int, min_len: int, max_len: int, seed: int):
    """N random prompts of min_len..max_len ordinary (non-special) tokens, as a datasets.Dataset."""
    from datasets import Dataset

    rng = random.Random(seed)
    lo, hi = N_SPECIAL, len(tokenizer) - 1
    rows = [[rng.randint(lo, hi) for _ in range(rng.randint(min_len, max_len))] for _ in range(n)]
    return Dataset.from_dict({"input_ids": rows})


def build_models(
    tokenizer,
    vocab_size: int,
    n_positions: int,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    device: str = "cpu",
):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):  # random init on the device itself (gpt2-large: seconds instead of minutes)
        policy = AutoModelForCausalLM.from_config(cfg)
    # Reference = frozen copy of the initial policy (what TRL itself builds when ref_model=None,
    # and what an SFT checkpoint loaded twice gives), so KL starts at exactly 0.
    ref_policy = copy.deepcopy(policy)
    rm_cfg = copy.deepcopy(cfg)
    rm_cfg.num_labels = 1
    with torch.device(device):
        reward_model = AutoModelForSequenceClassification.from_config(rm_cfg)
    # TRL's PPO recipe (examples/scripts/ppo) loads the value model from the reward-model
    # checkpoint; with random weights we mirror that by copying the reward model.
    value_model = copy.deepcopy(reward_model)
    for m in (policy, ref_policy, reward_model, value_model):
        m.to(torch.float32)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return policy, ref_policy, reward_model, value_model


def cpu_pressure_avg10():
    """'some avg10' of /proc/pressure/cpu (percent of the last 10 s that a task waited for a CPU), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        record = run(args)
    real_stdout.write(json.dumps(record) + "\n")
    real_stdout.flush()
    return 0


def run(args) -> dict:
    import transformers
    import trl
    from transformers import TrainerCallback, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    set_seed(args.seed)
    if args.sft is not None:
        tokenizer, train_dataset, (policy, ref_policy, reward_model, value_model) = build_trained(args)
    else:
        tokenizer = build_tokenizer(args.vocab_size)
        n_prompts = args.num_prompts or max(512, PROMPTS_PER_UPDATE * args.updates)
        train_dataset = build_prompts(tokenizer, n_prompts, args.min_prompt_len, args.max_prompt_len, args.seed)
        policy, ref_policy, reward_model, value_model = build_models(
            tokenizer, args.vocab_size, args.n_positions, args.n_layer, args.n_embd, args.n_head, args.device
        )

    class Timer(TrainerCallback):
        """Wall-clock stamp at the end of every PPO update + the per-update metrics TRL logs."""

        def __init__(self):
            self.step_end = []  # perf_counter at on_step_end of update 1..N
            self.logs = []

        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "objective/kl" in logs:
                self.logs.append(dict(logs))

        def on_step_end(self, _args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the update's kernels have finished, not only been queued
            self.step_end.append(time.perf_counter())

    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="trl112-ppo-") as out_dir:
        config = PPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=PROMPTS_PER_UPDATE,  # 64 prompts per update
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=4,
            response_length=24,
            temperature=1.0,
            stop_token="eos",
            missing_eos_penalty=1.0,
            kl_coef=0.05,
            total_episodes=args.updates * PROMPTS_PER_UPDATE,
            local_rollout_forward_batch_size=PROMPTS_PER_UPDATE,  # whole batch in one generate() call
            num_sample_generations=0,  # no sample-generation pass inside the timed loop
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=args.device == "cpu",
            bf16=args.bf16,
            fp16=False,
            seed=args.seed,
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            train_dataset=train_dataset,
            value_model=value_model,
            eval_dataset=None,
            callbacks=[timer],
        )
        load_start = os.getloadavg()[0]
        t_start = time.perf_counter()
        trainer.train()
        t_end = time.perf_counter()

    n = len(timer.step_end)
    if n != args.updates:
        raise RuntimeError(f"expected {args.updates} on_step_end calls, got {n}")
    wall = timer.step_end[-1] - timer.step_end[0]  # updates 2..N
    timed_updates = n - 1
    return {
        "impl": "trl-1.12.0-ppo",
        "episodes_per_s": timed_updates * PROMPTS_PER_UPDATE / wall,
        "updates": n,  # = --updates = len(kl) = len(scores); the rate uses updates 2..n
        "timed_updates": timed_updates,
        "wall_s": wall,  # on_step_end(update 1) -> on_step_end(update n)
        "kl": [lg["objective/kl"] for lg in timer.logs],
        "scores": [lg["objective/scores"] for lg in timer.logs],
        "torch_threads": torch.get_num_threads(),
        # extras (not part of the agreed record, but cheap and useful)
        "warmup_s": timer.step_end[0] - t_start,
        "total_wall_s": t_end - t_start,
        "episodes_per_update": PROMPTS_PER_UPDATE,
        "seed": args.seed,
        # 1-min load average around the run: on a shared 2-core box a value well above the thread
        # count means another process competed for the CPUs and the rate is not trustworthy.
        "loadavg_1m": [load_start, os.getloadavg()[0]],
        "cpu_pressure_avg10_end": cpu_pressure_avg10(),  # Linux PSI; > ~10 means CPU contention
        "device": args.device,
        "precision": "bf16" if args.bf16 else "fp32",
        "shape": [args.n_layer, args.n_embd, args.n_head, args.vocab_size],
        "workload": "trained" if args.sft else "random",
        "eos_rows": [lg.get("val/num_eos_tokens") for lg in timer.logs],  # rows that ended at EOS, per update
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }


if __name__ == "__main__":
    sys.exit(main())
