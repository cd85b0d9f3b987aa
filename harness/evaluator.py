"""The one evaluator every method uses: a point on the KL-vs-reward frontier.

On held-out prompts (never trained on), k samples each from π_θ at temperature 1 with a fixed sampling seed, then:
gold reward of prompt + response (mean ± SEM), exact sequence KL(π_θ ‖ π_ref) (mean ± SEM), the sampled log-ratio
estimate, and the mean response length. The same seed at every evaluation makes points differ by the policy only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from harness.config import EvalConfig
from harness.kl import sequence_kl_exact, sequence_kl_sample, token_logprobs
from harness.sampling import Samples, response_logits, response_texts, sample


@dataclass
class EvalPoint:
    """One evaluation = one result row (the schema the frontier report reads)."""

    method: str
    setting: str
    seed: int
    step: int
    kl: float  # mean over samples of Σ_t KL(π_θ(·|s_t) ‖ π_ref(·|s_t)), exact over the vocabulary (nats)
    kl_sem: float
    kl_sample: float  # mean of Σ_t log π_θ(y_t|s_t)/π_ref(y_t|s_t) over the same samples
    gold_reward: float
    gold_reward_sem: float
    proxy_reward: float | None  # the learned reward model's mean score where the method has one
    response_tokens: float
    wall_s: float
    run_id: str

    def row(self) -> dict:
        return asdict(self)


def sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def texts_of(tok, prompts: list[str], s: Samples) -> list[str]:
    """Prompt + response, the text the gold reward scores (as the paper scores the full review)."""
    return [prompts[int(i)] + r for i, r in zip(s.prompt_index, response_texts(tok, s))]


@torch.no_grad()
def kl_stats(policy, reference, s: Samples, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample exact and sampled sequence KL, in chunks so (B, T, V) logits stay small."""
    exact, sampled = [], []
    for i in range(0, s.query.shape[0], batch_size):
        part = s.subset(torch.arange(i, min(i + batch_size, s.query.shape[0]), device=s.query.device))
        lp, lr = response_logits(policy, part), response_logits(reference, part)
        exact.append(sequence_kl_exact(lp, lr, part.response_mask))
        sampled.append(sequence_kl_sample(token_logprobs(lp, part.response), token_logprobs(lr, part.response), part.response_mask))
    return torch.cat(exact).cpu().numpy(), torch.cat(sampled).cpu().numpy()


class Evaluator:
    """Holds what stays fixed across a run's evaluations: prompts, reference, gold reward, config."""

    def __init__(self, reference, tok, prompts: list[str], gold, cfg: EvalConfig, proxy=None) -> None:
        self.reference, self.tok, self.prompts, self.gold, self.cfg, self.proxy = reference, tok, prompts, gold, cfg, proxy
        self.reference.eval()
        self.last_samples: Samples | None = None
        self.last_texts: list[str] = []

    @torch.no_grad()
    def __call__(self, policy, *, method: str, setting: str, seed: int, step: int, run_id: str) -> EvalPoint:
        t0 = time.time()
        was_training = policy.training
        policy.eval()
        device = next(policy.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.cfg.seed)
        s = sample(policy, self.tok, self.prompts, self.cfg.samples_per_prompt, self.cfg.max_new_tokens,
                   self.cfg.temperature, generator=gen)
        exact, sampled = kl_stats(policy, self.reference, s, self.cfg.batch_size)
        texts = texts_of(self.tok, self.prompts, s)
        gold = np.asarray(self.gold(texts), dtype=np.float64)
        proxy = float(np.mean(self.proxy(texts))) if self.proxy is not None else None
        if was_training:
            policy.train()
        self.last_samples, self.last_texts = s, texts
        return EvalPoint(
            method=method, setting=setting, seed=seed, step=step,
            kl=float(exact.mean()), kl_sem=sem(exact), kl_sample=float(sampled.mean()),
            gold_reward=float(gold.mean()), gold_reward_sem=sem(gold), proxy_reward=proxy,
            response_tokens=float(s.lengths().float().mean()), wall_s=time.time() - t0, run_id=run_id,
        )
