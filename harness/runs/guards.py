"""Numerical guards: a training quantity that turns NaN or infinite stops the run at once.

A non-finite loss, reward, advantage, value or KL poisons every later update (Adam spreads it into every weight), and
transformers would only average it out of its logs. So the run stops at the first one, before the optimiser step that
would take it in, with a one-line :class:`NonFiniteError` naming the quantity and the step. ``python -m harness``
prints that line and exits with status :data:`EXIT_STATUS` (3; bad input is 2). Nothing written before is touched:
the rows so far stay in ``points.jsonl`` and the last checkpoint stays where it is (``harness.runs.checkpoint``), so a fix
(e.g. a lower learning rate) can be tried from there.
"""

from __future__ import annotations

import math

EXIT_STATUS = 3  # python -m harness: 0 done, 2 bad input (nothing trained), 3 a training quantity went non-finite


class NonFiniteError(RuntimeError):
    """A training quantity became NaN or infinite; the message is one line naming it and the step."""


def _first_bad(value) -> float | None:
    """The first non-finite element of ``value`` (a tensor or a number), or None when every element is finite."""
    if hasattr(value, "detach"):  # a tensor (torch is imported here, not with the CLI that reads EXIT_STATUS)
        import torch

        bad = ~torch.isfinite(value.detach())
        return float(value.detach()[bad][0]) if bool(bad.any()) else None
    return None if math.isfinite(float(value)) else float(value)


def check_finite(quantity: str, value, step: int, unit: str = "update") -> None:
    """Raise :class:`NonFiniteError` if any element of ``value`` is NaN or ±inf. ``step`` is the update (or optimizer
    step, ``unit``) that produced it, counted from 1 as the logs count them."""
    bad = _first_bad(value)
    if bad is not None:
        raise NonFiniteError(
            f"{quantity} is {bad} at {unit} {step}; the run stopped there, keeping its rows so far "
            "and its last checkpoint (the same command resumes from it); lower the learning rate or "
            "check the reward"
        )


def check_point(point, step: int, unit: str = "update") -> None:
    """An evaluation (``harness.eval.row.EvalPoint``) before its row is written: a non-finite gold reward or KL
    would poison the frontier report."""
    check_finite("evaluation gold reward", point.gold_reward, step, unit)
    check_finite("evaluation KL", point.kl, step, unit)
