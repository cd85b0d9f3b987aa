"""The reward role of the online methods and its one score normalisation: PPO (``pipelines.ppo``) and RLOO / GRPO
(``pipelines.online_rl``) score their samples here.

* :class:`RewardModelScore`: the learned Bradley–Terry r_φ (``ppo``, ``rloo``, ``grpo``), read at EOS, appended to a
  truncated response as in r_φ's training;
* :class:`GoldScore`: the gold reward on the decoded prompt + response (the ``_gt`` variants);
* :func:`reward_role`: which of the two a method uses, with the (mean, std) its scores are normalised by and the
  evaluator's proxy scorer;
* :func:`normalised`: (raw − mean) / std, with r_φ's stored statistics on π_SFT samples (Ziegler et al. 2019) or,
  for the gold scorer, which has none, the first batch's (π_SFT's own samples), its std floored at
  :data:`MIN_SCORE_STD`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from harness.eval.evaluator import texts_of
from harness.lm.models import freeze, use_fused_gelu
from harness.lm.sampling import Samples
from harness.runs.context import RunContext

# (samples, the prompt strings they were sampled from) -> (B,) raw scores. The reward role.
RewardFn = Callable[[Samples, list[str]], torch.Tensor]
# A floor on the std that normalises scores, so a near-constant first batch cannot blow the scores up.
MIN_SCORE_STD = 1e-2


class RewardModelScore:
    """The ``ppo`` reward role: frozen r_φ(prompt + response + EOS), read at that EOS, where the RM was trained to put
    its score. A finished response already ends in EOS; a truncated one gets it appended (``with_eos``), as TRL's
    RewardTrainer and ``TextScorer`` append EOS to every completion, so r_φ never scores a sequence unlike its data."""

    def __init__(self, model) -> None:
        self.model = use_fused_gelu(freeze(model))

    def __call__(self, s: Samples, prompts: list[str]) -> torch.Tensor:  # noqa: ARG002 - reads the tokens
        from pipelines.stages.reward_model import score_samples

        return score_samples(self.model, with_eos(s, self.model.config.eos_token_id, self.model.config.pad_token_id))


def with_eos(s: Samples, eos_id: int, pad_id: int) -> Samples:
    """``s`` with one more response column: EOS right after the last real token of each truncated row (``ended``
    False), padding (mask 0) elsewhere. Finished rows keep their tokens, so their scores do not change. -> (B, T+1)"""
    B = s.response.shape[0]
    response = torch.cat([s.response, s.response.new_full((B, 1), pad_id)], dim=1)
    mask = torch.cat([s.response_mask, s.response_mask.new_zeros(B, 1)], dim=1)
    rows = (~s.ended).nonzero().squeeze(-1)
    at = s.response_mask[rows].sum(-1).long()  # first column after the real tokens
    response[rows, at] = eos_id
    mask[rows, at] = 1
    return Samples(s.query, s.query_mask, response, mask, s.ended, s.prompt_index)


class GoldScore:
    """The ``ppo_gt`` reward role: the gold scorer (VADER by default) on the decoded prompt + response."""

    def __init__(self, gold, tok) -> None:
        self.gold, self.tok = gold, tok

    def __call__(self, s: Samples, prompts: list[str]) -> torch.Tensor:
        scores = np.asarray(self.gold(texts_of(self.tok, prompts, s)), dtype=np.float32)
        return torch.from_numpy(scores).to(s.response.device)


def normalised(
    raw: torch.Tensor, norm: tuple[float, float] | None, batch: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[float, float]]:
    """(raw − mean) / std, and the (mean, std) it used: ``norm``, or, when ``norm`` is None, the mean and std of
    ``batch`` (default ``raw``; PPO passes every process's share of the batch), the std floored at
    :data:`MIN_SCORE_STD`. The caller keeps the returned pair for every later batch."""
    if norm is None:
        b = raw if batch is None else batch
        norm = (b.mean().item(), max(b.std().item(), MIN_SCORE_STD))
    mean, std = norm
    return (raw - mean) / std, norm


@dataclass
class RewardRole:
    """What an online method scores its samples with."""

    score: RewardFn  # raw scores of sampled tokens
    norm: tuple[float, float] | None  # (mean, std) to normalise by; None: the first batch's (see ``normalised``)
    proxy: Callable[[list[str]], np.ndarray] | None  # r_φ on texts, for the evaluator's proxy_reward (None for gold)


def reward_role(ctx: RunContext, tok, *, gold: bool, normalize: bool) -> RewardRole:
    """The reward role: the gold scorer (``gold``: the ``_gt`` variants), or the learned r_φ from the stage cache with
    its stored mean and std on π_SFT samples. ``normalize`` False: scores stay raw (mean 0, std 1)."""
    if gold:
        return RewardRole(GoldScore(ctx.gold, tok), None if normalize else (0.0, 1.0), None)
    from pipelines.stages.reward_model import TextScorer, load_reward_model

    rm, _, facts = load_reward_model(ctx)
    norm = (facts["sft_score_mean"], facts["sft_score_std"]) if normalize else (0.0, 1.0)
    return RewardRole(RewardModelScore(rm), norm, TextScorer(rm, tok))
