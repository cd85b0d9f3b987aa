"""The one evaluator every method uses: a point on the KL-vs-reward frontier.

On held-out prompts (never trained on), k samples each from π_θ at ``eval.temperature``, then: gold reward of
prompt + response (mean ± SEM), exact sequence KL(π_θ ‖ π_ref) between the two models at that same temperature
(mean ± SEM), the sampled log-ratio estimate, the mean response length and the fraction of responses cut off at
``max_new_tokens``. SEMs treat the prompt as the unit (the k samples of one prompt are not independent).

Seeds: the sampling seed is derived from ``eval.seed`` and the run's seed. Within a run every evaluation uses the
same one, so its points differ by the policy only; across methods with the same run seed the draws are common
random numbers (paired comparisons); different run seeds draw different samples, so seed-to-seed intervals include
the evaluation's own sampling noise.

Per-prompt evidence (each prompt's mean gold reward, KL and truncation) goes with every point: the frontier report's
paired bootstrap resamples prompts from it (``harness/report/stats.py``). The row itself is ``harness.eval.row``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from typing import Protocol

import numpy as np
import torch

from harness.config import EvalConfig
from harness.eval.kl import token_kl_exact, token_logprobs
from harness.eval.row import EvalPoint
from harness.lm import packing
from harness.lm.memory import models_held, parameters_of, peak_memory
from harness.lm.precision import autocast
from harness.lm.sampling import Samples, response_texts, sample

log = logging.getLogger("harness.eval")


def sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def per_prompt_means(values: np.ndarray, prompt_index: np.ndarray, n_prompts: int) -> np.ndarray:
    """Mean of ``values`` (B,) over the samples of each prompt -> (n_prompts,); NaN for a prompt with no sample."""
    sums = np.bincount(prompt_index, weights=values, minlength=n_prompts)
    counts = np.bincount(prompt_index, minlength=n_prompts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def clustered_sem(values: np.ndarray, prompt_index: np.ndarray, n_prompts: int) -> float:
    """SEM of the mean of ``values`` with the prompt as the unit: the SEM of the per-prompt means.

    The k samples of one prompt share it, so they are correlated; treating them as independent understates the
    SEM. With a single prompt there is no between-prompt spread to estimate, and the sample SEM is returned.
    """
    means = per_prompt_means(values, prompt_index, n_prompts)
    means = means[np.isfinite(means)]
    return sem(means) if len(means) > 1 else sem(values)


def prompts_key(prompts: list[str]) -> str:
    """A short hash of the evaluation prompts: runs of one sweep must share it to be compared prompt by prompt."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def prompt_evidence(prompts: list[str], prompt_index: np.ndarray, **per_sample: np.ndarray) -> dict:
    """Per-prompt means (index p = the p-th evaluation prompt) of each per-sample array (gold, kl, truncated), with
    the prompts' hash: what the report's paired bootstrap resamples."""
    n = len(prompts)
    return {
        "prompts_key": prompts_key(prompts),
        **{
            name: [round(float(v), 6) for v in per_prompt_means(np.asarray(x, dtype=np.float64), prompt_index, n)]
            for name, x in per_sample.items()
        },
    }


def sampling_seed(eval_seed: int, run_seed: int) -> int:
    """The evaluation's sampling seed, derived from both: a new run seed draws new samples."""
    return int(np.random.SeedSequence([int(eval_seed), int(run_seed)]).generate_state(1)[0])


def texts_of(tok, prompts: list[str], s: Samples) -> list[str]:
    """Prompt + response, the text the gold reward scores (as the paper scores the full review)."""
    return [prompts[int(i)] + r for i, r in zip(s.prompt_index, response_texts(tok, s))]


@torch.no_grad()
def kl_stats(policy, reference, s: Samples, batch_size: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample exact and sampled sequence KL, in chunks of ``batch_size`` samples so the logits stay small.

    Both models' logits are divided by ``temperature``: the samples come from π_θ at that temperature, and the KL is
    between the distributions that were sampled from and the reference at the same temperature (as PPO's penalty).
    Where the samples carry the policy's log-distributions from the sampling passes (``Samples.logprobs``), those are
    used and the policy is not run again (log-probabilities are logits whose softmax is themselves). The forward
    passes run packed (``harness.lm.packing``): logits at the real response tokens only, (n, V) per chunk.
    """
    exact, sampled = [], []
    for i in range(0, s.query.shape[0], batch_size):
        part = s.subset(torch.arange(i, min(i + batch_size, s.query.shape[0]), device=s.query.device))
        lr, mask = packing.response_token_logits(reference, part, temperature)  # (n, V), (b, T) bool
        if part.logprobs is not None:
            lp = part.logprobs[mask]
        else:
            lp = packing.response_token_logits(policy, part, temperature)[0]
        tokens = part.response[mask]
        exact.append(packing.to_grid(token_kl_exact(lp, lr), mask).sum(-1))
        log_ratio = token_logprobs(lp, tokens) - token_logprobs(lr, tokens)
        sampled.append(packing.to_grid(log_ratio, mask).sum(-1))
    return torch.cat(exact).cpu().numpy(), torch.cat(sampled).cpu().numpy()


def fingerprint(model) -> str:
    """sha256 of what a model computes with: its class, its config (the public fields, and the attention kernel) and
    every parameter and buffer, bytes and all. Two models with one fingerprint give the same numbers."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        # dropout probabilities left out: evaluation runs in eval mode (and a trained policy has them at 0, from
        # ``disable_dropout``, while the π_SFT it starts as does not)
        public = {
            k: v
            for k, v in config.to_dict().items()
            if not k.startswith("_") and k != "transformers_version" and not k.endswith(("dropout", "pdrop"))
        }
        h.update(json.dumps(public, sort_keys=True, default=str).encode())
        h.update(str(getattr(config, "_attn_implementation", "")).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tok) -> str:
    """sha256 of a tokenizer's vocabulary, merges and special tokens (what turns samples into texts)."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    return hashlib.sha256(f"{body}|{tok.eos_token_id}|{tok.pad_token_id}".encode()).hexdigest()


class SharedMeasurements(Protocol):
    """Where evaluations are shared between jobs (``harness.runs.cache.SharedResults``): ``lock(key)`` is held while
    one job measures, so a second job asking for the same key waits and then loads."""

    def lock(self, key: str): ...
    def load(self, key: str) -> dict | None: ...
    def save(self, key: str, payload: dict) -> None: ...


class Evaluator:
    """Holds what stays fixed across a run's evaluations: prompts, reference, gold reward, config.

    It also keeps the run's clock: ``compute_wall_s`` of a point is the time since the evaluator was made, less the
    time spent in evaluations (so it counts training only, whatever ``eval.every`` is).

    ``share`` (``harness.runs.cache.SharedResults``; None: measure every time): the step-0 evaluation is the same
    measurement in every job that starts from the same π_SFT with the same run seed (the policy is π_SFT itself, the
    sampling seed is the run seed's), so one job measures it and the others load it. What makes it the same is
    checked, not assumed: the key holds the policy's and the reference's fingerprints (every weight), the tokenizer's,
    the prompts, the evaluation config, the gold reward's, the run seed, the precision, the device and the torch thread
    count (float reduction order). Only what the evaluation measured is shared (samples, texts, per-sample KL and
    gold); each job scores its own proxy reward on the texts and makes its own row, so rows are identical whether the
    measurement was loaded or made (timings aside).
    """

    def __init__(
        self,
        reference,
        tok,
        prompts: list[str],
        gold,
        cfg: EvalConfig,
        proxy=None,
        precision: str = "fp32",
        *,
        share: SharedMeasurements | None = None,
        gold_identity: dict | None = None,
    ) -> None:
        """``precision``: the job's (``harness.lm.precision``): with bf16 the sampling and KL forward passes of policy and
        reference run under bf16 autocast, as the method's own forward passes do. ``gold_identity``: what the gold
        reward is (its config), part of a shared measurement's key; sharing needs it."""
        self.reference, self.tok, self.prompts, self.gold, self.cfg, self.proxy = (
            reference,
            tok,
            prompts,
            gold,
            cfg,
            proxy,
        )
        self.precision = precision
        self.share = share if gold_identity is not None else None
        self.gold_identity = gold_identity
        self.reference.eval()
        self.last_samples: Samples | None = None
        self.last_texts: list[str] = []
        self.started = time.time()
        self.eval_seconds = 0.0
        self._held, self._held_at = (0, 0), -math.inf  # the models held, as last counted, and when

    # The models a job holds are counted (a scan of the process's objects, ~0.3 s) at most this often; evaluations in
    # between report the last count. A job loads its models before its first evaluation and keeps them.
    HELD_EVERY_S = 30.0

    # Up to this many floats the sampler's per-step log-distributions are kept for the exact KL (saving a policy
    # forward); beyond it (large vocabularies and batches) the policy is run again, in chunks.
    KEEP_LOGPROBS_MAX = 64 * 2**20

    def _keep_logprobs(self, policy) -> bool:
        n = len(self.prompts) * self.cfg.samples_per_prompt * self.cfg.max_new_tokens
        return n * policy.get_output_embeddings().weight.shape[0] <= self.KEEP_LOGPROBS_MAX

    def training_seconds(self) -> float:
        return max(0.0, time.time() - self.started - self.eval_seconds)

    def shared_key(self, policy, seed: int, device: torch.device) -> str:
        """The key of this evaluation of ``policy`` at run seed ``seed``: everything its result depends on."""
        from dataclasses import asdict

        identity = {
            "policy": fingerprint(policy),
            "reference": fingerprint(self.reference),
            "tokenizer": tokenizer_fingerprint(self.tok),
            "prompts": prompts_key(self.prompts),
            "n_prompts": len(self.prompts),
            "eval": asdict(self.cfg),
            "gold": self.gold_identity,
            "seed": int(seed),
            "precision": self.precision,
            "device": device.type,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def measure(self, policy, seed: int, device: torch.device) -> dict:
        """Sample from ``policy`` and measure KL and gold: everything of an evaluation that does not depend on which
        job asks (the proxy reward does: it is each method's own)."""
        gen = torch.Generator(device=device).manual_seed(sampling_seed(self.cfg.seed, seed))
        T = self.cfg.temperature
        with autocast(device, self.precision):
            s = sample(
                policy,
                self.tok,
                self.prompts,
                self.cfg.samples_per_prompt,
                self.cfg.max_new_tokens,
                T,
                generator=gen,
                keep_logprobs=self._keep_logprobs(policy),
            )
            exact, sampled = kl_stats(policy, self.reference, s, self.cfg.batch_size, T)
            texts = texts_of(self.tok, self.prompts, s)
        gold = np.asarray(self.gold(texts), dtype=np.float64)  # the measurement itself, as it comes
        return {"samples": s, "texts": texts, "exact": exact, "sampled": sampled, "gold": gold}

    def _measure_or_load(self, policy, seed: int, step: int, device: torch.device) -> dict:
        if step != 0 or self.share is None:
            return self.measure(policy, seed, device)
        key = self.shared_key(policy, seed, device)
        with self.share.lock(key):
            found = self.share.load(key)
            if found is not None:
                log.info("step-0 evaluation: the same measurement was made by an earlier job (key %s); reused", key)
                return unpack_measurement(found, device)
            measured = self.measure(policy, seed, device)
            self.share.save(key, pack_measurement(measured))
            return measured

    @torch.no_grad()
    def __call__(
        self,
        policy,
        *,
        method: str,
        setting: str,
        seed: int,
        step: int,
        run_id: str,
        tokens_generated: int = 0,
        tokens_trained: int = 0,
    ) -> EvalPoint:
        """Evaluate ``policy``; ``tokens_*`` are the training compute the caller has spent so far."""
        t0 = time.time()
        train_s = self.training_seconds()
        was_training = policy.training
        policy.eval()
        device = next(policy.parameters()).device
        m = self._measure_or_load(policy, seed, step, device)
        s, texts, exact, sampled, gold = m["samples"], m["texts"], m["exact"], m["sampled"], m["gold"]
        with autocast(device, self.precision):
            proxy = float(np.mean(self.proxy(texts))) if self.proxy is not None else None
        if was_training:
            policy.train()
        self.last_samples, self.last_texts = s, texts
        idx, n = s.prompt_index.cpu().numpy(), len(self.prompts)
        truncated = (~s.ended).cpu().numpy().astype(np.float64)
        point = EvalPoint(
            method=method,
            setting=setting,
            seed=seed,
            step=step,
            kl=float(exact.mean()),
            kl_sem=clustered_sem(exact, idx, n),
            kl_sample=float(sampled.mean()),
            gold_reward=float(gold.mean()),
            gold_reward_sem=clustered_sem(gold, idx, n),
            proxy_reward=proxy,
            response_tokens=float(s.lengths().float().mean()),
            run_id=run_id,
            truncated_frac=float(truncated.mean()),
            compute_tokens_generated=int(tokens_generated),
            compute_tokens_trained=int(tokens_trained),
            compute_wall_s=round(train_s, 3),
            eval_s=round(time.time() - t0, 3),
            evidence=prompt_evidence(self.prompts, idx, gold=gold, kl=exact, truncated=truncated),
        )
        if time.time() - self._held_at > self.HELD_EVERY_S:
            held = models_held()
            self._held, self._held_at = (len(held), parameters_of(held)), time.time()
        point.models_held, point.model_parameters = self._held
        peak, point.peak_memory_kind = peak_memory(device)
        point.peak_memory_mb = round(peak, 1) if peak is not None else None
        point.step_s = round(train_s / step, 4) if step > 0 else None
        self.eval_seconds += time.time() - t0
        return point


SAMPLE_FIELDS = ("query", "query_mask", "response", "response_mask", "ended", "prompt_index")


def pack_measurement(m: dict) -> dict:
    """A measurement as tensors and strings only (what ``torch.load(weights_only=True)`` reads back); the sampler's
    per-step log-distributions are left out (B·T·V floats, used only by the KL already measured)."""
    s = m["samples"]
    return {
        **{f: getattr(s, f).cpu() for f in SAMPLE_FIELDS},
        "texts": list(m["texts"]),
        **{k: torch.from_numpy(np.ascontiguousarray(m[k])) for k in ("exact", "sampled", "gold")},  # dtypes kept
    }


def unpack_measurement(p: dict, device: torch.device) -> dict:
    s = Samples(*(p[f].to(device) for f in SAMPLE_FIELDS))
    return {"samples": s, "texts": list(p["texts"]), **{k: p[k].numpy() for k in ("exact", "sampled", "gold")}}
