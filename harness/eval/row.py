"""The result row, once: what one evaluation writes to ``points.jsonl`` and ``evidence.jsonl``.

``EvalPoint`` is the row (its fields, in this order, are the row's keys and ``points.csv``'s first columns); the
evaluator makes it, the tracker writes it (``harness.runs.tracking``), the report reads it (``harness.report``).
``REQUIRED_KEYS`` every row carries (a row without one is refused); ``OPTIONAL_KEYS`` new rows carry and older ones may
not. Beside each row, one line of ``evidence.jsonl`` holds the same evaluation's per-prompt means, joined to the row on
``evidence_key``. Standard library only: the report reads rows without torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

_OPTIONAL = {"optional": True}  # a row field older rows may lack
_NOT_IN_ROW = {"row": False}  # carried by the point, written elsewhere


@dataclass(kw_only=True)
class EvalPoint:
    """One evaluation = one result row."""

    method: str
    setting: str  # the method's knob(s) that label its points, "beta=0.1,micro_batch_size=8"
    seed: int
    step: int
    kl: float  # mean over samples of Σ_t KL(π_θ(·|s_t) ‖ π_ref(·|s_t)), exact over the vocabulary (nats)
    kl_sem: float
    kl_sample: float | None  # mean of Σ_t log π_θ(y_t|s_t)/π_ref(y_t|s_t) over the same samples
    gold_reward: float
    gold_reward_sem: float
    proxy_reward: float | None  # the learned reward model's mean score where the method has one
    response_tokens: float
    # Seconds since the run started (continuing across the attempts of a resumed run) when the row was written: set by
    # the tracker as it writes the row (``Tracker.log_point``), NaN until then.
    wall_s: float = math.nan
    run_id: str
    truncated_frac: float | None = field(default=None, metadata=_OPTIONAL)  # share of responses cut at max_new_tokens
    # Training compute spent before this evaluation (the report's compute axis): tokens sampled during training,
    # tokens through a forward+backward pass of a trained model (policy, and PPO's critic), training seconds
    # (evaluations excluded).
    compute_tokens_generated: int = field(default=0, metadata=_OPTIONAL)
    compute_tokens_trained: int = field(default=0, metadata=_OPTIONAL)
    compute_wall_s: float = field(default=0.0, metadata=_OPTIONAL)
    eval_s: float | None = field(default=None, metadata=_OPTIONAL)  # seconds this evaluation itself took
    # The job's cost so far (harness/lm/memory.py): training seconds per optimizer step (compute_wall_s / step; None at
    # step 0), its peak memory in MiB and what that peak is (resident: the process's resident memory on the CPU since
    # the job started; device: GPU memory allocated; process: the process's lifetime peak), and the transformers
    # models it holds at this evaluation with their parameters (policy, reference, critic, reward model, ...).
    step_s: float | None = field(default=None, metadata=_OPTIONAL)
    peak_memory_mb: float | None = field(default=None, metadata=_OPTIONAL)
    peak_memory_kind: str | None = field(default=None, metadata=_OPTIONAL)
    models_held: int | None = field(default=None, metadata=_OPTIONAL)
    model_parameters: int | None = field(default=None, metadata=_OPTIONAL)
    # per-prompt means (``harness.eval.evaluator.prompt_evidence``): the evidence.jsonl line, not the row
    evidence: dict | None = field(default=None, repr=False, metadata=_NOT_IN_ROW)

    def row(self) -> dict:
        """The result row (points.jsonl); the per-prompt evidence goes to its own file."""
        out = asdict(self)
        for name in NOT_ROW_FIELDS:
            del out[name]
        return out


# The row keys that measure the machine and the moment (seconds, memory), not the result: two runs of one job (one
# resumed, one not) agree on every other key.
MEASURED_KEYS = frozenset({"wall_s", "compute_wall_s", "eval_s", "step_s", "peak_memory_mb"})

NOT_ROW_FIELDS = tuple(f.name for f in fields(EvalPoint) if not f.metadata.get("row", True))
ROW_KEYS = tuple(f.name for f in fields(EvalPoint) if f.name not in NOT_ROW_FIELDS)  # every key of a new row
REQUIRED_KEYS = tuple(f.name for f in fields(EvalPoint) if f.name in ROW_KEYS and not f.metadata.get("optional"))
OPTIONAL_KEYS = tuple(k for k in ROW_KEYS if k not in REQUIRED_KEYS)

# One line of evidence.jsonl per row: the row's fields that name the evaluation (EVIDENCE_JOIN), the hash of the
# evaluation prompts, and per-prompt means (index p = the p-th evaluation prompt of the sweep).
EVIDENCE_JOIN = ("run_id", "method", "setting", "seed", "step")
EVIDENCE_ARRAYS = ("gold", "kl", "truncated")
EVIDENCE_KEYS = (*EVIDENCE_JOIN, "prompts_key", *EVIDENCE_ARRAYS)


def evidence_record(row: dict, evidence: dict) -> dict:
    """The evidence.jsonl line of ``row``: its join fields, then ``evidence`` (prompts_key and the per-prompt means)."""
    return {**{k: row[k] for k in EVIDENCE_JOIN}, **evidence}


def evidence_key(rec: dict) -> tuple[str, str, str, str, int]:
    """The join key of a row and its evidence (both carry these fields): ``(run_id, method, seed, setting, step)``.

    Method and seed are in it although a run id should name one run: when run ids once collided (every run
    called "updates.jsonl"), PPO-GT's rows joined PPO's evidence at the same setting and step without a word."""
    return str(rec["run_id"]), str(rec["method"]), str(rec["seed"]), str(rec["setting"] or ""), int(rec["step"])
