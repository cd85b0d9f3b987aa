"""The lowest floor: the configuration error every check raises, the range checks the schemas share, and the constants
every stage and method agrees on (``MAX_NEW_TOKENS``, ``MICRO_BATCH_SIZE``). Imports nothing of the harness."""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing or invalid. The message is one line: key, problem, fix."""


def require(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}; {fix}")


def positive(obj: Any, prefix: str, *names: str) -> None:
    """Each of ``names`` a finite number > 0 (``inf > 0`` holds, but no count, rate or length is infinite)."""
    for n in names:
        v = getattr(obj, n)
        require(
            v is not None and v > 0 and math.isfinite(v),
            f"{prefix}.{n}",
            f"must be > 0 and finite (got {v})",
            f"set {prefix}.{n}=<positive number>",
        )


def at_least_zero(obj: Any, prefix: str, *names: str) -> None:
    """Each of ``names`` a finite number >= 0 (None passes: an optional knob left unset)."""
    for n in names:
        v = getattr(obj, n)
        require(
            v is None or (v >= 0 and math.isfinite(v)),
            f"{prefix}.{n}" if prefix else n,
            f"must be >= 0 and finite (got {v})",
            f"set {prefix + '.' if prefix else ''}{n} to 0 or more",
        )


HUGE = 2**63  # the first magnitude a 64-bit integer (torch, numpy, every step counter) cannot hold


def plain_value(key: str, value: Any) -> None:
    """What no config value may be, whatever its key: a non-finite number (``nan`` passes every range check written
    as ``not v < 0``, ``inf`` every ``v > 0``; no knob of the harness means "infinitely many"), an empty or blank
    string (a name, path or label that was meant to be given: an empty ``cache_dir`` would build stages into the
    current folder), an empty list (a list of settings with no setting), or a number a 64-bit integer cannot hold
    (a job that would never end, a counter that overflows). Lists are checked item by item."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number (got {value}); give it a finite value")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= HUGE:
        raise ConfigError(
            f"{key}: {value} is beyond what a 64-bit integer holds; no setting of the harness is that large (a job "
            "would never end, or overflow where it counts); give a smaller value"
        )
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{key}: is empty; give it a value, or drop it to take its default")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{key}: is an empty list; give it at least one value, or drop it to take its default")
        for i, item in enumerate(value):
            plain_value(f"{key}[{i}]", item)


def micro_batches(batch_size: int, micro_batch_size: int, key: str) -> int:
    """How many micro-batches make one batch (the gradient-accumulation steps); ``micro_batch_size`` 0 = no split."""
    if micro_batch_size < 0:
        raise ConfigError(
            f"{key}: must be >= 0 (got {micro_batch_size}); set a divisor of the batch size, or 0 for no split"
        )
    if micro_batch_size == 0 or micro_batch_size >= batch_size:
        return 1
    if batch_size % micro_batch_size:
        raise ConfigError(
            f"{key}: {micro_batch_size} does not divide the batch size {batch_size}; pick a divisor "
            "(equal micro-batches keep the update the batch's own) or 0 for no split"
        )
    return batch_size // micro_batch_size


def in_unit(obj: Any, prefix: str, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        require(0.0 <= v <= 1.0, f"{prefix}.{n}", f"must lie in [0, 1] (got {v})", f"set {prefix}.{n} between 0 and 1")


# A field that says how a job may run, not what it computes: left out of stage and job identities, so turning it on
# does not rebuild a cached stage or re-run a finished job.
NOT_IDENTITY = {"identity": False}
# A field added after jobs and stages had keys: part of the identity only when set (not None), so every key made
# before it existed still holds (a finished run is still found, a cached stage still reused).
IDENTITY_WHEN_SET = {"identity": "when set"}


def out_of_identity(f, value) -> bool:
    """Whether the dataclass field ``f`` holding ``value`` is left out of a stage's or a job's identity."""
    mark = f.metadata.get("identity")
    return mark is False or (mark == "when set" and value is None)


# Tokens sampled per response, the same for the preference set, PPO's rollouts and the evaluator: every method is
# judged on responses of the same maximum length. 32 lets π_SFT finish > 95% of its samples on the embedded task.
MAX_NEW_TOKENS = 32


# Examples (reviews, or pairs) per length-sorted micro-batch, the default of every trainer's ``micro_batch_size``
# (harness/lm/batching.py: the same update as the whole batch). 0: none. Micro-batches were the default (16) while
# batches ran padded: they cut the padding (a forward+backward of 64 reviews 0.43 s whole, 0.25 s in micro-batches of
# 16). The trainers now run packed sequences (harness/lm/packing.py), which leave no padding to cut, and one larger
# product per layer is faster than several small ones: π_SFT's training 42.7 s -> 31.9 s on 2 threads, the reward
# model's 61.9 s -> 58.4 s and a DPO job's 12.0-13.3 s -> 11.5-11.8 s on 1 (AMD EPYC, commit e9a1018). A model too
# large for a whole batch in memory sets its own (conf/shared/real_model.yaml: 16).
MICRO_BATCH_SIZE = 0
