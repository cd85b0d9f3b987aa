#!/usr/bin/env python
"""Roofline of every stage: achieved fp32 GFLOP/s against this machine's measured matrix-multiply peak.

One run measures the peak and times each stage of the embedded default, at the same torch thread count (--threads):

* **peak**: the best sustained rate of one large square fp32 matrix product (``torch.mm``, 1536³ by default);
* **shape peak**: the rate of the model's own products — the four linear layers of a GPT-2 block (d→3d, d→d, d→4d,
  4d→d) and the LM head (d→V), with as many rows as the stage feeds them (the rows decoded per step for sampling,
  the tokens of one forward call otherwise), in all three orientations of a training pass (forward, gradient of the
  input, gradient of the weight) for trained models and forward only for no-grad passes. A stage's "fraction of
  shape peak" is the time its counted FLOPs would take at those rates divided by its measured time: 1.0 would mean
  nothing but matrix products, each as fast as the BLAS library runs that shape alone.

Stages, each timed through the harness's own public code on the default config (``conf/``, ``pipeline=...``), π_SFT
from the stage cache when one of the default shape is there (``--sft``/``--cache-dir``; random weights otherwise):

  sft step          one optimizer step of the SFTTrainer ``pipelines/stages/sft.py`` builds (its ``_build`` is run up to
                    ``trainer.train()`` and the trainer taken from there; tokenizer and a corpus slice handed to it)
  pref sampling     ``harness.lm.sampling.sample``: one preference batch (preferences.batch_size rows, k per prompt)
  rm step           one optimizer step of the RewardTrainer ``pipelines/stages/reward_model.py`` builds (the same way; its
                    cache look-ups answered with the π_SFT and preference set found, so nothing is ever built)
  ppo sampling      inside ``pipelines.ppo.PPO.step`` (default ppo config): the rollout's ``sample`` call
  ppo scoring       the rest of ``PPO.rollout`` (log-probs, values, reference, reward model, GAE)
  ppo update        ``PPO.update`` (epochs × minibatches of policy and critic forward+backward, two AdamW steps)
  ppo step          the whole ``PPO.step``
  dpo step          one optimizer step of ``pipelines.dpo.build_trainer`` (TRL DPOTrainer, batch pipeline.batch_size)
  eval: sampling / eval: KL passes / eval: gold   parts of one ``harness.eval.evaluator.Evaluator`` call
  evaluation        the whole call (eval.samples_per_prompt × the task's held-out prompts)

What is counted (analytically, from the model's shape and the real token counts of the data each call saw;
padding is not counted, so the time spent on pad tokens shows as distance from the peak):

* a forward pass over a sequence of s tokens = 2·N·s + 2·L·d·s(s+1) + 2·d·H·h, where N = 12·L·d² are the weights of
  the matrix products (Q, K, V, output projection, MLP; biases, layer norms and embeddings do no matrix products),
  2·L·d·s(s+1) is causal attention (query i against its i keys, QKᵀ and AV), H the head's width (the vocabulary
  V for a language model, 1 for a scalar head) and h the positions where the head is needed;
* forward+backward = 3 × forward (the backward computes gradients of inputs and of weights, 2 × forward);
* generation with the KV cache = one forward over prompt + response minus the last token (the prompt once, then
  one cached forward per new token against the cache), LM head at each sampled position;
* the *minimum* a stage needs, with no pass repeated: the policy's log-probs of sampled tokens come out of the
  sampler, so PPO's scoring counts the reference, critic and reward-model forwards (and the policy's forward over
  epoch 0's first minibatch, which the rollout runs with autograd for the update) and the evaluator's KL counts the
  reference forward only; PPO's update counts epochs × (policy + critic forward+backward), less the policy and critic
  forwards of epoch 0's first minibatch (made at the rollout's parameters, in the rollout);
  DPO counts policy forward+backward and reference forward over chosen and rejected (LM head over the completion
  tokens, EOS included); SFT the LM head at every predicting position; the RM a scalar head at one position.
  Gold scoring (VADER, text) and optimizer updates count 0 FLOPs.

``executed`` is what torch's FlopCounterMode counts in one further call (not timed; for PPO, whose every step draws
new episodes, scaled by the timed steps' required work over that call's own): the matrix products as the code
runs them, pad tokens, full-sequence LM heads and repeated passes included (attention only where it runs as plain
matrix products, and then over the full square; a fused CPU attention kernel is not counted — attention is 1–3% of
the work here either way). exec/req > 1 is work done twice or on padding.

Usage (from the repository root or any checkout of it; the harness is imported from the current directory or
PYTHONPATH, so a worktree of another commit measures that commit's code — the header prints which one):

    python benchmarks/roofline.py                    # full run, 1 thread, ~3 min
    python benchmarks/roofline.py --quick            # smoke check, < 40 s (no FlopCounterMode calls)
    python benchmarks/roofline.py --threads 2 --json out.json
    cd /tmp/before && PYTHONPATH=$PWD python /work/main/benchmarks/roofline.py   # another commit's code

A benchmark, not a test: the numbers depend on the machine and on what else runs on it (the 1-minute load average
before and after is printed; on a shared box rerun when it is well above --threads).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")  # trainers' progress bars would interleave with the table

SCRIPT_REPO = Path(__file__).resolve().parent.parent
TRAIN = 3  # forward + backward = 3 forwards


# ================================================================================================================
# Which harness is measured
# ================================================================================================================


def use_working_tree_harness() -> None:
    """Put the current directory ahead of the editable install, unless PYTHONPATH already chose a tree.

    The venv's editable install points at /work/main; a worktree of another commit must measure its own code, so the
    checkout we are run from wins. PYTHONPATH entries already come before site-packages, so they need nothing.
    """
    if not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, os.getcwd())


def code_identity() -> dict:
    """Where harness and pipelines were imported from, and that tree's commit (with -dirty for local changes)."""
    import harness
    import pipelines

    tree = Path(harness.__file__).resolve().parent.parent
    out = {
        "harness": str(Path(harness.__file__).resolve()),
        "pipelines": str(Path(pipelines.__file__).resolve()),
        "tree": str(tree),
    }
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "harness", "pipelines", "conf"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        out["commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = "unknown"
    return out


def machine_identity(threads: int) -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_1m_start": os.getloadavg()[0],
    }


# ================================================================================================================
# The FLOP model
# ================================================================================================================


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a GPT-2-style model."""

    n_layer: int
    d: int
    n_head: int
    vocab: int

    @property
    def matmul_params(self) -> int:
        """Weights that take part in a matrix product per token: Q, K, V and the output projection (4d²) and the MLP
        (8d²) of each layer. Embeddings are lookups; biases and layer norms are elementwise."""
        return 12 * self.n_layer * self.d**2

    @classmethod
    def of(cls, model) -> ModelShape:
        c = model.config
        return cls(c.n_layer, c.n_embd, c.n_head, c.vocab_size)


@dataclass
class Flops:
    """FLOPs split into the matrix products of linear layers and heads (``dense``) and causal attention."""

    dense: float = 0.0
    attention: float = 0.0

    @property
    def total(self) -> float:
        return self.dense + self.attention

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.dense + other.dense, self.attention + other.attention)

    def __sub__(self, other: Flops) -> Flops:
        return Flops(self.dense - other.dense, self.attention - other.attention)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.dense * k, self.attention * k)

    __rmul__ = __mul__


def forward_flops(shape: ModelShape, seq_lens, head_positions: float, head_width: int) -> Flops:
    """One forward over sequences of real lengths ``seq_lens``, the head applied at ``head_positions`` positions."""
    lens = [float(s) for s in seq_lens]
    dense = 2.0 * shape.matmul_params * sum(lens) + 2.0 * shape.d * head_width * float(head_positions)
    attention = 2.0 * shape.n_layer * shape.d * sum(s * (s + 1) for s in lens)
    return Flops(dense, attention)


def generation_flops(shape: ModelShape, prompt_lens, response_lens) -> Flops:
    """Sampling with a KV cache: the prompt once, then one cached forward per further token; the causal work equals
    one forward over prompt + response[:-1], with the LM head at each sampled position."""
    seqs = [p + r - 1 for p, r in zip(prompt_lens, response_lens)]
    return forward_flops(shape, seqs, sum(response_lens), shape.vocab)


def samples_lengths(s) -> tuple[list[int], list[int], list[bool]]:
    """(real prompt lengths, response lengths incl. EOS, ended) of a ``harness.lm.sampling.Samples``."""
    return (s.query_mask.sum(-1).long().tolist(), s.response_mask.sum(-1).long().tolist(), s.ended.bool().tolist())


# ================================================================================================================
# The machine's peak
# ================================================================================================================


def gemm_rate(m: int, k: int, n: int, seconds: float, windows: int = 3) -> float:
    """Best sustained GFLOP/s of ``torch.mm`` (m×k)·(k×n) over ``windows`` windows of ``seconds`` each."""
    import torch

    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.mm(a, b, out=out)  # first call: the library picks its kernel, pages get touched
    best = 0.0
    for _ in range(windows):
        calls, t0 = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        best = max(best, 2.0 * m * k * n * calls / elapsed / 1e9)
    return best


def model_gemms(shape: ModelShape, rows: int, train: bool) -> list[tuple[int, int, int]]:
    """The (m, k, n) products one pass of ``rows`` tokens runs: the block's four linears and the LM head; with
    ``train`` also their two backward products (dX = dY·Wᵀ: m×n·n×k; dW = Xᵀ·dY: k×m·m×n)."""
    d = shape.d
    out = []
    for k, n in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d), (d, shape.vocab)):
        out.append((rows, k, n))
        if train:
            out += [(rows, n, k), (k, rows, n)]
    return out


def shape_rate(shape: ModelShape, rows: int, train: bool, seconds: float) -> float:
    """GFLOP/s of the model's own products at ``rows`` rows: all of them back to back, total FLOPs / total time."""
    import torch

    gemms = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in model_gemms(shape, rows, train)]
    flops_per_round = sum(2.0 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in gemms)
    for a, b, out in gemms:
        torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(3):
        rounds, t0 = 0, time.perf_counter()
        while True:
            for a, b, out in gemms:
                torch.mm(a, b, out=out)
            rounds += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        best = max(best, flops_per_round * rounds / elapsed / 1e9)
    return best


class Peaks:
    """The square peak, and shape peaks measured on demand (memoised by rounded row count and mode)."""

    def __init__(self, square: int, seconds: float) -> None:
        self.square_n, self.seconds = square, seconds
        self.square = gemm_rate(square, square, square, seconds)
        self.shapes: dict[tuple, float] = {}

    def shape(self, shape: ModelShape, rows: int, train: bool) -> float:
        # Round rows up to a multiple of 32 (at least 32): rates barely move within that, and it bounds the cost.
        r = max(32, int(math.ceil(rows / 32.0)) * 32)
        key = (shape, r, train)
        if key not in self.shapes:
            self.shapes[key] = shape_rate(shape, r, train, self.seconds / 3)
        return self.shapes[key]

    def table(self) -> list[dict]:
        return [
            {
                "layers": s.n_layer,
                "d": s.d,
                "vocab": s.vocab,
                "rows": r,
                "mode": "train" if t else "forward",
                "gflop_s": round(v, 2),
            }
            for (s, r, t), v in sorted(self.shapes.items(), key=lambda kv: (kv[0][1], kv[0][2]))
        ]


# ================================================================================================================
# Timing and counting
# ================================================================================================================


@dataclass
class Part:
    """Counted work of a stage at one GEMM shape: FLOPs per call, rows per product, trained or not."""

    flops: Flops
    shape: ModelShape
    rows: int
    train: bool


@dataclass
class StageResult:
    name: str
    seconds: list[float]  # per call, each timed call
    parts: list[Part] = field(default_factory=list)
    executed: float | None = None  # FlopCounterMode FLOPs of one call
    note: str = ""
    info: dict = field(default_factory=dict)  # e.g. the mean response length sampled

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def flops(self) -> Flops:
        total = Flops()
        for p in self.parts:
            total = total + p.flops
        return total

    def bound_seconds(self, peaks: Peaks) -> float:
        """Time of the counted FLOPs at the shape peaks of their own products."""
        return sum(p.flops.total / (peaks.shape(p.shape, p.rows, p.train) * 1e9) for p in self.parts)

    def row(self, peaks: Peaks) -> dict:
        t, fl = self.median, self.flops
        rate = fl.total / t / 1e9 if t > 0 and fl.total > 0 else None
        return {
            "stage": self.name,
            "seconds": t,
            "seconds_all": self.seconds,
            "gflop": fl.total / 1e9,
            "gflop_attention": fl.attention / 1e9,
            "gflop_s": rate,
            "frac_peak": rate / peaks.square if rate else None,
            "frac_shape_peak": self.bound_seconds(peaks) / t if rate else None,
            "executed_gflop": self.executed / 1e9 if self.executed is not None else None,
            "executed_over_required": (
                self.executed / fl.total if self.executed is not None and fl.total > 0 else None
            ),
            "note": self.note,
            **self.info,
        }


def flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def executed_flops(fn: Callable[[], object]) -> float:
    with flop_counter() as fc:
        fn()
    return float(fc.get_total_flops())


def time_call(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Probe:
    """Wraps functions and methods by name so that their calls are timed (and, while ``counting``, FLOP-counted),
    keeping what they returned. Used to split ``PPO.step`` and ``Evaluator.__call__`` into parts without changing
    them; a name the code no longer has is skipped and that part reported as missing."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.executed: dict[str, float] = {}
        self.returned: dict[str, list] = {}
        self.counted_returned: dict[str, list] = {}  # what the calls made while ``counting`` returned (``keep``)
        self.counting = False
        self.missing: list[str] = []
        self._restore: list[Callable[[], None]] = []

    def wrap(self, owner, attr: str, label: str, keep: bool = False) -> None:
        """Replace ``owner.attr`` by a timed call; ``keep``: also keep what each call returned."""
        original = getattr(owner, attr, None)
        if original is None:
            self.missing.append(label)
            return

        def timed(*args, **kwargs):
            if self.counting:
                with flop_counter() as fc:
                    out = original(*args, **kwargs)
                self.executed[label] = self.executed.get(label, 0.0) + float(fc.get_total_flops())
                if keep:
                    self.counted_returned.setdefault(label, []).append(out)
                return out
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            self.seconds.setdefault(label, []).append(time.perf_counter() - t0)
            if keep:
                self.returned.setdefault(label, []).append(out)
            return out

        had_own = attr in vars(owner) if hasattr(owner, "__dict__") else False
        setattr(owner, attr, timed)
        self._restore.append(lambda: setattr(owner, attr, original) if had_own else delattr(owner, attr))

    def reset(self) -> None:
        self.seconds.clear()
        self.returned.clear()
        self.counted_returned.clear()
        self.executed.clear()

    def restore(self) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()


def step_clock(counted_step: int | None):
    """A trainer callback: wall time between consecutive optimizer steps' ends (step 1 is warm-up), the real lengths
    of the sequences each step's forwards saw (``watch(model)``), and the FLOPs of step ``counted_step`` (1-based;
    counted, not timed; None: no step is counted)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.lengths: list[
                list[int]
            ] = []  # per finished step, every sequence of every forward of the watched model
            self._current: list[int] = []
            self.counter = None
            self.executed: float | None = None

        def watch(self, model) -> None:
            """Record each forward's real sequence lengths (attention-mask row sums; all columns where there is none)."""

            def pre_hook(module, args, kwargs):
                mask = kwargs.get("attention_mask")
                ids = kwargs.get("input_ids", args[0] if args else None)
                if mask is not None:
                    self._current += mask.sum(-1).long().tolist()
                elif ids is not None:
                    self._current += [ids.shape[-1]] * ids.shape[0]

            model.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            if counted_step is not None and state.global_step + 1 == counted_step:  # global_step = steps done
                self.counter = flop_counter()
                self.counter.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.lengths.append(self._current)
            self._current = []
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.executed = float(self.counter.get_total_flops())
                self.counter = None
            else:
                self.ends.append(time.perf_counter())

        def intervals(self) -> list[float]:
            return [b - a for a, b in zip(self.ends, self.ends[1:])]

        def timed_lengths(self) -> list[list[int]]:
            """Sequence lengths of the timed steps (2 .. len(ends))."""
            return self.lengths[1 : len(self.ends)]

    return StepClock()


class _Captured(Exception):
    pass


def capture_trainer(build: Callable[[], object]):
    """Run a stage's own build function up to its ``trainer.train()`` and return that trainer, untrained, so the
    benchmark steps exactly the trainer the stage makes (its config, collator, batching). Every transformers
    ``Trainer`` made meanwhile gets an instance-level ``train`` that stops the build; the last one is returned."""
    import transformers

    original = transformers.Trainer.__init__
    made = []

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

        def stop(*_a, **_k):
            raise _Captured

        self.train = stop

    transformers.Trainer.__init__ = init
    try:
        build()
    except _Captured:
        pass
    finally:
        transformers.Trainer.__init__ = original
    if not made:
        raise RuntimeError("the build made no trainer")
    trainer = made[-1]
    del trainer.train  # the class's train again
    return trainer


# ================================================================================================================
# The default setting: config, data, cached stages
# ================================================================================================================


def compose(pipeline: str, overrides: tuple[str, ...] = ()):
    """The validated harness config for ``pipeline=<pipeline>``, as ``python -m harness`` would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.app.jobs import load as validate

    try:
        from harness.app.cli import CONF_DIR
    except ImportError:  # the entry point moved: conf/ beside the packages, as the README installs them
        CONF_DIR = str(Path(os.getcwd()) / "conf")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(
            hydra_compose(
                config_name="config", overrides=[f"pipeline={pipeline}", "logger.wandb_mode=disabled", *overrides]
            )
        )


def _manifests(root: Path, stage: str) -> list[tuple[Path, dict]]:
    out = []
    for d in sorted((root / stage).glob("*"), key=lambda p: p.stat().st_mtime, reverse=True):  # newest first
        with contextlib.suppress(OSError, ValueError):
            out.append((d, json.loads((d / "artifact.json").read_text())))
    return out


def _model_part(manifest: dict) -> dict | None:
    return next(
        (p for p in manifest.get("identity", {}).get("parts", []) if isinstance(p, dict) and "n_layer" in p), None
    )


def find_stages(roots: list[Path], model_cfg, stage_seed: int, sft_key: str | None = None) -> dict:
    """π_SFT of the configured shape — the one the config under test would use (``sft_key``) if cached, else the
    newest — its preference set for ``stage_seed`` and that set's reward model, from the first cache root that has
    such a π_SFT. Read from manifests only: nothing is built."""
    want = {k: getattr(model_cfg, k) for k in ("name", "n_layer", "n_embd", "n_head", "n_positions", "vocab_size")}
    for root in roots:
        candidates = sorted(_manifests(root, "sft"), key=lambda dm: dm[1].get("key") != sft_key)  # stable: then newest
        for sft_dir, m in candidates:
            part = _model_part(m)
            if part is None or any(part.get(k) != v for k, v in want.items()) or not (sft_dir / "config.json").exists():
                continue
            found = {"root": root, "sft": sft_dir, "prefs": None, "rm": None, "rm_facts": {}}
            for p_dir, pm in _manifests(root, "preferences"):
                parts = pm["identity"]["parts"]
                if parts[1] == m["key"] and {"stage_seed": stage_seed} in parts:
                    found["prefs"] = p_dir
                    break
            if found["prefs"] is not None:
                for r_dir, rm in _manifests(root, "reward_model"):
                    if rm["identity"]["parts"][1] == found["prefs"].name and (r_dir / "config.json").exists():
                        found["rm"], found["rm_facts"] = r_dir, rm.get("facts", {})
                        break
            return found
    return {"root": None, "sft": None, "prefs": None, "rm": None, "rm_facts": {}}


def cache_roots(arg: str | None, cfg_dir: str) -> list[Path]:
    """--cache-dir, else $HARNESS_CACHE_DIR / the config's cache_dir (relative to where we run), then this script's
    checkout's cache (a fresh worktree has none of its own)."""
    roots = [Path(arg)] if arg else [Path(cfg_dir), SCRIPT_REPO / ".cache" / "harness"]
    return list(dict.fromkeys(r.resolve() for r in roots if r.exists()))


def synthetic_pairs(task, n: int, seed: int = 0):
    """Preference-shaped pairs from held-out reviews (prompt = first words of one, chosen/rejected = the rest of two
    others) when no preference set is cached: the right lengths, nothing to learn."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    texts = task.heldout_texts
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        a, b, c = rng.sample(texts, 3)
        k = rng.randint(2, 8)
        rows["prompt"].append(" ".join(a.split()[:k]))
        rows["chosen"].append(" " + " ".join(b.split()[k:]))
        rows["rejected"].append(" " + " ".join(c.split()[k:]))
    return Dataset.from_dict(rows)


@dataclass
class Setting:
    """Everything the stages share: configs, task, tokenizer, where π_SFT / pairs / RM come from."""

    cfgs: dict  # pipeline name -> validated HarnessConfig
    task: object
    tok: object
    gold: object
    stages: dict
    pairs: object  # datasets.Dataset with prompt, chosen, rejected
    workdir: Path
    tmp_checkpoint: Path | None = None  # random-weight π_SFT saved when no cached one exists

    @property
    def sft_path(self) -> Path:
        return self.stages["sft"] or self.tmp_checkpoint

    def policy(self):
        """A fresh π_SFT (the harness's own loader, so its in-memory model changes apply)."""
        from harness.lm.models import load_pretrained_lm

        return load_pretrained_lm(self.sft_path, self.tok)

    def scalar(self, path: Path | None = None):
        from harness.lm.models import load_scalar_model

        return load_scalar_model(path or self.stages["rm"] or self.sft_path, self.tok)


def sft_key_of(hc, workdir: Path) -> str | None:
    """The stage-cache key of the π_SFT this config would train (computed by the code under test; nothing built)."""
    from harness.runs.cache import key_of
    from harness.runs.context import RunContext

    try:
        from pipelines.stages.sft import sft_identity

        return key_of(sft_identity(RunContext(cfg=hc, folder=workdir)))
    except (ImportError, AttributeError, TypeError):
        return None


def build_setting(args, workdir: Path) -> Setting:
    from transformers import AutoTokenizer

    from harness.data.gold import load_gold
    from harness.data.tasks import load_task

    cfgs = {name: compose(name) for name in ("sft", "ppo", "dpo")}
    hc = cfgs["sft"]
    task = load_task(hc.task)
    roots = [Path(args.sft).resolve().parent.parent] if args.sft else cache_roots(args.cache_dir, hc.cache_dir)
    stages = find_stages(roots, hc.model, hc.stage_seed, sft_key_of(hc, workdir))
    if args.sft:
        stages["sft"] = Path(args.sft).resolve()
    setting = Setting(cfgs, task, None, load_gold(hc.gold, "cpu"), stages, None, workdir)
    if stages["sft"] is not None:
        setting.tok = AutoTokenizer.from_pretrained(str(stages["sft"]))
    else:  # no cached π_SFT: the stage's own tokenizer and random weights, saved so every role loads the same way
        from harness.lm.models import load_causal_lm, load_tokenizer

        setting.tok = load_tokenizer(hc.model, task.train_texts)
        model = load_causal_lm(hc.model, setting.tok, seed=hc.task.seed)
        setting.tmp_checkpoint = workdir / "random_sft"
        model.save_pretrained(setting.tmp_checkpoint)
        setting.tok.save_pretrained(setting.tmp_checkpoint)
    if stages["prefs"] is not None:
        from datasets import load_from_disk

        setting.pairs = load_from_disk(str(stages["prefs"] / "pairs"))["train"].select_columns(
            ["prompt", "chosen", "rejected"]
        )
    else:
        setting.pairs = synthetic_pairs(task, 4096)
    return setting


def token_lengths(tok, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


# ================================================================================================================
# Stages
# ================================================================================================================


def planned_steps(reps: int, count: bool) -> int:
    """Optimizer steps a trainer stage runs: 1 warm-up, ``reps`` timed, 1 FLOP-counted if ``count``."""
    return 1 + reps + (1 if count else 0)


def trainer_plan(reps: int, count: bool) -> tuple[int, object]:
    """``planned_steps`` and the clock that times them (and counts the last one's FLOPs if ``count``)."""
    steps = planned_steps(reps, count)
    return steps, step_clock(steps if count else None)


def run_trainer(trainer, clock, name: str) -> StageResult:
    trainer.train()
    return StageResult(name, clock.intervals(), executed=clock.executed)


def stage_context(st: Setting):
    """A RunContext for the stage builders (its cache is never read: the inputs they ask for are handed to them)."""
    from harness.runs.context import RunContext

    return RunContext(cfg=st.cfgs["sft"], folder=st.workdir / "ctx")


@contextlib.contextmanager
def patched(owner, **attrs):
    """Set attributes for the duration of the block (to hand a stage builder its inputs)."""
    old = {k: getattr(owner, k) for k in attrs}
    for k, v in attrs.items():
        setattr(owner, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(owner, k, v)


def sft_trainer(st: Setting, out: Path, n_texts: int):
    """The trainer ``pipelines/stages/sft.py`` builds (a model from scratch), stopped before training. Two inputs are handed
    to it to keep the set-up short: the tokenizer it would train (π_SFT's, trained by the same code on the same
    corpus) and the first ``n_texts`` reviews of the corpus as its training set (the batches are drawn alike)."""
    import pipelines.stages.sft as sft_mod

    ctx = stage_context(st)
    ctx.__dict__["task"] = dataclasses.replace(
        st.task, train_texts=st.task.train_texts[:n_texts]
    )  # the cached property
    with patched(sft_mod, load_tokenizer=lambda cfg, *args, **kwargs: st.tok):
        return capture_trainer(lambda: sft_mod._build(ctx, out, out / ".resume"))  # a resume folder of its own


def rm_trainer(st: Setting, out: Path, n_pairs: int):
    """The trainer ``pipelines/stages/reward_model.py`` builds, stopped before training. Its inputs are handed to it in place
    of the cache look-ups (π_SFT, the preference set cut to its first ``n_pairs`` training pairs), so nothing is built
    and the config's cache keys do not matter."""
    from datasets import DatasetDict

    import pipelines.stages.reward_model as rm_mod
    from harness.runs.cache import Artifact

    sft = Artifact("sft", Path(st.sft_path).name, Path(st.sft_path), reused=True)
    prefs = Artifact("preferences", "roofline", st.workdir, reused=True)
    pairs = DatasetDict(
        {"train": st.pairs.select(range(min(n_pairs, len(st.pairs)))), "test": st.pairs.select(range(16))}
    )
    with patched(
        rm_mod, ensure_sft=lambda ctx: sft, ensure_preferences=lambda ctx: prefs, load_pairs=lambda art: pairs
    ):
        return capture_trainer(lambda: rm_mod._build(stage_context(st), out, out / ".resume"))


def train_captured(trainer, reps: int, count: bool, name: str) -> tuple[StageResult, list[list[int]], ModelShape]:
    """Step a captured trainer: 1 warm-up, ``reps`` timed, 1 FLOP-counted if ``count``; its model's forwards watched.
    Returns the result, the timed steps' sequence lengths and the model's shape."""
    steps, clock = trainer_plan(reps, count)
    trainer.args.max_steps = steps
    trainer.add_callback(clock)
    clock.watch(trainer.model)
    return run_trainer(trainer, clock, name), clock.timed_lengths(), ModelShape.of(trainer.model)


def stage_sft(st: Setting, reps: int, count: bool) -> StageResult:
    """SFT step: TRL's SFTTrainer as the stage builds it; per step, forward+backward over every review (+ EOS), the
    LM head at each position that predicts a token."""
    n = planned_steps(reps, count) * st.cfgs["sft"].sft.batch_size
    res, steps, shape = train_captured(sft_trainer(st, st.workdir / "sft", n), reps, count, "sft step")
    lens = [n for step in steps for n in step]
    res.parts = [
        Part(
            TRAIN * forward_flops(shape, lens, sum(n - 1 for n in lens), shape.vocab) * (1.0 / len(steps)),
            shape,
            sum(lens) // len(steps),
            True,
        )
    ]
    return res


def stage_rm(st: Setting, reps: int, count: bool) -> StageResult:
    """RM step: TRL's RewardTrainer as the stage builds it; per step, forward+backward over chosen and rejected, the
    scalar head at one position each."""
    n = planned_steps(reps, count) * st.cfgs["sft"].reward_model.batch_size
    res, steps, shape = train_captured(rm_trainer(st, st.workdir / "rm", n), reps, count, "rm step")
    lens = [n for step in steps for n in step]
    res.parts = [
        Part(
            TRAIN * forward_flops(shape, lens, len(lens), 1) * (1.0 / len(steps)), shape, sum(lens) // len(steps), True
        )
    ]
    return res


def pair_lengths(tok, pairs, max_length: int) -> tuple[list[int], list[int]]:
    """(sequence lengths, completion lengths) of chosen then rejected: prompt + completion + EOS, truncated."""
    prompt = token_lengths(tok, list(pairs["prompt"]))
    seqs, comps = [], []
    for col in ("chosen", "rejected"):
        for p, c in zip(prompt, token_lengths(tok, [a + b for a, b in zip(pairs["prompt"], pairs[col])])):
            total = min(c + 1, max_length)
            seqs.append(total)
            comps.append(max(0, total - p))
    return seqs, comps


def stage_dpo(st: Setting, reps: int, count: bool) -> StageResult:
    from harness.lm.models import disable_dropout
    from pipelines.dpo import build_trainer
    from pipelines.trainer_run import check_pairs, load_frozen_reference

    hc = st.cfgs["dpo"]
    steps, clock = trainer_plan(reps, count)
    cfg = dataclasses.replace(hc.pipeline, max_steps=steps)
    pairs = check_pairs(st.pairs.select(range(min(len(st.pairs), steps * cfg.batch_size))), st.tok, cfg.max_length)
    import torch

    policy = disable_dropout(st.policy())
    reference = load_frozen_reference(st.sft_path, st.tok, torch.device("cpu"))
    trainer = build_trainer(
        policy, reference, st.tok, pairs, cfg, str(st.workdir / "dpo"), seed=hc.seed, use_cpu=True, callbacks=[clock]
    )
    res = run_trainer(trainer, clock, "dpo step")
    res.parts = dpo_parts(ModelShape.of(policy), *pair_lengths(st.tok, pairs, cfg.max_length), steps)
    return res


def dpo_parts(shape: ModelShape, seqs: list[int], comps: list[int], steps: int) -> list[Part]:
    """Per DPO step (``steps`` steps over these chosen+rejected sequences): policy forward+backward and reference
    forward, LM head over the completion tokens."""
    fwd = forward_flops(shape, seqs, sum(comps), shape.vocab) * (1.0 / steps)
    rows = sum(seqs) // steps
    return [Part(TRAIN * fwd, shape, rows, True), Part(fwd, shape, rows, False)]


def stage_pref_sampling(st: Setting, reps: int, count: bool) -> StageResult:
    import torch

    from harness.lm.sampling import sample

    c = st.cfgs["sft"].preferences
    per_batch = max(1, c.batch_size // c.samples_per_prompt)  # as pipelines/stages/preferences.py batches it
    prompts = st.task.train_prompts[:per_batch]
    policy = st.policy()
    gen = torch.Generator().manual_seed(0)
    out: list = []

    def call():
        out.append(
            sample(policy, st.tok, prompts, c.samples_per_prompt, c.max_new_tokens, c.temperature, generator=gen)
        )

    call()  # warm-up
    res = StageResult(
        "pref sampling",
        [time_call(call) for _ in range(reps)],
        note=response_note(out[1:]),
        info={"response_tokens": mean_response(out[1:])},
    )
    shape = ModelShape.of(policy)
    flops = Flops()
    for s in out[1:]:
        p, r, _ = samples_lengths(s)
        flops = flops + generation_flops(shape, p, r)
    res.parts = [Part(flops * (1.0 / reps), shape, per_batch * c.samples_per_prompt, False)]
    if count:
        res.executed = executed_flops(call)
    return res


# ------------------------------------------------------------------------------------------------ PPO


def build_ppo(st: Setting, cfg):
    """``pipelines.ppo.PPO`` on the four roles as ``build_roles`` makes them for ``ppo`` (from the cached stages,
    without building any): policy and reference π_SFT, critic = r_φ with its head rescaled to the normalised score."""
    import pipelines.ppo as ppo_mod
    from pipelines.scoring import RewardModelScore

    facts = st.stages["rm_facts"]
    norm = (facts["sft_score_mean"], facts["sft_score_std"]) if "sft_score_mean" in facts else (0.0, 1.0)
    critic = st.scalar()
    if cfg.normalize_scores and hasattr(ppo_mod, "normalised_head"):
        critic.score = ppo_mod.normalised_head(critic.score, *norm)
    reward = RewardModelScore(st.scalar())
    return ppo_mod.PPO(
        st.policy(),
        st.policy(),
        critic,
        reward,
        st.tok,
        cfg,
        score_norm=norm if cfg.normalize_scores else (0.0, 1.0),
        seed=0,
    )


def ppo_step_flops(
    shape_lm: ModelShape, shape_scalar: ModelShape, prompt_lens, response_lens, ended, cfg
) -> dict[str, Flops]:
    """Counted work of one PPO step on episodes of these lengths: sampling, scoring (reference, critic and reward
    model forwards, and the policy's forward over epoch 0's first minibatch) and update (epochs × policy and critic
    forward+backward, less the forwards the rollout made for it).

    The rollout runs epoch 0's first minibatch through the policy with autograd (``pipelines.ppo.FirstPass``: at the
    rollout's parameters that forward is the update's), so that forward is counted where it runs, in scoring, as the
    critic's forward over the same minibatch already was; the step's total is the same either way."""
    seqs = [a + b for a, b in zip(prompt_lens, response_lens)]
    ref = forward_flops(shape_lm, seqs, sum(response_lens), shape_lm.vocab)  # the policy's forward is the same work
    critic = forward_flops(shape_scalar, seqs, sum(response_lens), 1)
    rm = forward_flops(shape_scalar, [n + (not e) for n, e in zip(seqs, ended)], len(seqs), 1)  # + EOS where cut
    first = (ref + critic) * (1.0 / cfg.num_minibatches)  # epoch 0's first minibatch, forward, in the rollout
    return {
        "sampling": generation_flops(shape_lm, prompt_lens, response_lens),
        "scoring": ref + rm + critic * (1.0 - 1.0 / cfg.num_minibatches) + first,
        "update": TRAIN * cfg.ppo_epochs * (ref + critic) - first,
    }


def mean_response(samples: list) -> float | None:
    lengths = [n for s in samples for n in samples_lengths(s)[1]]
    return round(sum(lengths) / len(lengths), 1) if lengths else None


def response_note(samples: list) -> str:
    m = mean_response(samples)
    return "" if m is None else f"mean response {m} tokens"


def ppo_parts(shape_lm: ModelShape, shape_scalar: ModelShape, samples: list, cfg) -> dict[str, list[Part]]:
    """Counted work per PPO step (mean over ``samples``, one ``Samples`` per step), with each part's GEMM rows."""
    total = {"sampling": Flops(), "scoring": Flops(), "update": Flops()}
    rows = tokens = 0
    for s in samples:
        p, r, ended = samples_lengths(s)
        for k, v in ppo_step_flops(shape_lm, shape_scalar, p, r, ended, cfg).items():
            total[k] = total[k] + v
        rows, tokens = rows + len(p), tokens + sum(p) + sum(r)
    n = len(samples)
    k = 1.0 / n
    return {
        "sampling": [Part(total["sampling"] * k, shape_lm, rows // n, False)],  # one row per episode per decode step
        "scoring": [Part(total["scoring"] * k, shape_lm, tokens // n, False)],
        "update": [Part(total["update"] * k, shape_lm, tokens // n // cfg.num_minibatches, True)],
    }


def measure_ppo(
    ppo,
    next_prompts: Callable[[], list[str]],
    reps: int,
    count: bool,
    prefix: str = "ppo",
    warmup: list[str] | None = None,
) -> list[StageResult]:
    """Time ``ppo.step`` (1 warm-up + ``reps``) and split it with probes on its rollout's ``sample`` call, ``rollout``
    and ``update``; then, if ``count``, one more step under FlopCounterMode. ``warmup``: the warm-up step's prompts
    (default a full batch)."""
    import pipelines.ppo as ppo_mod

    probe = Probe()
    probe.wrap(ppo_mod, "sample", "sampling", keep=True)
    probe.wrap(ppo, "rollout", "rollout")
    probe.wrap(ppo, "update", "update")
    try:
        ppo.step(warmup if warmup is not None else next_prompts())  # warm-up
        probe.reset()
        steps = [time_call(lambda: ppo.step(next_prompts())) for _ in range(reps)]
        samples = list(probe.returned.get("sampling", []))
        seconds = {k: list(v) for k, v in probe.seconds.items()}
        executed: dict[str, float] = {}
        if count:
            probe.counting = True
            executed["step"] = executed_flops(lambda: ppo.step(next_prompts()))
            executed.update(probe.executed)
            probe.counting = False
    finally:
        probe.restore()
    cfg = ppo.cfg
    shapes = ModelShape.of(ppo.policy), ModelShape.of(ppo.critic)
    parts = ppo_parts(*shapes, samples, cfg) if samples else {}
    counted = probe.counted_returned.get("sampling", [])
    if samples and counted and executed:
        # The counted step draws its own episodes (PPO has moved on; their lengths differ from the timed steps'), so
        # its FLOPs are compared with its own required work and scaled to the timed steps': exec/req is then the
        # ratio on one and the same set of episodes.
        own = ppo_parts(*shapes, counted, cfg)
        part_of = {"sampling": ["sampling"], "rollout": ["sampling", "scoring"], "update": ["update"]}
        part_of["step"] = ["sampling", "scoring", "update"]
        for label, names in part_of.items():
            timed = sum(p.flops.total for n in names for p in parts.get(n, []))
            mine = sum(p.flops.total for n in names for p in own.get(n, []))
            if label in executed and mine > 0:
                executed[label] *= timed / mine
    out = []
    if "sampling" in seconds:
        out.append(
            StageResult(
                f"{prefix} sampling",
                seconds["sampling"],
                parts.get("sampling", []),
                executed.get("sampling"),
                note=response_note(samples),
                info={"response_tokens": mean_response(samples)},
            )
        )
    if "rollout" in seconds and "sampling" in seconds:
        scoring = [r - s for r, s in zip(seconds["rollout"], seconds["sampling"])]
        ex = executed["rollout"] - executed["sampling"] if "rollout" in executed and "sampling" in executed else None
        out.append(
            StageResult(f"{prefix} scoring", scoring, parts.get("scoring", []), ex, note="rollout minus its sampling")
        )
    if "update" in seconds:
        out.append(StageResult(f"{prefix} update", seconds["update"], parts.get("update", []), executed.get("update")))
    all_parts = [p for v in parts.values() for p in v]
    note = ("parts missing: " + ", ".join(probe.missing)) if probe.missing else ""
    out.append(StageResult(f"{prefix} step", steps, all_parts, executed.get("step"), note=note))
    return out


def stage_ppo(st: Setting, reps: int, count: bool, light_warmup: bool = False) -> list[StageResult]:
    """PPO's parts as ``measure_ppo`` times them; ``light_warmup`` (--quick): a warm-up step of 4 prompts."""
    import torch

    cfg = st.cfgs["ppo"].pipeline
    ppo = build_ppo(st, cfg)
    prompts = st.task.train_prompts
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0)).tolist()
    cursor = [0]

    def next_prompts() -> list[str]:  # a fresh batch each step, as the pipeline draws them
        i = cursor[0]
        cursor[0] = (i + cfg.batch_size) % max(1, len(prompts) - cfg.batch_size)
        return [prompts[j] for j in order[i : i + cfg.batch_size]]

    warmup = prompts[: 2 * cfg.num_minibatches] if light_warmup else None
    return measure_ppo(ppo, next_prompts, reps, count, warmup=warmup)


# ------------------------------------------------------------------------------------------------ evaluation


def stage_eval(st: Setting, reps: int, count: bool) -> list[StageResult]:
    import harness.eval.evaluator as ev_mod

    hc = st.cfgs["sft"]
    policy = st.policy()
    reference = st.policy()
    evaluator = ev_mod.Evaluator(reference, st.tok, st.task.eval_prompts, st.gold, hc.eval)

    def call():
        evaluator(policy, method="roofline", setting="", seed=hc.seed, step=0, run_id="roofline")

    probe = Probe()
    probe.wrap(ev_mod, "sample", "sampling", keep=True)
    probe.wrap(ev_mod, "kl_stats", "kl")
    probe.wrap(evaluator, "gold", "gold")
    try:
        call()  # warm-up
        probe.reset()
        totals = [time_call(call) for _ in range(reps)]
        samples = list(probe.returned.get("sampling", []))
        seconds = {k: list(v) for k, v in probe.seconds.items()}
        executed: dict[str, float] = {}
        if count:
            probe.counting = True
            executed["total"] = executed_flops(call)
            executed.update(probe.executed)
            probe.counting = False
    finally:
        probe.restore()
    shape = ModelShape.of(policy)
    gen, kl = Flops(), Flops()
    rows = tokens = 0
    for s in samples:
        p, r, _ = samples_lengths(s)
        gen = gen + generation_flops(shape, p, r)
        kl = kl + forward_flops(shape, [a + b for a, b in zip(p, r)], sum(r), shape.vocab)  # the reference's pass
        rows, tokens = rows + len(p), tokens + sum(p) + sum(r)
    n = max(1, len(samples))
    rows_per_call = rows // n
    # kl_stats runs the models over chunks of eval.batch_size samples: that many sequences per product
    chunk_tokens = min(rows_per_call, hc.eval.batch_size) * tokens // max(1, rows)
    gen_part = [Part(gen * (1.0 / n), shape, rows_per_call, False)] if samples else []
    kl_part = [Part(kl * (1.0 / n), shape, chunk_tokens, False)] if samples else []
    out = []
    if "sampling" in seconds:
        out.append(
            StageResult(
                "eval: sampling",
                seconds["sampling"],
                gen_part,
                executed.get("sampling"),
                note=response_note(samples),
                info={"response_tokens": mean_response(samples)},
            )
        )
    if "kl" in seconds:
        out.append(
            StageResult(
                "eval: KL passes", seconds["kl"], kl_part, executed.get("kl"), note="required: the reference's forward"
            )
        )
    if "gold" in seconds:
        out.append(StageResult("eval: gold", seconds["gold"], [], None, note="VADER on text, no FLOPs"))
    note = ("parts missing: " + ", ".join(probe.missing)) if probe.missing else ""
    out.append(StageResult("evaluation", totals, gen_part + kl_part, executed.get("total"), note=note))
    return out


STAGES = ("sft", "pref_sampling", "rm", "ppo", "dpo", "eval")


def run_stage(name: str, st: Setting, reps: int, count: bool, quick: bool = False) -> list[StageResult]:
    if name == "sft":
        return [stage_sft(st, reps, count)]
    if name == "pref_sampling":
        return [stage_pref_sampling(st, reps, count)]
    if name == "rm":
        return [stage_rm(st, reps, count)]
    if name == "ppo":
        return stage_ppo(st, reps, count, light_warmup=quick)
    if name == "dpo":
        return [stage_dpo(st, reps, count)]
    return stage_eval(st, reps, count)


# ================================================================================================================
# The main job: the work it requires, and the fraction of the machine's peak its wall time reaches
# ================================================================================================================


def study_entries(experiment: str) -> list[list[str]]:
    """The jobs of ``conf/experiment/<experiment>.yaml``'s study, each its list of overrides."""
    import yaml

    try:
        from harness.app.cli import CONF_DIR
    except ImportError:
        CONF_DIR = str(Path(os.getcwd()) / "conf")
    return [
        list(e) for e in yaml.safe_load((Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").read_text())["study"]
    ]


def evaluations_of(steps: int, every: int) -> int:
    """Evaluations a trained job makes: step 0, every ``every`` steps, and the last step if it is not one of those."""
    return 1 + steps // every + (1 if steps % every else 0)


def main_job_calls(experiment: str, n_train_texts: int, n_pairs: int) -> dict[str, float]:
    """How many calls of each roofline stage the study makes (required work: the π_SFT step-0 evaluation once per
    run seed, since every job's is the same measurement). Stages the roofline does not time are charged in units of
    the ones it does: an Unlikelihood step as a DPO step's policy forward+backward (pairs × its batch / DPO's), a
    Preferred-FT step as half of that (chosen only), Best-of-N as evaluations (its samples ÷ an evaluation's, each
    sampled and scored by one forward)."""
    calls: dict[str, float] = {}

    def add(stage: str, n: float) -> None:
        calls[stage] = calls.get(stage, 0.0) + n

    seeds: set[int] = set()
    for entry in study_entries(experiment):
        pipeline = next(o.split("=", 1)[1] for o in entry if o.startswith("pipeline="))
        hc = compose(pipeline, (f"experiment={experiment}", *[o for o in entry if not o.startswith("pipeline=")]))
        p, every = hc.pipeline, hc.eval.every
        if pipeline == "sft":  # π_SFT itself (built once), the preference set and the reward model with it
            add("sft step", math.ceil(n_train_texts / hc.sft.batch_size) * hc.sft.epochs)
            per_batch = max(1, hc.preferences.batch_size // hc.preferences.samples_per_prompt)
            add("pref sampling", math.ceil(hc.task.n_train_prompts / per_batch))
            add("rm step", math.ceil(n_pairs / hc.reward_model.batch_size) * hc.reward_model.epochs)
            seeds.add(hc.seed)
            continue
        if pipeline == "preferences":  # the stages' own job: π_SFT and the pairs, counted with pipeline=sft
            continue
        if pipeline == "best_of_n":
            add("evaluation", max(p.ns))  # eval.samples_per_prompt groups of max(N) per prompt: max(N) evaluations
            continue
        steps = p.updates if pipeline in ("ppo", "ppo_gt") else p.max_steps
        if pipeline in ("ppo", "ppo_gt"):
            add("ppo step", steps)
        elif pipeline in ("dpo", "ipo", "cdpo"):
            add("dpo step", steps)
        elif pipeline == "unlikelihood":
            add("dpo step: policy", steps * p.batch_size / compose("dpo").pipeline.batch_size)
        elif pipeline == "preferred_ft":
            add("dpo step: policy", 0.5 * steps * p.batch_size / compose("dpo").pipeline.batch_size)
        else:
            raise ValueError(f"main_job_calls: no roofline stage for {pipeline}")
        add("evaluation", evaluations_of(steps, every) - 1)  # its step 0 is π_SFT's (counted once per seed)
        seeds.add(hc.seed)
    add("evaluation", len(seeds))
    return calls


def main_job_table(rows: list[dict], calls: dict[str, float], seconds: float, cores: int, peak: float) -> dict:
    """Required TFLOP per stage of the main job (calls × the stage's required GFLOP per call measured here), the
    executed TFLOP where the stage was counted, and the job's fraction of ``cores`` × ``peak`` GFLOP/s over
    ``seconds`` of wall time."""
    by = {r["stage"]: r for r in rows}
    if "dpo step" in by:  # the policy's share of a DPO step: forward+backward of 3 forward-units out of 4
        d = by["dpo step"]
        by["dpo step: policy"] = {
            **d,
            "gflop": 0.75 * d["gflop"],
            "executed_gflop": None if d["executed_gflop"] is None else 0.75 * d["executed_gflop"],
        }
    out, total, executed = [], 0.0, 0.0
    for stage, n in calls.items():
        r = by.get(stage)
        if r is None:
            out.append({"stage": stage, "calls": n, "tflop": None, "executed_tflop": None})
            continue
        req = n * r["gflop"] / 1e3
        ex = None if r["executed_gflop"] is None else n * r["executed_gflop"] / 1e3
        total += req
        executed += ex if ex is not None else req
        out.append({"stage": stage, "calls": n, "gflop_per_call": r["gflop"], "tflop": req, "executed_tflop": ex})
    return {
        "stages": out,
        "required_tflop": total,
        "executed_tflop": executed,
        "seconds": seconds,
        "cores": cores,
        "frac_peak": total * 1e12 / (seconds * cores * peak * 1e9) if seconds else None,
    }


def print_main_job(mj: dict, out=sys.stdout) -> None:
    print(f"\nmain job: {mj['required_tflop']:.2f} TFLOP required, {mj['executed_tflop']:.2f} executed", file=out)
    for s in mj["stages"]:
        tf = "-" if s["tflop"] is None else f"{s['tflop']:.2f}"
        ex = "-" if s.get("executed_tflop") is None else f"{s['executed_tflop']:.2f}"
        print(f"  {s['stage']:<18} {s['calls']:>8.1f} calls  {tf:>7} TFLOP required  {ex:>7} executed", file=out)
    if mj["seconds"]:
        print(
            f"  in {mj['seconds']:.0f} s on {mj['cores']} cores: {100 * mj['frac_peak']:.1f}% of their fp32 peak",
            file=out,
        )


# ================================================================================================================
# Output
# ================================================================================================================


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def print_table(rows: list[dict], out=sys.stdout) -> None:
    head = f"{'stage':<18}{'s/call':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'%peak':>7}{'%shape':>8}{'exec GFLOP':>12}{'exec/req':>9}  note"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        pct = lambda v: None if v is None else 100 * v  # noqa: E731
        print(
            f"{r['stage']:<18}{r['seconds']:>9.3f}{r['gflop']:>9.2f}{_fmt(r['gflop_s'], '.1f'):>9}"
            f"{_fmt(pct(r['frac_peak']), '.0f'):>7}{_fmt(pct(r['frac_shape_peak']), '.0f'):>8}"
            f"{_fmt(r['executed_gflop'], '.2f'):>12}{_fmt(r['executed_over_required'], '.2f'):>9}  {r['note']}",
            file=out,
        )


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| stage | s/call | GFLOP | GFLOP/s | % of peak | % of shape peak | executed GFLOP | exec/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pct = lambda v: "–" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        lines.append(
            f"| {r['stage']} | {r['seconds']:.3f} | {r['gflop']:.2f} | {_fmt(r['gflop_s'], '.1f', '–')} | "
            f"{pct(r['frac_peak'])} | {pct(r['frac_shape_peak'])} | {_fmt(r['executed_gflop'], '.2f', '–')} | "
            f"{_fmt(r['executed_over_required'], '.2f', '–')} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the peak and every stage")
    p.add_argument("--quick", action="store_true", help="smoke check: 1 timed call per stage, short peak windows")
    p.add_argument("--reps", type=int, default=None, help="timed calls/steps per stage (default 3; --quick 1)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument(
        "--executed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one more call per stage under FlopCounterMode (default: on; off with --quick)",
    )
    p.add_argument(
        "--square", type=int, default=None, help="size of the square peak product (default 1536; --quick 1024)"
    )
    p.add_argument(
        "--sft", default=None, help="π_SFT checkpoint folder (default: newest cached one of the default shape)"
    )
    p.add_argument("--cache-dir", default=None, help="stage cache to read π_SFT, pairs and RM from (nothing is built)")
    p.add_argument(
        "--json", default=None, metavar="PATH", help="also write the results as JSON ('-': stdout, table to stderr)"
    )
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument(
        "--main-job",
        default="frontier",
        metavar="EXPERIMENT",
        help="the study whose required work is totalled from the stage rows (default frontier, the main job)",
    )
    p.add_argument(
        "--main-job-seconds",
        type=float,
        default=None,
        help="the main job's wall time after set-up on this machine (scripts/main.sh): its fraction of the peak",
    )
    p.add_argument("--cores", type=int, default=None, help="cores the main job ran on (default: this machine's)")
    a = p.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.executed = (not a.quick) if a.executed is None else a.executed
    a.square = a.square or (1024 if a.quick else 1536)
    a.stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in a.stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; choose from {STAGES}")
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    use_working_tree_harness()
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    out = sys.stderr if args.json == "-" else sys.stdout
    meta = {**machine_identity(args.threads), **code_identity(), "reps": args.reps, "quick": args.quick}
    print(
        f"roofline: harness from {meta['harness']}, pipelines from {meta['pipelines']} (commit {meta['commit']})",
        file=out,
    )
    print(
        f"{meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} with {args.threads} thread(s), "
        f"load {meta['loadavg_1m_start']:.2f}, {meta['date']}",
        file=out,
        flush=True,
    )

    peak_seconds = 0.2 if args.quick else 1.0
    peaks = Peaks(args.square, peak_seconds)
    print(f"peak: {peaks.square:.1f} GFLOP/s (fp32 mm {args.square}³)", file=out, flush=True)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        st = build_setting(args, Path(tmp))
        meta["sft"] = str(st.stages["sft"] or "random weights (no cached π_SFT of this shape)")
        meta["pairs"] = str(st.stages["prefs"] or "synthetic (no cached preference set)")
        meta["reward_model"] = str(st.stages["rm"] or "π_SFT backbone, fresh head (no cached reward model)")
        print(
            f"π_SFT: {meta['sft']}\npairs: {meta['pairs']}\nreward model: {meta['reward_model']}", file=out, flush=True
        )
        results: list[StageResult] = []
        failed = []
        for name in args.stages:
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs; keep stdout for the table
                    results += run_stage(name, st, args.reps, args.executed, args.quick)
            except Exception as e:  # noqa: BLE001 - one stage the code no longer fits must not cost the others
                failed.append(f"{name}: {type(e).__name__}: {e}")
            print(f"  [{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
        meta["failed"] = failed
        rows = [r.row(peaks) for r in results]  # shape peaks are measured here, after the stages
        calls = main_job_calls(args.main_job, len(st.task.train_texts), len(st.pairs))
    meta["loadavg_1m_end"] = os.getloadavg()[0]
    print(
        "shape peaks (GFLOP/s at the model's own products): "
        + ", ".join(f"{s['rows']} rows {s['mode']} {s['gflop_s']:.1f}" for s in peaks.table()),
        file=out,
    )
    print(file=out)
    print_table(rows, out)
    print(
        f"\nload average (1 min): {meta['loadavg_1m_start']:.2f} at start, {meta['loadavg_1m_end']:.2f} at end",
        file=out,
    )
    for f in meta["failed"]:
        print(f"FAILED {f}", file=out)
    cores = args.cores or os.cpu_count() or 1
    main_job = main_job_table(rows, calls, args.main_job_seconds or 0.0, cores, peaks.square)
    print_main_job(main_job, out)
    if args.markdown:
        print("\n" + markdown_table(rows), file=out)
    result = {
        "meta": meta,
        "peak_gflop_s": peaks.square,
        "square": args.square,
        "shape_peaks": peaks.table(),
        "stages": rows,
        "main_job": main_job,
    }
    if args.json == "-":
        print(json.dumps(result, default=str))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
