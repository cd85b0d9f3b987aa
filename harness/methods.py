"""What the library needs to know about a method, as one record: the shape of an entry of the method registry.

The records themselves live in ``pipelines/registry.py``, the one list of methods. The library (everything under
``harness/`` but the composition root ``harness/app/``) never names a method: it reads these fields from the record a
validated config carries (``HarnessConfig.method``) or from the mapping the composition root hands the report.
Light on purpose: no torch, no trainer, so a whole sweep's configs validate before any of them is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# How deep into the stage cache a method reaches: 1 π_SFT, 2 + the preference set, 3 + the reward model.
SFT, PREFERENCES, REWARD_MODEL = 1, 2, 3
# Families the report pools into one curve each (the online-vs-offline comparison, Tang et al. 2024). "reference": the
# reference policy itself, one point at KL 0 that no curve or comparison treats as a method.
FAMILIES = ("online", "offline", "reference")
# The Gao et al. (2022) scaling-law form a method's points are fitted with: RL (α√d − βd) or best-of-n (√d(α − β√d)).
GAO_FORMS = ("rl", "bon")
DEFAULT_STYLE = ("#7F7F7F", "o")  # a method registered without a colour and marker (e.g. a new one) still draws


def no_split(hc: Any) -> list[tuple[int, str]]:
    return []


@dataclass(frozen=True)
class Method:
    """One method (or stage) that ``pipeline=<name>`` runs."""

    name: str
    schema: type  # the pipeline's config dataclass (``pipelines/schemas.py``), built with name=<name>
    runner: str  # "module:function", imported only when a job of this method runs
    stages: int = SFT  # the deepest cached stage the method stands on (SFT, PREFERENCES or REWARD_MODEL)
    label: str = ""  # its name in legends and tables ("PPO (learned RM)"); empty: the name
    color: str | None = None
    marker: str | None = None
    family: str | None = None  # online | offline | reference | None (in no family)
    knobs: tuple[str, ...] = ()  # the pipeline keys whose values label the method's points ("beta=0.1")
    labelled_budget_keys: tuple[str, ...] = ()  # budget keys (runs.context.NOT_A_SETTING) that label its points too
    saves_policy: bool = False  # writes a model-sized policy checkpoint (the free-space check counts it)
    rollout_prompts: bool = False  # pipeline.batch_size counts training prompts per rollout (checked against a file's)
    takes_policy: bool = False  # reads the top-level ``policy=`` (a checkpoint trained elsewhere)
    gao_form: str = "rl"  # GAO_FORMS
    # (value, key) of every batch the method splits across processes under ``accelerate launch`` / ``torchrun``,
    # besides π_SFT's (every job may train it): each must divide by the number of processes.
    process_batches: Callable[[Any], list[tuple[int, str]]] = field(default=no_split, compare=False)

    def __post_init__(self) -> None:
        assert self.family is None or self.family in FAMILIES, self.family
        assert self.gao_form in GAO_FORMS, self.gao_form
        assert self.stages in (SFT, PREFERENCES, REWARD_MODEL), self.stages

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def style(self) -> tuple[str, str, str]:
        """(label, colour, marker) for plots."""
        color, marker = DEFAULT_STYLE
        return self.display, self.color or color, self.marker or marker

    def run(self, ctx: Any) -> dict:
        module, fn = self.runner.split(":")
        return getattr(importlib.import_module(module), fn)(ctx)

    def setting(self, pipeline: Any) -> str:
        """The method's own knob(s) as "beta=0.1" (the schema may add its own parts, e.g. PPO's ingredients)."""
        return pipeline.setting(self.knobs)


def lookup(methods: Mapping[str, Method], name: str) -> Method:
    """The record of ``name``; an unknown one is a one-line ConfigError that lists the known."""
    from harness.fields import ConfigError

    if name not in methods:
        raise ConfigError(f"pipeline.name: unknown pipeline '{name}'; choose one of {', '.join(methods)}")
    return methods[name]


def in_family(methods: Mapping[str, Method], family: str) -> tuple[str, ...]:
    return tuple(m.name for m in methods.values() if m.family == family)


def style_of(methods: Mapping[str, Method], name: str) -> tuple[str, str, str]:
    """(label, colour, marker) of ``name``; one the registry does not know (rows of an old sweep) gets the default."""
    return methods[name].style if name in methods else (name, *DEFAULT_STYLE)
