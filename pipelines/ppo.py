"""Stage 4 of RLHF: PPO against a frozen reward, with a separate critic and a per-token KL penalty to π_ref.

Four roles, each its own model (Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO"):

* ``policy``    π_θ, starts as π_SFT and is trained;
* ``reference`` π_ref = π_SFT, frozen: the anchor of the KL penalty (``ref_update=refresh|ema`` moves a copy of
                it towards π_θ after updates, Xu et al. 2024; the evaluator's KL stays to the frozen π_SFT);
* ``reward``    the frozen scorer of whole responses: the Bradley–Terry r_φ for ``ppo``, the gold reward on the
                decoded prompt + response for ``ppo_gt``;
* ``critic``    V_ψ, a scalar-head model evaluated at *every* response position; initialised from r_φ for ``ppo``
                (its head rescaled to the normalised score, ``normalised_head``) and from π_SFT's backbone (fresh
                head) for ``ppo_gt``; trained with its own optimiser.

Policy and critic train with dropout off, as every other method's policy (``harness.lm.models.disable_dropout``).

One update (``PPO.step``):

1. rollout, each model run once over the batch (packed: each episode's real tokens end to end, no padding,
   ``harness.lm.packing``; so are the update's forwards): sample one response per prompt from π_θ (temperature,
   ``max_new_tokens``, stop at EOS), keeping log π_θ of each sampled token (π_old) and each step's entropy from the
   sampling passes, so the policy has no scoring forward; log π_ref of the response tokens; V_ψ at each response
   position;
   the score ((r_φ − mean) / std of r_φ on π_SFT samples, r_φ read at EOS, appended to a truncated response as
   in r_φ's training; minus ``missing_eos_penalty``, 0 by default, if no EOS); per-token rewards r_t = −β·KL_t
   (k1, the only estimator unbiased in a reward), plus the score at the last response token; GAE; advantages
   whitened over the rollout (``whiten_advantages``). The first minibatch of epoch 0 runs policy and critic forward
   here with autograd (``FirstPass``): the update starts from it;
2. ``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches: clipped surrogate for π_θ, clipped value
   loss × ``vf_coef`` for V_ψ (two AdamW optimisers), optional entropy bonus, gradient-norm clipping;
3. the KL controller sees the batch's mean sequence KL (fixed β, or adaptive towards ``target_kl``);
4. with ``ref_update`` refresh or ema, the penalty's reference moves towards π_θ (``losses.reference_mix_weight``).

Each update's metrics (``PPO.step``; W&B and the run folder's updates.jsonl) are named in ``pipelines.metrics``'
namespaces: objective/ (policy loss, KL, β_KL), policy/, critic/ (the value function), rewards/, compute/.

A non-finite reward, value, KL, advantage or loss stops the run before the update that would take it in
(``harness.runs.guards``). Every ``checkpoint_every`` updates the whole state (``PPO.state_dict``: both models and
optimisers, the KL controller, the sampling and shuffling generators; ``run`` adds the prompt generator, the global
generators and the run folder's progress) goes to ``<job>/checkpoint/state.pt``, and a rerun of a killed job continues
from there with the same rows an uninterrupted run writes (``harness.runs.checkpoint``).

All the math is in ``pipelines/losses.py`` and the reward roles with their score normalisation in
``pipelines/scoring.py`` (shared with RLOO and GRPO); this module only moves tensors between the roles. ``PPO`` needs no
Hydra or RunContext, so ``benchmarks/ppo_throughput.py`` drives exactly the same update on its own models.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from harness.lm import distributed, packing
from harness.lm.models import (
    disable_dropout,
    freeze,
    load_pretrained_lm,
    load_scalar_model,
    use_fused_gelu,
)
from harness.lm.precision import autocast
from harness.lm.sampling import Samples, sample
from harness.runs import checkpoint, preempt
from harness.runs.context import RunContext
from harness.runs.guards import check_finite, check_point
from pipelines import losses as L
from pipelines.schemas import PPOPipeline
from pipelines.scoring import RewardFn, normalised, reward_role

log = logging.getLogger("harness.ppo")


# ----------------------------------------------------------------------------------------------------------------
# The rollout record
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FirstPass:
    """The policy's and critic's forward over the first minibatch of epoch 0, run during the rollout WITH autograd.

    That minibatch is evaluated at the rollout's own parameters, so its training forward equals the rollout forward:
    keeping the graph lets the update start from it instead of running both models over it a second time.
    """

    logits: torch.Tensor  # (n, V) policy logits / temperature at the n real response tokens, carries the graph
    logprobs: torch.Tensor  # (b, T) log π_θ of the sampled tokens, 0 on padding, carries the graph
    values: torch.Tensor  # (b, T) critic values, carries the graph


@dataclass
class Rollout:
    """What one rollout hands to the update. B = episodes (one per prompt), T = longest response."""

    samples: Samples  # query (B, P) left-padded, response (B, T) right-padded, ended (B,)
    logprobs: torch.Tensor  # (B, T) log π_old(y_t | s_t) of the sampled tokens, at the sampling temperature
    ref_logprobs: torch.Tensor  # (B, T) log π_ref(y_t | s_t)
    values: torch.Tensor  # (B, T) V_old(s_t), the critic at the position that predicts y_t; 0 on padding
    scores: torch.Tensor  # (B,) reward-role score, normalised, minus the missing-EOS penalty
    kl: torch.Tensor  # (B, T) per-token KL estimate in the reward (k1), 0 on padding
    rewards: torch.Tensor  # (B, T) −β·KL_t, plus the score at the last real token; 0 on padding
    advantages: torch.Tensor  # (B, T) GAE advantages, whitened over the batch; 0 on padding
    returns: torch.Tensor  # (B, T) λ-returns, the critic's targets; 0 on padding
    masks: torch.Tensor  # (B, T) float, 1 on response tokens up to and including EOS
    epoch0_order: torch.Tensor | None = None  # (B,) long, the order of epoch 0's minibatches
    first_pass: FirstPass | None = None  # graphs over epoch0_order[:b], used once by the update

    def minibatch(self, idx: torch.Tensor) -> Rollout:
        return Rollout(
            self.samples.subset(idx),
            *(
                getattr(self, f)[idx]
                for f in (
                    "logprobs",
                    "ref_logprobs",
                    "values",
                    "scores",
                    "kl",
                    "rewards",
                    "advantages",
                    "returns",
                    "masks",
                )
            ),
        )


# ----------------------------------------------------------------------------------------------------------------
# Forward passes over prompt + response (one per role, batched)
# ----------------------------------------------------------------------------------------------------------------


def policy_pass(policy, s: Samples, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """π_θ's logits / temperature at the real response tokens (n, V), and the log-probs of the sampled tokens in the
    (B, T) layout, 0 on padding. One packed forward (``harness.lm.packing``); autograd flows through both."""
    logits, mask = packing.response_token_logits(policy, s, temperature)
    every = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)  # the n rows are all real tokens
    return logits, packing.to_grid(L.sequence_logps(logits, s.response[mask], every), mask)


def critic_values(critic, s: Samples) -> torch.Tensor:
    """V(s_t) at every response position: the scalar head applied to each hidden state, not only the last: (B, T),
    0 on padding.

    A ``*ForSequenceClassification`` model pools its head at the last token; the critic needs the head's value at
    the position that predicts each response token, so we run its backbone (packed) and head ourselves.
    """
    states, mask = packing.response_states(critic, s)  # (n, hidden)
    return packing.to_grid(critic.score(states).squeeze(-1).float(), mask)


# ----------------------------------------------------------------------------------------------------------------
# The algorithm
# ----------------------------------------------------------------------------------------------------------------


class PPO:
    """PPO for RLHF over the four roles; ``step(prompts)`` = one rollout + one update + one KL-controller step.

    Args:
        policy: causal LM π_θ (trained).
        reference: causal LM π_ref (frozen here).
        critic: ``*ForSequenceClassification`` model with ``num_labels=1`` (trained).
        reward: the reward role, ``(samples, prompts) -> (B,)`` raw scores.
        tok: tokenizer with distinct pad and EOS.
        cfg: the PPO knobs (``pipelines.schemas.PPOPipeline``).
        score_norm: (mean, std) of the reward role's raw scores on π_SFT samples; scores become (raw − mean) / std.
            None: estimated from the first rollout, i.e. π_SFT's own samples (for scorers with no stored statistics).
        seed: seeds token sampling and minibatch shuffling.
        reuse_first_pass: run the first minibatch's training forward during the rollout (see ``FirstPass``); the
            result is the same either way, this only skips the critic's duplicate forward over that minibatch (the
            policy runs it once either way: its rollout log-probs come from the sampler).
        precision: ``fp32`` or ``bf16`` (``harness.lm.precision``): every forward pass of every role under bf16 autocast;
            weights, gradients, optimiser states and the PPO math stay fp32.
    """

    def __init__(
        self,
        policy,
        reference,
        critic,
        reward: RewardFn,
        tok,
        cfg: PPOPipeline,
        *,
        score_norm: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        reuse_first_pass: bool = True,
        precision: str = "fp32",
    ) -> None:
        self.policy, self.reference, self.critic = policy, freeze(reference), critic
        self.reward, self.tok, self.cfg = reward, tok, cfg
        self.score_norm = score_norm
        self.reuse_first_pass = reuse_first_pass
        for m in (policy, reference, critic):
            use_fused_gelu(m)
        if cfg.ref_update != "none":  # a moving reference is a copy: the caller's π_SFT (the evaluator's) stays frozen
            self.reference = freeze(copy.deepcopy(reference))
        # Dropout off everywhere (Huang et al. 2024): otherwise log π_old and log π_θ differ before any update and
        # the ratio is noise. Eval mode does not stop gradients; disable_dropout also keeps it off if anything calls
        # train(), and in the saved policy's config, as for every other method (pipelines/trainer_run.py ``prepare``).
        disable_dropout(self.policy).eval()
        disable_dropout(self.critic).eval()
        self.device = next(policy.parameters()).device
        self.precision = precision
        # Adam's eps=1e-5 as in OpenAI's RLHF code (Huang et al. 2024); no weight decay.
        self.policy_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
        self.critic_opt = torch.optim.AdamW(
            critic.parameters(), lr=cfg.critic_learning_rate, eps=1e-5, weight_decay=0.0
        )
        self.kl_ctl = (
            L.AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.horizon)
            if cfg.target_kl is not None
            else L.FixedKLController(cfg.kl_coef)
        )
        # Under multi-process training each process samples its own share of the prompts from its own stream
        # (harness.lm.distributed); the replicas start identical and stay so (their gradients are averaged).
        distributed.broadcast_parameters(self.policy)
        distributed.broadcast_parameters(self.critic)
        self.sample_gen = torch.Generator(device=self.device).manual_seed(distributed.process_seed(seed))
        self.shuffle_gen = torch.Generator().manual_seed(seed + 1)
        self.updates_done = 0  # completed ``step`` calls; the update in progress is number updates_done + 1

    # ------------------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Everything that makes the next update what it would have been: both trained models and their optimisers,
        the KL coefficient, the score normalisation (PPO-GT sets it on its first rollout), the sampling and
        shuffling generators and the update count. The frozen roles are loaded again from the stage cache."""
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "kl_ctl": dict(vars(self.kl_ctl)),
            "score_norm": self.score_norm,
            "sample_gen": self._sample_gen_state(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "updates_done": self.updates_done,
            **({"reference": self.reference.state_dict()} if self.cfg.ref_update != "none" else {}),
        }

    def _sample_gen_state(self):
        """This process's sampling generator; with several processes, every process's (a collective: every process
        calls ``state_dict`` at a checkpoint), in rank order."""
        own = self.sample_gen.get_state()
        return own if distributed.world_size() == 1 else distributed.gather_objects(own)

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        vars(self.kl_ctl).update(state["kl_ctl"])
        self.score_norm = None if state["score_norm"] is None else tuple(state["score_norm"])
        saved = state["sample_gen"]
        if (
            isinstance(saved, list) != (distributed.world_size() > 1)
            or isinstance(saved, list)
            and len(saved) != distributed.world_size()
        ):
            from harness.fields import ConfigError

            n = len(saved) if isinstance(saved, list) else 1
            raise ConfigError(
                f"checkpoint: written by {n} process(es), resumed with {distributed.world_size()}; launch "
                f"{n} process(es) to resume it, or remove the job's checkpoint/ folder to start afresh"
            )
        self.sample_gen.set_state(saved[distributed.rank()] if isinstance(saved, list) else saved)
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.updates_done = state["updates_done"]
        if "reference" in state:  # a moving reference (ref_update refresh or ema)
            self.reference.load_state_dict(state["reference"])

    def move_reference(self) -> None:
        """After update ``updates_done``: ref <- (1 − α)·ref + α·π_θ with α from ``cfg.ref_update`` (0 for none)."""
        cfg = self.cfg
        alpha = L.reference_mix_weight(cfg.ref_update, self.updates_done, cfg.ref_refresh_every, cfg.ref_ema)
        L.mix_parameters_(list(self.reference.parameters()), list(self.policy.parameters()), alpha)

    def forward(self):
        """The context of every forward pass (bf16 autocast under ``precision=bf16``); backward passes run outside."""
        return autocast(self.device, self.precision)

    def _check(self, quantity: str, value) -> None:
        # on every process's share at once: one process stopping alone would leave the others waiting for it
        distributed.raise_together(check_finite, quantity, value, self.updates_done + 1)

    # ------------------------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> tuple[Rollout, dict]:
        """Sample one response per prompt and compute everything the update needs (each role runs once).

        log π_old of the sampled tokens and the per-token entropy come from the sampler's own passes
        (``sample(keep_token_stats=True)``), as TRL's PPOTrainer takes them from generation's logits: the policy
        runs forward here only for ``FirstPass``. The sampler's cached decode steps sum in another order than a full
        forward, so π_old differs from the update's log π_θ at the same parameters by rounding: up to ~1e-6 in fp32,
        ~1e-3 on average (up to ~6e-3) under bf16 autocast (benchmarks/ppo_throughput.py's GPT-2 on CPU). The
        first minibatch's ratio starts at 1 to that, not exactly."""
        cfg = self.cfg
        with self.forward():
            s = sample(
                self.policy,
                self.tok,
                prompts,
                1,
                cfg.max_new_tokens,
                cfg.temperature,
                generator=self.sample_gen,
                keep_token_stats=True,
            )
        mask = s.response_mask
        B, T = mask.shape
        logprobs = s.token_logprobs  # (B, T) log π_old, 0 on padding
        entropy = s.token_entropy.sum(-1)  # (B,) exact per-token entropies summed over the response
        # Epoch 0's minibatch order is drawn now, so that its first minibatch can be run with autograd right here.
        order = torch.randperm(B, generator=self.shuffle_gen).to(self.device)
        n_first = B // cfg.num_minibatches if self.reuse_first_pass else 0
        first, rest = order[:n_first], order[n_first:]
        values = torch.zeros(B, T, device=self.device)
        first_pass = None
        if len(first):
            part = s.subset(first)
            with torch.enable_grad(), self.forward():
                logits, part_logprobs = policy_pass(self.policy, part, cfg.temperature)  # (n, V), (b, T)
                part_values = critic_values(self.critic, part)
            first_pass = FirstPass(logits, part_logprobs, part_values)
            values[first] = part_values.detach()
        if len(rest):
            with self.forward():
                values[rest] = critic_values(self.critic, s.subset(rest))
        with self.forward():
            ref_logprobs = policy_pass(self.reference, s, cfg.temperature)[1]
            raw = self.reward(s, prompts).float()  # (B,)
        self._check("reward", raw)
        self._check("value", values)
        # Score normalisation (``scoring.normalised``; with no stored statistics, the whole batch's, every process's
        # share, so every process normalises alike), then the optional missing-EOS penalty (Huang et al. 2024; 0 by
        # default, see PPOPipeline.missing_eos_penalty): a response cut at max_new_tokens is scored as if it were worse.
        whole = distributed.all_gather(raw) if self.score_norm is None else None
        scores, self.score_norm = normalised(raw, self.score_norm, batch=whole)
        scores = scores - cfg.missing_eos_penalty * (~s.ended).float()

        beta = self.kl_ctl.value
        kl = L.kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator) * mask
        self._check("KL", kl)
        rewards = L.per_token_rewards(scores, kl, beta, mask)
        if cfg.whiten_rewards:
            rewards = L.masked_whiten(rewards, mask, shift_mean=False, total=distributed.all_reduce_sum)
        advantages, returns = L.gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # advantage normalisation, one of Xu et al. 2024's decisive ingredients
            advantages = L.masked_whiten(advantages, mask, total=distributed.all_reduce_sum)  # over the whole batch
        self._check("advantage", advantages)

        seq_kl = L.masked_sum(logprobs - ref_logprobs, mask, dim=-1)  # (B,) k1 sequence KL, what target_kl refers to
        # k3 (>= 0 per token, lower variance) only as a diagnostic of the same KL: as a reward it would be biased.
        seq_kl_k3 = L.masked_sum(L.kl_penalty(logprobs, ref_logprobs, "k3"), mask, dim=-1)
        # Means over the whole batch: with several processes, over every process's share (one collective).
        stats = distributed.batch_means(
            {
                "objective/kl": seq_kl,
                "objective/kl_k3": seq_kl_k3,
                "objective/rlhf_reward": scores - beta * kl.sum(-1),
                "objective/non_score_reward": -beta * kl.sum(-1),
                "policy/sequence_entropy": entropy,
                "rewards/scores": scores,
                "rewards/raw_score": raw,
                "rewards/missing_eos_frac": (~s.ended).float(),
                "rewards/response_tokens": mask.sum(-1),
            }
        )
        total = distributed.all_reduce_sum
        stats.update(
            {
                "compute/tokens_generated": int(total(mask.sum()).item()),
                "critic/explained_variance": L.explained_variance(values, returns, mask, total=total).item(),
                "critic/value_mean": L.masked_mean(values, mask, total=total).item(),
                "objective/kl_coef": beta,
            }
        )
        ro = Rollout(
            s, logprobs, ref_logprobs, values, scores, kl, rewards, advantages, returns, mask, order, first_pass
        )
        return ro, stats

    # -------------------------------------------------------------------------------------------------- update
    def update(self, ro: Rollout) -> dict:
        """``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches of the rollout."""
        cfg = self.cfg
        B = ro.masks.shape[0]
        size = B // cfg.num_minibatches
        tokens_trained = 0
        acc: dict[str, list[float]] = {
            k: []
            for k in (
                "objective/policy_loss",
                "critic/value_loss",
                "policy/clipfrac",
                "policy/approxkl",
                "critic/clipfrac",
                "policy/entropy",
            )
        }
        for epoch in range(cfg.ppo_epochs):
            order = (
                ro.epoch0_order
                if epoch == 0 and ro.epoch0_order is not None
                else torch.randperm(B, generator=self.shuffle_gen).to(self.device)
            )
            for start in range(0, B - size + 1, size):
                mb = ro.minibatch(order[start : start + size])
                first_pass = None
                if epoch == 0 and start == 0:
                    first_pass, ro.first_pass = ro.first_pass, None  # used once; the backward frees its graph

                if first_pass is not None:  # the rollout already ran this forward, at these parameters
                    logits, new_logprobs = first_pass.logits, first_pass.logprobs
                else:
                    with self.forward():
                        logits, new_logprobs = policy_pass(self.policy, mb.samples, cfg.temperature)
                pg_loss, clipfrac, approxkl = L.clipped_policy_loss(
                    new_logprobs, mb.logprobs, mb.advantages, mb.masks, cfg.cliprange
                )
                self._check("policy loss", pg_loss)  # before the step: the weights never take a non-finite update
                loss = pg_loss
                if cfg.ent_coef > 0:
                    entropy = L.entropy_from_logits(logits).mean()  # logits: one row per real response token
                    loss = loss - cfg.ent_coef * entropy
                    acc["policy/entropy"].append(entropy.item())
                self.policy_opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(self.policy.parameters())  # data-parallel: every replica, one step
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.policy_opt.step()

                if first_pass is not None:
                    new_values = first_pass.values
                else:
                    with self.forward():
                        new_values = critic_values(self.critic, mb.samples)
                vf_loss, vf_clipfrac = L.clipped_value_loss(
                    new_values, mb.values, mb.returns, mb.masks, cfg.cliprange_value
                )
                self._check("value loss", vf_loss)
                self.critic_opt.zero_grad(set_to_none=True)
                (cfg.vf_coef * vf_loss).backward()
                distributed.average_gradients(self.critic.parameters())
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.critic_opt.step()

                for k, v in (
                    ("objective/policy_loss", pg_loss),
                    ("critic/value_loss", vf_loss),
                    ("policy/clipfrac", clipfrac),
                    ("policy/approxkl", approxkl),
                    ("critic/clipfrac", vf_clipfrac),
                ):
                    acc[k].append(v.item())
                # policy and critic each run forward+backward over the minibatch's prompt + response tokens
                tokens_trained += 2 * int(mb.samples.attention_mask.sum().item())
        # Each process's means over its minibatches, then averaged over the processes (one collective); tokens summed.
        out = distributed.process_means({k: float(np.mean(v)) for k, v in acc.items() if v})
        out["compute/tokens_trained"] = int(distributed.all_reduce_sum(torch.tensor(tokens_trained)).item())
        return out

    def step(self, prompts: list[str]) -> dict:
        """One PPO iteration on ``prompts`` (one episode each); returns the metrics of this update."""
        t0 = time.perf_counter()
        ro, stats = self.rollout(distributed.shard(prompts))  # this process's share (all of them with one process)
        stats.update(self.update(ro))
        # target_kl is a sequence KL, so the controller sees the batch's mean sequence KL; n_steps = episodes.
        self.kl_ctl.update(stats["objective/kl"], n_steps=len(prompts))
        self.updates_done += 1
        self.move_reference()
        stats["compute/episodes_per_s"] = len(prompts) / (time.perf_counter() - t0)
        return stats


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Roles:
    """The four models of a PPO run and what goes with them."""

    policy: torch.nn.Module  # π_θ, a copy of π_SFT (trained)
    reference: torch.nn.Module  # π_ref = π_SFT (frozen; the evaluator's reference; PPO moves only a copy of it)
    critic: torch.nn.Module  # V_ψ, scalar head (trained)
    reward: RewardFn  # r_φ (ppo) or gold (ppo_gt)
    tok: object
    score_norm: tuple[float, float] | None  # (mean, std) of raw scores on π_SFT samples; None = first rollout's
    proxy: Callable[[list[str]], np.ndarray] | None  # r_φ on texts for the evaluator's proxy_reward (ppo only)

    def ppo(self, cfg: PPOPipeline, seed: int = 0, precision: str = "fp32") -> PPO:
        return PPO(
            self.policy,
            self.reference,
            self.critic,
            self.reward,
            self.tok,
            cfg,
            score_norm=self.score_norm,
            seed=seed,
            precision=precision,
        )


def normalised_head(head: torch.nn.Linear, mean: float, std: float) -> torch.nn.Linear:
    """A new scalar head that outputs (head(h) − mean) / std: weight w / std, bias (b − mean) / std.

    The ``ppo`` critic starts as r_φ (Huang et al. 2024), but its targets are returns of the normalised score
    (r_φ − mean) / std, and the raw head is on another scale (std 1.78 on the default RM, 0.03 on the tests' tiny
    one): rescaled, the critic's first values are the normalised scores themselves. GPT-2's head has no bias, so the
    new one always has one (same dtype and device as ``head``).
    """
    w = head.weight.detach()
    b = head.bias.detach() if head.bias is not None else torch.zeros(head.out_features, dtype=w.dtype, device=w.device)
    out = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        out.weight.copy_(w / std)
        out.bias.copy_((b - mean) / std)
    return out


def build_roles(ctx: RunContext) -> Roles:
    """Load the four roles for ``ctx.cfg.pipeline`` (``ppo`` or ``ppo_gt``) from the stage cache (building stages
    that are missing); the reward role is ``scoring.reward_role``'s."""
    from pipelines.stages.sft import load_sft

    cfg = ctx.cfg.pipeline
    policy, tok, sft = load_sft(ctx)
    remote = ctx.cfg.model.trust_remote_code
    reference = load_pretrained_lm(sft.path, tok, remote).to(ctx.device)
    if cfg.name == "ppo":
        from pipelines.stages.reward_model import ensure_reward_model

        # r_φ's mean and std on π_SFT samples, stored with it (Ziegler et al. 2019 normalise r_φ the same way).
        role = reward_role(ctx, tok, gold=False, normalize=cfg.normalize_scores)
        critic = load_scalar_model(
            ensure_reward_model(ctx).path, tok, remote
        )  # Huang et al.: critic initialised from r_φ
        if cfg.normalize_scores:  # the critic predicts returns of the normalised score: start it on that scale
            critic.score = normalised_head(critic.score, *role.norm)
    else:
        critic = load_scalar_model(sft.path, tok, remote)  # π_SFT's backbone, fresh scalar head
        # The gold scorer has no stored statistics: the first rollout (π_SFT's own samples) gives them.
        role = reward_role(ctx, tok, gold=True, normalize=cfg.normalize_scores)
    return Roles(policy, reference, critic.to(ctx.device), role.score, tok, role.norm, role.proxy)


def run(ctx: RunContext) -> dict:
    """Train π_θ with PPO (``ppo``: against r_φ; ``ppo_gt``: against the gold reward) and evaluate it on the way.
    A job killed after a checkpoint continues from it (see the module docstring)."""
    from tqdm.auto import tqdm

    cfg = ctx.cfg.pipeline
    # Several processes (accelerate launch / torchrun) share each batch equally, each its minibatches: a bad split
    # stops here, before anything trains. Only the main process evaluates and writes (rows, checkpoints, the policy).
    distributed.per_process(cfg.batch_size // cfg.num_minibatches, "pipeline.batch_size / pipeline.num_minibatches")
    roles = build_roles(ctx)
    policy, reference, tok = roles.policy, roles.reference, roles.tok
    prompts = ctx.task.train_prompts
    prompt_gen = torch.Generator().manual_seed(ctx.cfg.seed)

    def next_prompts() -> list[str]:
        return [prompts[i] for i in torch.randperm(len(prompts), generator=prompt_gen)[: cfg.batch_size].tolist()]

    ppo = roles.ppo(cfg, seed=ctx.cfg.seed, precision=ctx.precision)
    saved = checkpoint.load(ctx.folder, ctx.key)  # before the tracker: it cuts the row files back to the checkpoint's
    if not distributed.agree(saved is not None):  # every process resumes, or none
        saved = None
    tracker = ctx.tracker(resume=saved["progress"] if saved else None)
    evaluator = ctx.evaluator(reference, tok, proxy=roles.proxy)
    point_args = dict(method=ctx.method, setting=ctx.setting, seed=ctx.cfg.seed, run_id=tracker.run_id)
    compute = {"tokens_generated": 0, "tokens_trained": 0}  # training compute so far, for the report's compute axis

    def evaluate_on_main(step: int) -> dict:
        point = evaluator(policy, step=step, **point_args, **compute)
        check_point(point, step)
        return tracker.log_eval(point)

    def evaluate(step: int) -> dict:  # the main process evaluates; every process gets its row (or its error)
        return distributed.on_main(evaluate_on_main, step)

    if saved:
        ppo.load_state_dict(saved["ppo"])
        prompt_gen.set_state(saved["prompt_gen"])
        checkpoint.set_rng_state(saved["rng"])
        checkpoint.restore_clock(evaluator, saved["clock"])
        compute.update(saved["compute"])
        points = tracker.rows()
        log.info("%s resumes after update %d", ctx.method, ppo.updates_done)
    else:
        points = [evaluate(0)]
        log.info("%s step 0: gold %.3f, KL %.3f", ctx.method, points[0]["gold_reward"], points[0]["kl"])

    def save_checkpoint() -> None:
        state = {  # made on every process (ppo.state_dict gathers every process's sampling stream), written by the main
            "ppo": ppo.state_dict(),
            "prompt_gen": prompt_gen.get_state(),
            "rng": checkpoint.rng_state(),
            "clock": checkpoint.clock_state(evaluator),
            "compute": dict(compute),
            "train_s": time.time() - t0,
            "progress": tracker.progress(),
        }
        distributed.on_main(checkpoint.save, ctx.folder, ctx.key, state)

    t0 = time.time() - (saved["train_s"] if saved else 0.0)
    bar = tqdm(
        range(ppo.updates_done + 1, cfg.updates + 1),
        desc=f"{ctx.method} {ctx.setting}",
        unit="update",
        mininterval=1.0,
        initial=ppo.updates_done,
        total=cfg.updates,
        disable=not distributed.is_main(),
    )
    for update in bar:
        stats = ppo.step(next_prompts())
        compute["tokens_generated"] += stats["compute/tokens_generated"]
        compute["tokens_trained"] += stats["compute/tokens_trained"]
        tracker.log(stats, step=update)
        # Per-update metrics also go to updates.jsonl in the run folder, so they survive with W&B disabled.
        tracker.append("updates.jsonl", {"update": update, **stats})
        bar.set_postfix(
            score=f"{stats['rewards/scores']:.3f}",
            kl=f"{stats['objective/kl']:.2f}",
            beta=f"{stats['objective/kl_coef']:.3g}",
            refresh=False,
        )
        if update % ctx.cfg.eval.every == 0 or update == cfg.updates:
            points.append(evaluate(update))
        # None after the last update: the finished job's done.json makes it unnecessary
        if cfg.checkpoint_every and update % cfg.checkpoint_every == 0 and update < cfg.updates:
            save_checkpoint()
        if update < cfg.updates:  # a safe point: pre-empted, the job saves now and stops (harness.runs.preempt)
            preempt.stop_if_requested(save_checkpoint)
    bar.close()
    train_s = time.time() - t0

    out = ctx.folder / "policy"

    def save_policy() -> None:
        policy.save_pretrained(out)
        tok.save_pretrained(out)

    distributed.on_main(save_policy)
    first, last = points[0], points[-1]
    summary = {
        "method": ctx.method,
        "setting": ctx.setting,
        "updates": cfg.updates,
        "episodes": cfg.updates * cfg.batch_size,
        "gold_reward_sft": first["gold_reward"],
        "gold_reward": last["gold_reward"],
        "gold_gain": last["gold_reward"] - first["gold_reward"],
        "kl": last["kl"],
        "proxy_reward": last["proxy_reward"],
        "final_kl_coef": ppo.kl_ctl.value,
        "train_s": train_s,
        "policy": str(out),
        "last_update": {k: v for k, v in stats.items()},
    }
    tracker.summary(summary)
    tracker.finish()
    if distributed.is_main():
        print(
            f"{ctx.method} {ctx.setting}: gold reward {first['gold_reward']:.3f} -> {last['gold_reward']:.3f} "
            f"({summary['gold_gain']:+.3f}) at KL {last['kl']:.2f} nats after {cfg.updates} updates ({train_s:.0f}s); "
            f"policy saved to {out}"
        )
    return summary
