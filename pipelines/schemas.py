"""Each pipeline's own knobs, declared once (``conf/pipeline/<name>.yaml`` sets the defaults a user sees).

Light on purpose (no torch, no TRL): the CLI validates a whole sweep's configs before importing any trainer.
The method registry (``pipelines/registry.py``) pairs each schema with its method(s); a record's ``knobs`` name the
swept knob(s) that label the method's points on the frontier ("beta=0.1").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.fields import (
    MAX_NEW_TOKENS,
    MICRO_BATCH_SIZE,
    NOT_IDENTITY,
    at_least_zero,
    in_unit,
    micro_batches,
    positive,
    require,
)


def _check_checkpoint_every(obj) -> None:
    """``checkpoint_every``, the knob of every method that resumes inside a job (``harness.runs.checkpoint``): a
    checkpoint every this many updates / optimizer steps, 0 = none. It says how a job runs, not what it computes
    (NOT_IDENTITY): changing it neither reruns a finished job nor discards a killed one's checkpoint."""
    require(
        obj.checkpoint_every >= 0,
        "pipeline.checkpoint_every",
        f"must be >= 0 (got {obj.checkpoint_every})",
        "set pipeline.checkpoint_every=10, or 0 for no checkpoints",
    )


@dataclass
class PipelineBase:
    name: str = "???"

    def setting(self, knobs: tuple[str, ...]) -> str:
        """``knobs`` (the registry record's) as "beta=0.1"."""
        return ",".join(f"{k}={getattr(self, k)}" for k in knobs)


@dataclass
class SFTPipeline(PipelineBase):
    """Train π_SFT (cached) and evaluate it: perplexity, samples, the gold-reward spread."""

    name: str = "sft"
    show_samples: int = 5

    def __post_init__(self) -> None:
        at_least_zero(self, "pipeline", "show_samples")


@dataclass
class PreferencesPipeline(PipelineBase):
    """Build the preference set from π_SFT samples scored by the gold reward (cached)."""

    name: str = "preferences"


@dataclass
class RewardModelPipeline(PipelineBase):
    """Fit the Bradley–Terry reward model on the preference set (cached)."""

    name: str = "reward_model"


# The per-token estimators of KL(π‖π_ref) that ``losses.kl_penalty`` computes (J. Schulman 2020): k1 = log π − log
# π_ref, k3 = (r − 1) − log r. Both estimate the KL's *value* without bias, but PPO puts only k1 into the per-token
# reward (PPOPipeline.kl_estimator refuses k3): a reward is differentiated through the score function, E[k ∇log π],
# and that equals ∇KL(π‖π_ref) for k1 only, so k3 is biased as a reward (tests/pipelines/test_losses.py shows it; verl PR
# #2953, OpenRLHF PR #1309, arXiv:2512.21852) and is logged as objective/kl_k3, never trained on. The field stays,
# for an estimator that is unbiased there.
KL_ESTIMATORS = ("k1", "k3")
# How PPO's penalty reference moves (PPOPipeline.ref_update): frozen π_SFT, refreshed copies of π_θ, or an EMA of π_θ.
REF_UPDATES = ("none", "refresh", "ema")


@dataclass
class PPOPipeline(PipelineBase):
    """PPO against a frozen reward (learned RM for ``ppo``, gold for ``ppo_gt``) with a per-token KL penalty."""

    name: str = "ppo"
    # Tuned on the embedded default (2 CPU cores): 20 updates x 64 episodes, 2 epochs x 2 minibatches per rollout
    # (the same 4 optimizer steps as TRL's 4 x 1 at half the compute): at β_KL = 0.02 PPO passes 12 nats at a gold
    # reward of 0.93. A budget for a 2-core main job: the 30 updates of before lifted β_KL = 0.05's last point from
    # 0.894 to 0.931 gold at ~7.5 nats; raise it with pipeline.updates.
    updates: int = 20  # PPO iterations (rollout + update)
    batch_size: int = 64  # prompts (= episodes) per rollout
    num_minibatches: int = 2
    ppo_epochs: int = 2  # passes over the rollout
    learning_rate: float = 2e-4  # policy AdamW (tiny from-scratch π_SFT; ~1e-6 for gpt2-large)
    critic_learning_rate: float = 3e-4  # critic AdamW, its own optimizer
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # β_KL; the initial value when target_kl is set
    kl_estimator: str = "k1"  # of the KL in the reward; k1 only (see KL_ESTIMATORS: k3 is biased there)
    target_kl: float | None = (
        None  # sequence-KL target of the adaptive controller (Ziegler et al. 2019); null = fixed β
    )
    horizon: int = 256  # episodes; β moves ≤ 20% per horizon. Ziegler et al. used 10000 on far longer runs
    # Subtracted from the (normalised) score of responses with no EOS. 0 by default, so PPO optimises the same
    # objective the other methods are compared on: the gold reward never penalises a truncated response and DPO never
    # sees such a penalty; a truncated response is scored by r_φ with EOS appended, as r_φ was trained.
    missing_eos_penalty: float = 0.0
    max_new_tokens: int = MAX_NEW_TOKENS  # as the preference set and the evaluator
    temperature: float = 1.0
    whiten_rewards: bool = False
    normalize_scores: bool = True  # (score − mean) / std over π_SFT samples: stored with the RM; ppo_gt: first rollout
    # Xu et al. 2024's decisive PPO ingredients (experiment=ppo_ingredients turns each on and off). The batch size is
    # the third: batch_size episodes per rollout, split into num_minibatches minibatches, so an update takes
    # ppo_epochs x num_minibatches optimizer steps on batch_size / num_minibatches episodes each, and a job
    # updates x batch_size episodes. To change the batch at an equal budget, scale updates inversely (and
    # num_minibatches with it to keep the minibatch size and the number of optimizer steps, as the study does).
    whiten_advantages: bool = True  # advantage normalisation: GAE advantages whitened over the rollout's tokens
    # The reference of the KL *penalty* (never of the frontier: the evaluator's KL is always to the frozen π_SFT).
    # none: π_SFT, frozen (the DPO paper's objective); refresh: a copy of π_θ taken every ref_refresh_every updates;
    # ema: after every update ref <- (1 − ref_ema)·ref + ref_ema·π_θ, parameter by parameter (Xu et al. 2024).
    ref_update: str = "none"
    ref_refresh_every: int = 5  # updates between refreshes (ref_update=refresh)
    ref_ema: float = 0.1  # weight of π_θ in each EMA step (ref_update=ema); half-life ≈ 0.69 / ref_ema updates
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # updates; a killed job resumes from the last

    def setting(self, knobs: tuple[str, ...]) -> str:
        base = f"target_kl={self.target_kl}" if self.target_kl is not None else super().setting(knobs)
        return ",".join([base, *self.ingredients()])

    def ingredients(self) -> list[str]:
        """The Xu et al. ingredients away from their defaults, as labels ("ref_update=ema,ref_ema=0.1"); none at the
        defaults, so the labels of every run that does not touch them stay what they were."""
        parts = [] if self.whiten_advantages else ["whiten_advantages=False"]
        if self.ref_update == "refresh":
            parts += ["ref_update=refresh", f"ref_refresh_every={self.ref_refresh_every}"]
        elif self.ref_update == "ema":
            parts += ["ref_update=ema", f"ref_ema={self.ref_ema}"]
        return parts

    def __post_init__(self) -> None:
        p = "pipeline"
        require(
            self.name in ("ppo", "ppo_gt"), "pipeline.name", f"'{self.name}' is not a PPO pipeline", "use ppo or ppo_gt"
        )
        positive(
            self,
            p,
            "updates",
            "batch_size",
            "num_minibatches",
            "ppo_epochs",
            "learning_rate",
            "critic_learning_rate",
            "cliprange",
            "cliprange_value",
            "max_grad_norm",
            "max_new_tokens",
            "temperature",
            "horizon",
        )
        require(
            self.kl_coef >= 0, "pipeline.kl_coef", f"must be >= 0 (got {self.kl_coef})", "set pipeline.kl_coef=0.05"
        )
        in_unit(self, p, "gamma", "lam")
        require(
            self.batch_size % self.num_minibatches == 0,
            "pipeline.num_minibatches",
            f"{self.num_minibatches} minibatches do not divide pipeline.batch_size={self.batch_size}",
            "pick a divisor of the batch size",
        )
        require(
            self.kl_estimator != "k3",
            "pipeline.kl_estimator",
            "k3 in the reward is biased (its score-function gradient is not ∇KL; only k1's is)",
            "use pipeline.kl_estimator=k1 (k3 is logged as objective/kl_k3)",
        )
        require(
            self.kl_estimator in KL_ESTIMATORS,
            "pipeline.kl_estimator",
            f"unknown '{self.kl_estimator}'",
            "use pipeline.kl_estimator=k1",
        )
        if self.target_kl is not None:
            positive(self, p, "target_kl")
        # a penalty: a negative one would pay the policy for never ending its responses
        at_least_zero(self, p, "missing_eos_penalty")
        at_least_zero(self, p, "vf_coef", "ent_coef")
        require(
            self.ref_update in REF_UPDATES,
            "pipeline.ref_update",
            f"unknown '{self.ref_update}'",
            f"choose one of {', '.join(REF_UPDATES)}",
        )
        positive(self, p, "ref_refresh_every")
        require(
            0 < self.ref_ema <= 1,
            "pipeline.ref_ema",
            f"must lie in (0, 1] (got {self.ref_ema})",
            "set pipeline.ref_ema=0.1 (the weight of π_θ in each EMA step)",
        )
        _check_checkpoint_every(self)


@dataclass
class OnlineRLPipeline(PipelineBase):
    """RLOO and GRPO with TRL's trainers (``pipelines/online_rl.py``): k completions per prompt, a critic-free baseline
    from the group, against the learned reward model (``rloo``, ``grpo``) or the gold reward (``rloo_gt``,
    ``grpo_gt``). The budget is in episodes (completions), as PPO's: ``max_steps`` × ``batch_size`` / ``num_iterations``.
    """

    name: str = "rloo"
    beta: float = (
        0.05  # KL coefficient β, the frontier's knob (RLOO: k1 sequence KL in the reward; GRPO: k3 in the loss)
    )
    num_generations: int = 4  # k, completions per prompt: the group the baseline is taken over
    # 20 optimizer steps x 64 completions (16 prompts x 4) = 1280 episodes, PPO's 20 updates x 64 episodes.
    batch_size: int = 64  # completions (episodes) per optimizer step; batch_size / num_generations prompts
    micro_batch_size: int = 0  # completions per gradient-accumulation micro-batch; 0 = the whole batch at once
    max_steps: int = 20  # optimizer steps
    num_iterations: int = 1  # μ: optimizer steps on each generated batch (1: on-policy, the ratio is 1)
    learning_rate: float = 2e-4  # as PPO's policy (tiny from-scratch π_SFT; ~1e-6 for gpt2-large)
    epsilon: float = 0.2  # clip range of the ratio (acts only when num_iterations > 1)
    max_grad_norm: float = 1.0
    max_new_tokens: int = MAX_NEW_TOKENS  # as PPO, the preference set and the evaluator
    temperature: float = 1.0  # as PPO
    normalize_scores: bool = True  # (score − mean) / std: r_φ's stored π_SFT statistics; gold: the first batch's
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # steps; a killed job resumes from the last

    methods = ()  # class attribute: the pipeline names this schema serves

    def __post_init__(self) -> None:
        p = "pipeline"
        require(
            self.name in self.methods,
            "pipeline.name",
            f"'{self.name}' is not one of {', '.join(self.methods)}",
            f"use one of {', '.join(self.methods)}",
        )
        positive(
            self,
            p,
            "batch_size",
            "max_steps",
            "num_iterations",
            "learning_rate",
            "epsilon",
            "max_grad_norm",
            "max_new_tokens",
            "temperature",
        )
        require(self.beta >= 0, "pipeline.beta", f"must be >= 0 (got {self.beta})", "set pipeline.beta=0.05")
        require(
            self.num_generations >= 2,
            "pipeline.num_generations",
            f"the group baseline needs >= 2 completions per prompt (got {self.num_generations})",
            "set pipeline.num_generations=4",
        )
        require(
            self.batch_size % self.num_generations == 0,
            "pipeline.batch_size",
            f"{self.batch_size} completions do not make whole groups of {self.num_generations}",
            "set pipeline.batch_size to a multiple of pipeline.num_generations",
        )
        micro_batches(self.batch_size, self.micro_batch_size, "pipeline.micro_batch_size")
        require(
            self.max_steps % self.num_iterations == 0,
            "pipeline.max_steps",
            f"{self.max_steps} steps are not whole generations of num_iterations={self.num_iterations} steps",
            "set pipeline.max_steps to a multiple of pipeline.num_iterations",
        )
        _check_checkpoint_every(self)

    @property
    def episodes(self) -> int:
        """Completions sampled and scored over the run: the budget PPO states as updates × batch_size."""
        return self.max_steps * self.batch_size // self.num_iterations


@dataclass
class RLOOPipeline(OnlineRLPipeline):
    """REINFORCE leave-one-out (Ahmadian et al. 2024) with TRL's RLOOTrainer."""

    name: str = "rloo"
    normalize_advantages: bool = False  # TRL's option: whiten the leave-one-out advantages over the batch

    methods = ("rloo", "rloo_gt")


GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
GRPO_SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPOPipeline(OnlineRLPipeline):
    """Group-relative policy optimisation (Shao et al. 2024) with TRL's GRPOTrainer."""

    name: str = "grpo"
    # How per-token losses are averaged: TRL's default dapo (over all tokens of the batch) has no length bias; grpo is
    # the paper's (per sequence, then over sequences).
    loss_type: str = "dapo"
    scale_rewards: str = "group"  # divide by the group's std (the paper's), the batch's, or none (Dr. GRPO)

    methods = ("grpo", "grpo_gt")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.loss_type in GRPO_LOSS_TYPES,
            "pipeline.loss_type",
            f"unknown '{self.loss_type}'",
            f"choose one of {', '.join(GRPO_LOSS_TYPES)}",
        )
        require(
            self.scale_rewards in GRPO_SCALE_REWARDS,
            "pipeline.scale_rewards",
            f"unknown '{self.scale_rewards}'",
            f"choose one of {', '.join(GRPO_SCALE_REWARDS)}",
        )


# The DPO-family losses (``losses.dpo_family_loss`` and TRL's DPOTrainer): DPO's sigmoid, IPO, robust DPO.
DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")
# Each DPO-family method's own loss and β; `loss_type: null` / `beta: null` in a config mean "the method's own".
DPO_METHOD_LOSS = {"dpo": "sigmoid", "ipo": "ipo", "cdpo": "sigmoid"}
REFERENCE_LOGPS = ("shared", "per_batch")  # DPOPipeline.reference_logps
# IPO's τ sets a per-token margin of 1/(2τ) nats (TRL length-normalises IPO), so τ = 0.1 asks for 5 nats per token:
# on the embedded default it reaches KL ≈ 43 in 20 steps, against ≈ 3.7 at τ = 0.5 (with about the same reward).
DPO_METHOD_BETA = {"dpo": 0.1, "ipo": 0.5, "cdpo": 0.1}
CDPO_LABEL_SMOOTHING = 0.1  # cDPO's ε when none is given (Mitchell 2023 uses 0.1-0.3 for noisy labels)


@dataclass
class DPOPipeline(PipelineBase):
    """DPO and its variants with TRL's DPOTrainer: ``dpo`` (sigmoid), ``ipo``, ``cdpo`` (sigmoid + label smoothing).

    ``beta`` / ``loss_type`` / ``label_smoothing`` left null take the method's own values (dpo: β=0.1, sigmoid, ε=0;
    ipo: β=0.5, ipo, ε=0; cdpo: β=0.1, sigmoid, ε=0.1). ``dpo`` also takes ``loss_type=robust`` (Chowdhury et al.
    2024) with its ε.
    """

    name: str = "dpo"
    beta: float | None = (
        None  # β, strength of the KL constraint (τ for IPO); null = the method's own (dpo, cdpo 0.1; ipo 0.5)
    )
    loss_type: str | None = None  # sigmoid | ipo | robust; null = the method's own (see above)
    label_smoothing: float | None = None  # ε, the assumed label-flip rate (cdpo, robust); null = the method's own
    learning_rate: float = 3e-4  # tuned on the embedded tiny model; the DPO paper used ~1e-6 for gpt2-large
    batch_size: int = 128  # preference pairs per optimizer step; large enough that evaluating every 10 steps costs ~10%
    micro_batch_size: int = MICRO_BATCH_SIZE  # pairs per length-sorted micro-batch (harness/lm/batching.py); 0 = none
    epochs: float = 1.0  # passes over the training pairs, used when max_steps <= 0
    max_steps: int = 20  # > 0 overrides epochs; 20 x 128 pairs (0.4 epoch): a job takes ~40 s on 1 CPU thread
    max_length: int = 64  # tokens of prompt + completion (+ EOS); longer pairs are truncated at the end
    # π_ref's log-probs of the pairs: shared = computed once and read by every DPO-family job on the same π_SFT and
    # preference set (pipelines/stages/reference_logps.py); per_batch = π_ref's forward on every training batch.
    # How, not what (they differ at float rounding): not part of the job's identity.
    reference_logps: str = field(default="shared", metadata=NOT_IDENTITY)
    # Retired (reference_logps=shared does TRL's one pass before training, once for every job); kept, false, so that
    # the keys of jobs made before stay what they were.
    precompute_ref_log_probs: bool = False
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of the steps, then a constant rate
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # steps; a killed job resumes from the last

    def __post_init__(self) -> None:
        require(
            self.name in DPO_METHOD_LOSS,
            "pipeline.name",
            f"'{self.name}' is not a DPO pipeline",
            "use dpo, ipo or cdpo",
        )
        if self.beta is None:
            self.beta = DPO_METHOD_BETA[self.name]
        if self.loss_type is None:
            self.loss_type = DPO_METHOD_LOSS[self.name]
        if self.label_smoothing is None:
            self.label_smoothing = CDPO_LABEL_SMOOTHING if self.name == "cdpo" else 0.0
        positive(self, "pipeline", "beta", "learning_rate", "batch_size", "epochs", "max_length")
        micro_batches(self.batch_size, self.micro_batch_size, "pipeline.micro_batch_size")
        require(
            self.loss_type in DPO_LOSS_TYPES,
            "pipeline.loss_type",
            f"unknown '{self.loss_type}'",
            f"choose one of {', '.join(DPO_LOSS_TYPES)}",
        )
        require(
            0 <= self.label_smoothing < 0.5,
            "pipeline.label_smoothing",
            f"must lie in [0, 0.5) (got {self.label_smoothing})",
            "set 0.1 for cDPO",
        )
        require(
            0 <= self.warmup_ratio < 1,
            "pipeline.warmup_ratio",
            f"must lie in [0, 1) (got {self.warmup_ratio})",
            "set 0.1",
        )
        _check_checkpoint_every(self)
        require(
            self.reference_logps in REFERENCE_LOGPS,
            "pipeline.reference_logps",
            f"unknown '{self.reference_logps}'",
            f"choose one of {', '.join(REFERENCE_LOGPS)}",
        )
        require(
            not self.precompute_ref_log_probs,
            "pipeline.precompute_ref_log_probs",
            "is retired: the reference log-probs are precomputed once and shared by default",
            "drop it (pipeline.reference_logps=per_batch runs π_ref on every batch instead)",
        )
        # The method name labels the frontier points, so the loss must be the one the name says.
        if self.name == "ipo":
            require(
                self.loss_type == "ipo",
                "pipeline.loss_type",
                f"pipeline ipo trains the IPO loss, not '{self.loss_type}'",
                "drop pipeline.loss_type or use pipeline=dpo",
            )
            require(
                self.label_smoothing == 0,
                "pipeline.label_smoothing",
                "IPO takes no label smoothing",
                "drop pipeline.label_smoothing",
            )
        elif self.name == "cdpo":
            require(
                self.loss_type == "sigmoid",
                "pipeline.loss_type",
                f"pipeline cdpo is the sigmoid loss with label smoothing, not '{self.loss_type}'",
                "drop pipeline.loss_type",
            )
            require(
                self.label_smoothing > 0,
                "pipeline.label_smoothing",
                "cDPO needs ε > 0",
                "set pipeline.label_smoothing=0.1, or use pipeline=dpo for ε = 0",
            )
        else:
            require(self.loss_type != "ipo", "pipeline.loss_type", "IPO runs under its own name", "use pipeline=ipo")
            require(
                self.loss_type == "robust" or self.label_smoothing == 0,
                "pipeline.label_smoothing",
                f"dpo with ε={self.label_smoothing} is conservative DPO",
                "use pipeline=cdpo, or pipeline.loss_type=robust",
            )


@dataclass
class PreferredFTPipeline(PipelineBase):
    """Supervised fine-tuning of π_SFT on (prompt, chosen) of every preference pair (SFT on y_w, as the DPO paper)."""

    name: str = "preferred_ft"
    learning_rate: float = 3e-4
    batch_size: int = 128  # (prompt, chosen) examples per optimizer step
    micro_batch_size: int = (
        MICRO_BATCH_SIZE  # examples per length-sorted micro-batch (harness/lm/batching.py); 0 = none
    )
    epochs: float = 1.0  # used when max_steps <= 0
    max_steps: int = 20  # > 0 overrides epochs; the same budget as DPO
    max_length: int = 64  # tokens of prompt + completion (+ EOS)
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # steps; a killed job resumes from the last

    def __post_init__(self) -> None:
        positive(self, "pipeline", "learning_rate", "batch_size", "epochs", "max_length")
        micro_batches(self.batch_size, self.micro_batch_size, "pipeline.micro_batch_size")
        _check_checkpoint_every(self)


@dataclass
class UnlikelihoodPipeline(PipelineBase):
    """Raise log π(y_w|x), push down rejected tokens with −α Σ_t log(1 − π(y_l,t|·)) (Welleck et al. 2019)."""

    name: str = "unlikelihood"
    alpha: float = 0.5  # weight of the unlikelihood term; the DPO paper sweeps 0.05, 0.1, 0.5, 1
    learning_rate: float = 3e-4
    batch_size: int = 128  # preference pairs per optimizer step
    micro_batch_size: int = MICRO_BATCH_SIZE  # pairs per length-sorted micro-batch (harness/lm/batching.py); 0 = none
    epochs: float = 1.0  # used when max_steps <= 0
    max_steps: int = 20  # > 0 overrides epochs; the same budget as DPO
    max_length: int = 64  # tokens of prompt + completion (+ EOS)
    max_grad_norm: float = 1.0
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # steps; a killed job resumes from the last

    def __post_init__(self) -> None:
        positive(self, "pipeline", "learning_rate", "batch_size", "epochs", "max_length", "max_grad_norm")
        micro_batches(self.batch_size, self.micro_batch_size, "pipeline.micro_batch_size")
        require(self.alpha >= 0, "pipeline.alpha", f"must be >= 0 (got {self.alpha})", "set pipeline.alpha=0.5")
        _check_checkpoint_every(self)


@dataclass
class BestOfNPipeline(PipelineBase):
    """N samples from π_SFT per held-out prompt, keep the reward model's favourite; KL = log N − (N−1)/N."""

    name: str = "best_of_n"
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    scorer: str = "reward_model"  # reward_model | gold (an oracle upper bound)

    def __post_init__(self) -> None:
        require(
            bool(self.ns) and all(int(n) >= 1 for n in self.ns),
            "pipeline.ns",
            f"needs N >= 1 (got {self.ns})",
            "e.g. pipeline.ns=[1,4,16]",
        )
        require(
            self.scorer in ("reward_model", "gold"),
            "pipeline.scorer",
            f"unknown '{self.scorer}'",
            "use reward_model or gold",
        )


# KTO's budget in preference pairs equals DPO's: each pair gives two examples (its chosen completion as desirable, its
# rejected one as undesirable), so 256 examples per step = DPO's 128 pairs.
@dataclass
class KTOPipeline(PipelineBase):
    """KTO (Ethayarajh et al. 2024) with TRL's KTOTrainer on unpaired examples derived from the preference pairs."""

    name: str = "kto"
    beta: float = 0.1  # β, strength of the KL constraint in the value function σ(β(r_θ − z_ref)) (the frontier's knob)
    desirable_weight: float = (
        1.0  # λ_D, weight of the desirable examples' losses (paper eq. 8: λ_D n_D / λ_U n_U in [1, 4/3])
    )
    undesirable_weight: float = 1.0  # λ_U; the derived set is balanced (one of each per pair), so 1 and 1
    learning_rate: float = 3e-4  # as DPO's on the embedded tiny model
    batch_size: int = 256  # examples per optimizer step = 128 pairs, DPO's batch
    # Examples per micro-batch (gradient accumulation, same update); 0 = none. KTO's reference point z_ref is estimated
    # on each micro-batch from its own mismatched (prompt, completion) pairs, as TRL does per device batch.
    micro_batch_size: int = 32
    epochs: float = 1.0  # passes over the examples, used when max_steps <= 0
    max_steps: int = 20  # > 0 overrides epochs; 20 x 256 examples = DPO's 20 x 128 pairs
    max_length: int = 64  # tokens of prompt + completion (+ EOS)
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of the steps, then a constant rate (as DPO)
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # steps; a killed job resumes from the last

    def __post_init__(self) -> None:
        positive(self, "pipeline", "beta", "learning_rate", "batch_size", "epochs", "max_length")
        positive(self, "pipeline", "desirable_weight", "undesirable_weight")  # 1 and 1 for the paired data
        k = micro_batches(self.batch_size, self.micro_batch_size, "pipeline.micro_batch_size")
        require(
            self.batch_size // k > 1,
            "pipeline.micro_batch_size",
            "KTO estimates its KL reference point from the other examples of a micro-batch, so it needs >= 2",
            "set pipeline.micro_batch_size >= 2 (or 0 for no split)",
        )
        require(
            0 <= self.warmup_ratio < 1,
            "pipeline.warmup_ratio",
            f"must lie in [0, 1) (got {self.warmup_ratio})",
            "set 0.1",
        )
        _check_checkpoint_every(self)


@dataclass
class OnlineDPOPipeline(PipelineBase):
    """Online DPO (Guo et al. 2024) with TRL's OnlineDPOTrainer: two fresh samples per prompt from the current policy,
    the learned reward model r_φ picks the chosen one, DPO loss against the frozen π_SFT."""

    name: str = "online_dpo"
    beta: float = 0.1  # β of the DPO loss (the frontier's knob)
    # Budget as PPO's: 20 updates x 64 sampled episodes (32 prompts x 2 samples = 32 pairs per update).
    updates: int = 20  # optimizer steps, one batch of prompts each
    batch_size: int = 32  # prompts per update; each gives one pair of fresh samples
    learning_rate: float = 3e-4  # as DPO's on the embedded tiny model
    max_new_tokens: int = MAX_NEW_TOKENS  # as the preference set, PPO and the evaluator
    temperature: float = 1.0  # pure sampling, as PPO and the evaluator
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of the updates, then a constant rate (as DPO)
    checkpoint_every: int = field(default=10, metadata=NOT_IDENTITY)  # updates; a killed job resumes from the last

    def __post_init__(self) -> None:
        positive(
            self,
            "pipeline",
            "beta",
            "updates",
            "batch_size",
            "learning_rate",
            "max_new_tokens",
            "temperature",
            "max_grad_norm",
        )
        require(
            0 <= self.warmup_ratio < 1,
            "pipeline.warmup_ratio",
            f"must lie in [0, 1) (got {self.warmup_ratio})",
            "set 0.1",
        )
        _check_checkpoint_every(self)


@dataclass
class EvaluatePipeline(PipelineBase):
    """A causal LM trained elsewhere (verl, OpenRLHF, another harness run), put on the frontier as a point of its own:
    the same evaluator, π_ref (π_SFT from the stage cache), held-out prompts, gold reward and sampling seed as every
    method (``pipelines/evaluate.py``). One evaluation, one row: method ``evaluate``, setting ``policy=<label>``."""

    name: str = "evaluate"
    policy: str | None = "???"  # checkpoint folder (save_pretrained) or hub name; the top-level `policy=...` sets it
    label: str | None = None  # names the point (setting "policy=<label>"); null = the checkpoint's folder name
    step: int = 0  # the training step the checkpoint was saved at, when known (the row's step)
    # Run Python code shipped with the checkpoint (config.json's auto_map)? Off, as model.trust_remote_code.
    trust_remote_code: bool = field(default=False, metadata=NOT_IDENTITY)
    # Set when the config is validated, not by hand: the sizes and times of a checkpoint folder's config and weights,
    # so that a checkpoint saved again under the same path is a new job, not a finished one reused. null: a hub name.
    checkpoint_stamp: str | None = None

    def setting(self, knobs: tuple[str, ...] = ()) -> str:
        return f"policy={self.point_label()}"

    def point_label(self) -> str:
        """``label``, else the checkpoint's last path part (a hub name's model part); ',' and '=' would split the
        setting, so they become '_'."""
        text = self.label or str(self.policy).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        return re.sub(r"[,=]", "_", text)

    def __post_init__(self) -> None:
        # "???" is the schema's own placeholder (Hydra's "required"); a composed config has a value or None by now
        require(
            bool(self.policy),
            "policy",
            "pipeline=evaluate needs the checkpoint to evaluate",
            "set policy=/path/to/a/save_pretrained/folder or policy=<org/name> on the hub",
        )
        require(
            self.label is None or bool(str(self.label).strip()),
            "pipeline.label",
            "is empty",
            "drop it (the folder name labels the point) or set pipeline.label=<name>",
        )
        require(
            self.step >= 0,
            "pipeline.step",
            f"must be >= 0 (got {self.step})",
            "set the checkpoint's training step, or 0",
        )
        self.checkpoint_stamp = folder_stamp(self.policy)


def folder_stamp(path: str) -> str | None:
    """A short hash of the names, sizes and modification times of a model folder's config and weight files; None
    when ``path`` is not a folder (a hub name: its revision is the hub's business), or not one that can be looked at
    (a name too long for the filesystem: the preflight's ``check_input_paths`` says so, naming ``policy``)."""
    folder = Path(str(path))
    try:
        if not folder.is_dir():
            return None
    except OSError:
        return None
    files = sorted(
        f for f in folder.iterdir() if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    )
    blob = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
