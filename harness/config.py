"""Configuration schemas: declared once here, composed by Hydra from ``conf/``, validated before any work.

Every group in ``conf/`` maps onto one dataclass below. ``validate(cfg)`` turns the composed OmegaConf tree into
these dataclasses; each ``__post_init__`` raises :class:`ConfigError` with a one-line message that names the key
and says how to fix it, so a bad sweep dies before the first tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.fields import (
    IDENTITY_WHEN_SET,
    MAX_NEW_TOKENS,
    MICRO_BATCH_SIZE,
    NOT_IDENTITY,
    ConfigError,
    at_least_zero,
    micro_batches,
    out_of_identity,
    plain_value,
    positive,
    require,
)
from harness.methods import Method, lookup

# ----------------------------------------------------------------------------------------------------------- task
TASKS = ("reviews", "imdb", "local")


@dataclass
class TaskConfig:
    name: str = "reviews"  # reviews (embedded generator) | imdb (HF datasets, by name or path) | local (jsonl/csv file)
    n_train: int = 12000  # training reviews (SFT corpus; training prompts come from these)
    n_heldout: int = 1000  # held-out reviews: evaluation prompts and perplexity, never trained on
    n_train_prompts: int = 1200  # prompts for the preference set and for PPO rollouts
    n_eval_prompts: int = 128  # held-out prompts the evaluator samples from
    prompt_min_tokens: int = 2  # prompts are prefixes of 2..8 whitespace tokens, as in the DPO paper §6.1
    prompt_max_tokens: int = 8
    seed: int = 0  # the data seed; shared by every method so they see the same reviews and prompts
    path: str | None = None  # imdb: dataset name or local path; local: a .jsonl/.csv file with a `text` column
    text_column: str = "text"

    def __post_init__(self) -> None:
        require(self.name in TASKS, "task.name", f"unknown task '{self.name}'", f"choose one of {', '.join(TASKS)}")
        positive(self, "task", "n_train", "n_heldout", "n_train_prompts", "n_eval_prompts")
        at_least_zero(self, "task", "seed")
        require(
            1 <= self.prompt_min_tokens,
            "task.prompt_min_tokens",
            f"must be >= 1 (got {self.prompt_min_tokens})",
            "set 1 <= task.prompt_min_tokens <= task.prompt_max_tokens",
        )
        require(  # named by the key that is out of place: the larger bound below the smaller
            self.prompt_min_tokens <= self.prompt_max_tokens,
            "task.prompt_max_tokens" if self.prompt_max_tokens < 1 else "task.prompt_min_tokens",
            f"invalid prompt-length range [{self.prompt_min_tokens}, {self.prompt_max_tokens}]",
            "set 1 <= task.prompt_min_tokens <= task.prompt_max_tokens",
        )
        if self.name == "local":
            require(bool(self.path), "task.path", "task 'local' needs a file", "set task.path=/path/to/reviews.jsonl")
        # A path given to the generated task would be ignored without a word: the user meant another task.
        require(
            self.name != "reviews" or not self.path,
            "task.path",
            "task 'reviews' is generated and reads no file",
            "drop task.path, or use task=local (a .jsonl/.csv file) or task=imdb (a dataset folder)",
        )


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = "tiny"  # tiny (GPT-2-style from config) | a hub name (gpt2, gpt2-large, EleutherAI/pythia-...) | a path
    n_layer: int = 4  # tiny only
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 96
    vocab_size: int = 1024  # tiny only: size of the BPE tokenizer trained on the task corpus
    dtype: str = "float32"  # training dtype; fp32 on CPU
    # Run Python code shipped with a hub model (config.json's auto_map)? Off: loading a model must not run its code.
    trust_remote_code: bool = field(default=False, metadata=NOT_IDENTITY)
    # A model shipped as a GGUF file: <package>/<file>.gguf inside an installed pip package (found through the
    # package), or the path of a .gguf file; converted once into a transformers folder (harness/lm/gguf.py). `name`
    # is then the model's label. e.g. model=smollm2_135m.
    gguf: str | None = field(default=None, metadata=IDENTITY_WHEN_SET)

    def __post_init__(self) -> None:
        require(bool(self.name), "model.name", "is empty", "set model.name=tiny or a hub name / local path")
        if self.gguf is not None:
            require(
                str(self.gguf).endswith(".gguf"),
                "model.gguf",
                f"'{self.gguf}' is not a .gguf file",
                "give <package>/<file>.gguf or the path of a .gguf file, e.g. model=smollm2_135m",
            )
            require(
                self.name != "tiny",
                "model.name",
                "'tiny' is built from config and reads no model.gguf",
                "set model.name to the GGUF model's label, or drop model.gguf",
            )
        positive(self, "model", "n_layer", "n_embd", "n_head", "n_positions", "vocab_size")
        require(
            self.n_embd % self.n_head == 0, "model.n_head", f"must divide model.n_embd={self.n_embd}", "pick a divisor"
        )
        require(
            self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", f"unknown '{self.dtype}'", "use float32"
        )


# ----------------------------------------------------------------------------------------------------------- gold
GOLD_KINDS = ("vader", "hf_classifier", "hf_reward_model")


GOLD_SQUASH = ("none", "sigmoid")


@dataclass
class GoldConfig:
    # vader (embedded) | hf_classifier (p(label), e.g. siebert/sentiment-roberta-large-english) | hf_reward_model (a
    # sequence classifier with one output, num_labels=1: its score, the synthetic gold of Gao et al. 2022)
    kind: str = "vader"
    name_or_path: str | None = None  # hf_classifier / hf_reward_model: hub name or local folder
    label: str = "POSITIVE"  # hf_classifier: the label whose probability is the reward
    # hf_reward_model: none = the raw score (unbounded: the evaluator and the report take any real reward; the report
    # clips its bands to [0, 1] only when every point lies there) | sigmoid = σ(score) in (0, 1)
    squash: str = "none"
    batch_size: int = 64
    trust_remote_code: bool = field(default=False, metadata=NOT_IDENTITY)  # hf_*: see ModelConfig

    def __post_init__(self) -> None:
        require(
            self.kind in GOLD_KINDS, "gold.kind", f"unknown '{self.kind}'", f"choose one of {', '.join(GOLD_KINDS)}"
        )
        if self.kind in ("hf_classifier", "hf_reward_model"):
            require(
                bool(self.name_or_path), "gold.name_or_path", "is required", "set gold.name_or_path=<hub name or path>"
            )
        require(
            self.squash in GOLD_SQUASH,
            "gold.squash",
            f"unknown '{self.squash}'",
            f"choose one of {', '.join(GOLD_SQUASH)}",
        )
        require(
            self.squash == "none" or self.kind == "hf_reward_model",
            "gold.squash",
            f"applies to gold.kind=hf_reward_model only (kind is {self.kind})",
            "drop gold.squash",
        )
        positive(self, "gold", "batch_size")


# --------------------------------------------------------------------------------------------------------- stages
@dataclass
class SFTStageConfig:
    epochs: float = 2.0
    learning_rate: float = 2e-3  # from scratch for `tiny`; use ~5e-5 for pretrained models
    batch_size: int = 64
    micro_batch_size: int = MICRO_BATCH_SIZE  # reviews per length-sorted micro-batch (same update); 0 = none
    max_length: int = 64  # tokens per training review (the reviews are shorter)
    warmup_ratio: float = 0.05  # passed as a fraction of all steps (transformers 5: warmup_steps < 1)

    def __post_init__(self) -> None:
        positive(self, "sft", "epochs", "learning_rate", "batch_size", "max_length")
        micro_batches(self.batch_size, self.micro_batch_size, "sft.micro_batch_size")
        require(
            0 <= self.warmup_ratio < 1,
            "sft.warmup_ratio",
            f"must lie in [0, 1) (got {self.warmup_ratio})",
            "set sft.warmup_ratio=0.05 (a fraction of all steps)",
        )


PREFERENCE_LABELS = ("deterministic", "bradley_terry")


PREFERENCE_SOURCES = ("generated", "file")


EVAL_PROMPTS_FROM = ("file", "task")


@dataclass
class PreferencesConfig:
    samples_per_prompt: int = 4  # 4 completions -> all 6 pairs per prompt
    max_new_tokens: int = MAX_NEW_TOKENS  # a completion cut off here enters the pairs as its text, EOS appended
    temperature: float = 1.0
    min_margin: float = 0.0  # pairs whose gold scores differ by less than this are dropped (ties always are)
    labels: str = "deterministic"  # deterministic: chosen = higher gold; bradley_terry: sampled from σ((r_a-r_b)/τ)
    bt_temperature: float = 0.1  # τ of the Bradley–Terry labels
    eval_fraction: float = 0.1  # share of prompts held out as a validation split (reward-model accuracy)
    batch_size: int = 256
    # generated: π_SFT samples scored by the gold reward (above) | file: your own pairs in TRL's standard or
    # conversational format (harness/data/preference_file.py), at ``path``: .jsonl, .parquet or a save_to_disk folder
    source: str = "generated"
    path: str | None = None
    # source=file: evaluation prompts are the file's held-out prompts (file) or the task's (task)
    eval_prompts: str = "file"

    def __post_init__(self) -> None:
        require(
            self.samples_per_prompt >= 2,
            "preferences.samples_per_prompt",
            f"needs >= 2 (got {self.samples_per_prompt})",
            "set it to 4",
        )
        positive(self, "preferences", "max_new_tokens", "temperature", "bt_temperature", "batch_size")
        require(
            self.min_margin >= 0,
            "preferences.min_margin",
            f"must be >= 0 (got {self.min_margin})",
            "set 0 to keep all non-tied pairs",
        )
        require(
            self.labels in PREFERENCE_LABELS,
            "preferences.labels",
            f"unknown '{self.labels}'",
            f"choose one of {', '.join(PREFERENCE_LABELS)}",
        )
        require(
            0 < self.eval_fraction < 1,
            "preferences.eval_fraction",
            f"must lie in (0, 1) (got {self.eval_fraction})",
            "set 0.1",
        )
        require(
            self.source in PREFERENCE_SOURCES,
            "preferences.source",
            f"unknown '{self.source}'",
            f"choose one of {', '.join(PREFERENCE_SOURCES)}",
        )
        require(
            self.eval_prompts in EVAL_PROMPTS_FROM,
            "preferences.eval_prompts",
            f"unknown '{self.eval_prompts}'",
            f"choose one of {', '.join(EVAL_PROMPTS_FROM)}",
        )
        if self.source == "file":
            require(
                bool(self.path),
                "preferences.path",
                "preferences.source=file needs a file",
                "set preferences.path=/path/to/pairs.jsonl (or .parquet, or a save_to_disk folder)",
            )
            # The labels come with the file: a labelling knob set here would be ignored without a word.
            require(
                self.labels == "deterministic" and self.min_margin == 0,
                "preferences.labels",
                "labels and min_margin shape generated pairs; a file's pairs come labelled",
                "drop preferences.labels / preferences.min_margin, or use preferences.source=generated",
            )
        else:
            require(
                not self.path,
                "preferences.path",
                "is read only with preferences.source=file",
                "add preferences.source=file, or drop preferences.path",
            )


@dataclass
class RewardModelConfig:
    epochs: float = 3.0  # ~300 steps on the default preference set: held-out pair accuracy plateaus there
    learning_rate: float = 1e-3
    batch_size: int = 64
    micro_batch_size: int = MICRO_BATCH_SIZE  # pairs per length-sorted micro-batch (same update); 0 = none
    max_length: int = 64
    center_rewards_coefficient: float | None = 0.01  # TRL's auxiliary (r_w + r_l)^2 term (Eisenstein et al. 2023)

    def __post_init__(self) -> None:
        positive(self, "reward_model", "epochs", "learning_rate", "batch_size", "max_length")
        micro_batches(self.batch_size, self.micro_batch_size, "reward_model.micro_batch_size")
        at_least_zero(self, "reward_model", "center_rewards_coefficient")  # a weight on a squared term: null = off


# ----------------------------------------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    every: int = 10  # evaluate every this many optimizer updates (and at step 0 and at the end)
    samples_per_prompt: int = 2  # k samples per held-out prompt
    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 1.0  # sampling temperature; the KL is computed between both models at this temperature
    batch_size: int = 256
    seed: int = 1234  # with the run's seed, sets the sampling seed: fixed within a run (points differ by the policy
    # only), shared by all methods of one run seed (paired draws), different for another run seed

    def __post_init__(self) -> None:
        positive(self, "eval", "every", "samples_per_prompt", "max_new_tokens", "temperature", "batch_size")
        at_least_zero(self, "eval", "seed")


# --------------------------------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    wandb_mode: str = "offline"  # offline (no account) | online | disabled
    project: str = "rlhf-vs-dpo"
    entity: str | None = None
    group: str | None = None  # one group per sweep; defaults to the sweep folder's name

    def __post_init__(self) -> None:
        require(
            self.wandb_mode in ("offline", "online", "disabled"),
            "logger.wandb_mode",
            f"unknown '{self.wandb_mode}'",
            "use offline, online or disabled",
        )


# ------------------------------------------------------------------------------------------------------ top level
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


PRECISIONS = ("fp32", "bf16")  # fp32 | bf16 mixed precision (fp32 master weights): harness/lm/precision.py


@dataclass
class Sections:
    """The top-level schema, declared once: every section and top-level key with its default. ``_Schema`` (what Hydra
    composes ``conf/config.yaml`` onto) and ``HarnessConfig`` (the validated config a job runs) both extend it."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gold: GoldConfig = field(default_factory=GoldConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    preferences: PreferencesConfig = field(default_factory=PreferencesConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    pipeline: Any = None  # a pipeline's own dataclass, picked by pipeline.name (its registry record's schema)
    seed: int = 0  # the method's seed (stages are seeded by task.seed so every job shares them)
    cache_dir: str = ".cache/harness"  # conf/config.yaml reads HARNESS_CACHE_DIR first
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    precision: str = "fp32"  # fp32 | bf16: bf16 autocast over fp32 weights for the methods (harness/lm/precision.py)
    # false: one preference set and reward model for all seeds (seeded by task.seed); true: each run seed builds its
    # own (sampling, labels, split, reward-model training), so seed-to-seed intervals include the variance of the
    # data and reward model, RLHF's largest. π_SFT (= π_ref) and the prompts stay shared either way.
    stages_per_seed: bool = False
    # true: a run of another job in this job's folder is moved aside to <folder>/.replaced-<time>/ instead of stopping
    # the command (harness/runs/folder.py). How a job runs, not what it computes: no part of job keys or folder names.
    overwrite: bool = False


# The typed sections (task, model, ..., logger) by name, in the schema's order: each is built from its own node.
SECTION_TYPES: dict[str, type] = {
    f.name: f.default_factory for f in dataclasses.fields(Sections) if f.default_factory is not dataclasses.MISSING
}


@dataclass
class HarnessConfig(Sections):
    raw: dict = field(default_factory=dict)  # the resolved config as plain data, saved with the run
    # the method's registry record (harness/methods.py): what the library knows of it; not a config value
    method: Method | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The syntax only: whether the device exists is a property of the machine the job runs on (harness.preflight.checks).
        require(
            bool(re.fullmatch(DEVICE_PATTERN, str(self.device))),
            "device",
            f"unknown device '{self.device}'",
            "use auto, cpu, cuda, cuda:<index> or mps",
        )
        require(
            self.precision in PRECISIONS,
            "precision",
            f"unknown '{self.precision}'",
            "use precision=fp32 or precision=bf16",
        )
        require(self.threads >= 0, "threads", f"must be >= 0 (got {self.threads})", "set threads=0 for torch's default")
        # numpy's and the data generators' seeds take no negative number: refused here, not when a stage seeds them
        at_least_zero(self, "", "seed")

    @property
    def stage_seed(self) -> int:
        """The seed of the preference set and reward model (see ``stages_per_seed``)."""
        return self.seed if self.stages_per_seed else self.task.seed


def _build(cls: type, node: Any, prefix: str) -> Any:
    """Instantiate ``cls`` from a mapping; unknown keys are a ConfigError naming them, and so is a value no key may
    hold (``harness.fields.plain_value``: nan, inf, an empty string or list), before the schema's own range checks."""
    data = dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    require(
        not unknown,
        f"{prefix}.{unknown[0] if unknown else ''}",
        "unknown key",
        f"valid keys: {', '.join(sorted(names))}",
    )
    for name, value in data.items():
        plain_value(f"{prefix}.{name}", value)
    return cls(**data)


def to_container(cfg: DictConfig) -> dict:
    """Resolve every interpolation; a ``???`` left in the tree, or an interpolation that does not resolve
    (``${oc.env:UNSET}``, ``${no.such.key}``), becomes a one-line ConfigError naming its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:  # message like "Missing mandatory value: pipeline.beta"
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"{key}: required value is missing (???); set it on the command line, e.g. {key}=<value>"
        ) from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        first = str(e).strip().splitlines()[0]
        raise ConfigError(
            f"{key}: cannot resolve its value ({first}); fix the interpolation or give a plain value"
        ) from None


def validate(cfg: DictConfig | dict, methods: Mapping[str, Method]) -> HarnessConfig:
    """Compose-time tree -> typed, validated config, carrying its method's registry record (``methods``: the method
    registry, handed over by the composition root). Raises ConfigError before any work starts."""
    raw = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    # `+name=value` adds a key that the schema does not declare; unnoticed, a misspelt `+sede=3` would run with seed 0.
    known = {f.name for f in dataclasses.fields(_Schema)}
    unknown = sorted(set(raw) - known - {"hydra"})
    require(
        not unknown, unknown[0] if unknown else "", "unknown top-level key", f"valid keys: {', '.join(sorted(known))}"
    )
    pipe = dict(raw.get("pipeline") or {})
    require("name" in pipe, "pipeline.name", "is missing", "pick one, e.g. pipeline=sft")
    method = lookup(methods, pipe["name"])
    takers = ", ".join(f"pipeline={m.name}" for m in methods.values() if m.takes_policy)
    require(
        raw.get("policy") is None or method.takes_policy,
        "policy",
        f"is read by {takers} only, not by pipeline={pipe['name']}",
        f"use {takers} to evaluate a checkpoint, or drop policy=",
    )
    built = {k: _build(cls, raw.get(k), k) for k, cls in SECTION_TYPES.items()}
    top = {
        f.name: raw[f.name]
        for f in dataclasses.fields(Sections)
        if f.name not in SECTION_TYPES and f.name != "pipeline" and f.name in raw
    }
    for name, value in top.items():
        plain_value(name, value)
    return HarnessConfig(pipeline=_build(method.schema, pipe, "pipeline"), raw=raw, method=method, **built, **top)


def identity_of(obj: Any) -> Any:
    """A dataclass as plain data without its NOT_IDENTITY fields (what it computes, not how it may run); other
    values unchanged."""
    if not dataclasses.is_dataclass(obj):
        return obj
    skip = {f.name for f in dataclasses.fields(obj) if out_of_identity(f, getattr(obj, f.name))}
    return {k: v for k, v in dataclasses.asdict(obj).items() if k not in skip}


def stage_fingerprint(*parts: Any) -> dict:
    """The plain-data identity of a stage artifact: the dataclasses (or dicts) that determine it."""
    return {"parts": [identity_of(p) for p in parts]}


@dataclass
class _Schema(Sections):
    """What ``conf/config.yaml`` is merged onto: every section typed, so a misspelt key or a wrong type fails at
    composition and every knob can be overridden without ``+``. (``pipeline`` is typed by its own group schema.) Adds
    the keys of experiment files and of ``pipeline=evaluate``'s shorthand, which are no job's settings."""

    experiment_name: str | None = None  # set by experiment files; names the sweep folder and the W&B group
    study: Any = None  # experiment files: a list of jobs, each a list of overrides (hydra_plugins/harness_study)
    seeds: Any = None  # experiment files: the seeds every study entry runs with
    policy: Any = None  # pipeline=evaluate: the checkpoint to evaluate (short for pipeline.policy)


def register_configs(methods: Mapping[str, Method]) -> None:
    """Register the schemas in Hydra's ConfigStore: ``harness_schema`` (top level) and ``pipeline/<name>_schema``
    for each method of the registry, which ``conf/pipeline/<name>.yaml`` lists first in its defaults."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="harness_schema", node=_Schema)
    for name, m in methods.items():
        cs.store(group="pipeline", name=f"{name}_schema", node=m.schema(name=name))


# ------------------------------------------------------------------------------------------------------ studies
# On the command line each override is quoted (it holds '='), and the whole argument quoted for the shell.
STUDY_EXAMPLE = "\"study=[['pipeline=dpo','pipeline.beta=0.1'],['pipeline=ppo']]\" seeds=[0,1]"


def study_plan(study: Any, seeds: Any) -> tuple[list[list[str]], list[int | None]]:
    """(entries, seeds) of a study (``hydra_plugins/harness_study``), checked for shape: ``study`` a non-empty list of
    jobs, each a non-empty list of ``key=value`` overrides; ``seeds`` a non-empty list of distinct integers >= 0. Left
    out (None), ``study`` is one job made of the command line alone and ``seeds`` each entry's own seed. Any other
    shape is one ConfigError line that says the expected one (a flat list, ``seeds=3``: Hydra's own parser would be
    handed a string and spell it letter by letter)."""
    if study is None:
        entries = [[]]
    else:
        require(
            isinstance(study, (list, tuple)),
            "study",
            f"must be a list of jobs (got {type(study).__name__} {study!r})",
            f"write it as {STUDY_EXAMPLE}",
        )
        require(bool(study), "study", "is an empty list: it names no job", f"list the jobs, e.g. {STUDY_EXAMPLE}")
        entries = []
        for i, entry in enumerate(study):
            require(
                isinstance(entry, (list, tuple)),
                f"study[{i}]",
                f"is {entry!r}, not a list of overrides (a study is a list of jobs, each a list)",
                f"wrap each job in brackets: {STUDY_EXAMPLE}",
            )
            require(bool(entry), f"study[{i}]", "is an empty job", "give it overrides, e.g. [pipeline=dpo], or drop it")
            for override in entry:
                require(
                    isinstance(override, str) and "=" in override.lstrip("+~"),
                    f"study[{i}]",
                    f"holds {override!r}, not an override key=value",
                    f"write each job as a list of key=value, e.g. {STUDY_EXAMPLE}",
                )
            entries.append([str(o) for o in entry])
    if seeds is None:
        return entries, [None]
    require(
        isinstance(seeds, (list, tuple)),
        "seeds",
        f"must be a list of seeds (got {type(seeds).__name__} {seeds!r})",
        f"write it as seeds=[{seeds}]" if isinstance(seeds, int) else "write it as seeds=[0,1,2]",
    )
    require(bool(seeds), "seeds", "is an empty list: no job would run", "give at least one seed, e.g. seeds=[0]")
    for s in seeds:
        require(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0,
            "seeds",
            f"holds {s!r}, not an integer >= 0",
            "write it as seeds=[0,1,2]",
        )
    dup = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    require(dup is None, "seeds", f"lists seed {dup} twice (its jobs would run twice)", "list each seed once")
    return entries, list(seeds)
