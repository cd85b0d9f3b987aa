"""Each pipeline's own knobs, declared once (``conf/pipeline/<name>.yaml`` sets the defaults a user sees).

Light on purpose (no torch, no TRL): the CLI validates a whole sweep's configs before importing any trainer.
``setting_keys`` names the swept knob(s) that label the method's points on the frontier ("beta=0.1").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.config import ConfigError, _in_unit, _positive, _require


@dataclass
class PipelineBase:
    name: str = "???"

    setting_keys = ()  # class attribute, not a config field

    def setting(self) -> str:
        return ",".join(f"{k}={getattr(self, k)}" for k in self.setting_keys)


@dataclass
class SFTPipeline(PipelineBase):
    """Train π_SFT (cached) and evaluate it: perplexity, samples, the gold-reward spread."""

    name: str = "sft"
    show_samples: int = 5


@dataclass
class PreferencesPipeline(PipelineBase):
    """Build the preference set from π_SFT samples scored by the gold reward (cached)."""

    name: str = "preferences"


@dataclass
class RewardModelPipeline(PipelineBase):
    """Fit the Bradley–Terry reward model on the preference set (cached)."""

    name: str = "reward_model"


KL_ESTIMATORS = ("k1", "k3")


@dataclass
class PPOPipeline(PipelineBase):
    """PPO against a frozen reward (learned RM for ``ppo``, gold for ``ppo_gt``) with a per-token KL penalty."""

    name: str = "ppo"
    updates: int = 60  # PPO iterations (rollout + update)
    batch_size: int = 64  # prompts (= episodes) per rollout
    num_minibatches: int = 1
    ppo_epochs: int = 4
    learning_rate: float = 1e-4
    critic_learning_rate: float = 3e-4
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # β_KL; the initial value when target_kl is set
    kl_estimator: str = "k1"
    target_kl: float | None = None  # sequence-KL target of the adaptive controller (Ziegler et al. 2019); null = fixed β
    horizon: int = 10000
    missing_eos_penalty: float = 1.0  # subtracted from the score of responses with no EOS
    max_new_tokens: int = 24
    temperature: float = 1.0
    whiten_rewards: bool = False
    normalize_scores: bool = True  # subtract the RM's mean score on π_SFT samples (stored with the RM)

    setting_keys = ("kl_coef",)

    def setting(self) -> str:
        return f"target_kl={self.target_kl}" if self.target_kl is not None else super().setting()

    def __post_init__(self) -> None:
        p = "pipeline"
        _require(self.name in ("ppo", "ppo_gt"), "pipeline.name", f"'{self.name}' is not a PPO pipeline", "use ppo or ppo_gt")
        _positive(self, p, "updates", "batch_size", "num_minibatches", "ppo_epochs", "learning_rate",
                  "critic_learning_rate", "cliprange", "cliprange_value", "max_grad_norm", "max_new_tokens", "temperature", "horizon")
        _require(self.kl_coef >= 0, "pipeline.kl_coef", f"must be >= 0 (got {self.kl_coef})", "set pipeline.kl_coef=0.05")
        _in_unit(self, p, "gamma", "lam")
        _require(self.batch_size % self.num_minibatches == 0, "pipeline.num_minibatches",
                 f"{self.num_minibatches} minibatches do not divide pipeline.batch_size={self.batch_size}", "pick a divisor of the batch size")
        _require(self.kl_estimator in KL_ESTIMATORS, "pipeline.kl_estimator", f"unknown '{self.kl_estimator}'", f"choose one of {', '.join(KL_ESTIMATORS)}")
        if self.target_kl is not None:
            _positive(self, p, "target_kl")
        _require(self.vf_coef >= 0 and self.ent_coef >= 0, "pipeline.vf_coef", "vf_coef and ent_coef must be >= 0", "set them >= 0")


DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")


@dataclass
class DPOPipeline(PipelineBase):
    """DPO and its variants with TRL's DPOTrainer: ``dpo`` (sigmoid), ``ipo``, ``cdpo`` (label smoothing)."""

    name: str = "dpo"
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    learning_rate: float = 5e-4
    batch_size: int = 64
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    max_length: int = 64
    precompute_ref_log_probs: bool = False
    warmup_ratio: float = 0.1

    setting_keys = ("beta",)

    def __post_init__(self) -> None:
        _require(self.name in ("dpo", "ipo", "cdpo"), "pipeline.name", f"'{self.name}' is not a DPO pipeline", "use dpo, ipo or cdpo")
        _positive(self, "pipeline", "beta", "learning_rate", "batch_size", "epochs", "max_length")
        _require(self.loss_type in DPO_LOSS_TYPES, "pipeline.loss_type", f"unknown '{self.loss_type}'", f"choose one of {', '.join(DPO_LOSS_TYPES)}")
        _require(0 <= self.label_smoothing < 0.5, "pipeline.label_smoothing", f"must lie in [0, 0.5) (got {self.label_smoothing})", "set 0.1 for cDPO")


@dataclass
class PreferredFTPipeline(PipelineBase):
    """Supervised fine-tuning of π_SFT on (prompt, chosen) only."""

    name: str = "preferred_ft"
    learning_rate: float = 5e-4
    batch_size: int = 64
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 64

    def __post_init__(self) -> None:
        _positive(self, "pipeline", "learning_rate", "batch_size", "epochs", "max_length")


@dataclass
class UnlikelihoodPipeline(PipelineBase):
    """Raise log π(y_w|x), push down rejected tokens with −α Σ_t log(1 − π(y_l,t|·)) (Welleck et al. 2019)."""

    name: str = "unlikelihood"
    alpha: float = 0.5
    learning_rate: float = 5e-4
    batch_size: int = 64
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 64

    setting_keys = ("alpha",)

    def __post_init__(self) -> None:
        _positive(self, "pipeline", "learning_rate", "batch_size", "epochs", "max_length")
        _require(self.alpha >= 0, "pipeline.alpha", f"must be >= 0 (got {self.alpha})", "set pipeline.alpha=0.5")


@dataclass
class BestOfNPipeline(PipelineBase):
    """N samples from π_SFT per held-out prompt, keep the reward model's favourite; KL = log N − (N−1)/N."""

    name: str = "best_of_n"
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    scorer: str = "reward_model"  # reward_model | gold (an oracle upper bound)

    def __post_init__(self) -> None:
        _require(bool(self.ns) and all(int(n) >= 1 for n in self.ns), "pipeline.ns", f"needs N >= 1 (got {self.ns})", "e.g. pipeline.ns=[1,4,16]")
        _require(self.scorer in ("reward_model", "gold"), "pipeline.scorer", f"unknown '{self.scorer}'", "use reward_model or gold")


SCHEMAS: dict[str, type] = {
    "sft": SFTPipeline, "preferences": PreferencesPipeline, "reward_model": RewardModelPipeline,
    "ppo": PPOPipeline, "ppo_gt": PPOPipeline, "dpo": DPOPipeline, "ipo": DPOPipeline, "cdpo": DPOPipeline,
    "preferred_ft": PreferredFTPipeline, "unlikelihood": UnlikelihoodPipeline, "best_of_n": BestOfNPipeline,
}


def pipeline_schema(name: str) -> type:
    if name not in SCHEMAS:
        raise ConfigError(f"pipeline.name: unknown pipeline '{name}'; choose one of {', '.join(SCHEMAS)}")
    return SCHEMAS[name]
