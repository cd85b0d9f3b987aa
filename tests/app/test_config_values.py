"""Every numeric key of every schema is finite and in range, for the class and not the examples: the test walks each
schema's fields (the top level, every section, every method's pipeline schema), so a key added later is covered
without a line here. Validation only (no Hydra composition per case, no preflight): fast."""

from __future__ import annotations

import copy
import dataclasses
import math
import typing

import pytest

from harness.app.jobs import load as validate
from harness.config import SECTION_TYPES, Sections, to_container
from harness.fields import ConfigError
from pipelines.registry import METHODS
from tests.conftest import compose

pytestmark = pytest.mark.battery


@pytest.fixture(scope="module")
def base_raw() -> dict:
    raw = to_container(compose(["experiment=tiny_debug"]))
    raw["cache_dir"] = "/tmp/harness-never-written"
    return raw


def _numeric(cls: type) -> list[str]:
    """The fields of ``cls`` typed int or float (optional or not)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if typing.get_origin(hints[f.name]) is list:  # lists of numbers: checked as lists (test below)
            continue
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        if any(a in (int, float) for a in args):
            out.append(f.name)
    return out


def _where(method: str | None, section: str | None):
    """(schema class, a raw config's changes for the method) of one schema."""
    if method is not None:
        return METHODS[method].schema, {"name": method, **({"policy": "gpt2"} if method == "evaluate" else {})}
    return (SECTION_TYPES[section] if section else Sections), None


ALL_SCHEMAS = [(None, s) for s in SECTION_TYPES] + [(None, None)] + [(m, "pipeline") for m in METHODS]
SCHEMAS = [(m, s) for m, s in ALL_SCHEMAS if _numeric(_where(m, s)[0])]  # those with a numeric key


def _with(raw: dict, method: str | None, section: str | None, name: str, value) -> dict:
    raw = copy.deepcopy(raw)
    _, pipe = _where(method, section)
    if pipe is not None:
        raw["pipeline"] = dict(pipe)
    node = raw if section is None else raw.setdefault(section, {})
    node[name] = value
    return raw


def _refused(raw: dict, key: str) -> str:
    with pytest.raises(ConfigError) as e:
        validate(raw)
    line = str(e.value)
    assert "\n" not in line and line.startswith(key), line
    return line


@pytest.mark.parametrize("method, section", SCHEMAS, ids=[m or s or "top" for m, s in SCHEMAS])
def test_every_numeric_key_refuses_nan_and_infinity(base_raw, method, section):
    cls, _ = _where(method, section)
    names = [n for n in _numeric(cls) if not (section is None and n in SECTION_TYPES)]
    assert names
    for name in names:
        key = f"{section}.{name}" if section else name
        for bad in (math.nan, math.inf, -math.inf):
            line = _refused(_with(base_raw, method, section, name, bad), key)
            assert "finite" in line, line


# Keys checked for range since issue 25 (before, any number passed): the smallest value out of range for each.
OUT_OF_RANGE = {
    "seed": (None, None, "seed", -1),
    "task.seed": (None, "task", "seed", -1),
    "eval.seed": (None, "eval", "seed", -1),
    "sft.warmup_ratio": (None, "sft", "warmup_ratio", 1.0),
    "sft.warmup_ratio negative": (None, "sft", "warmup_ratio", -0.1),
    "reward_model.center_rewards_coefficient": (None, "reward_model", "center_rewards_coefficient", -0.01),
    "ppo missing_eos_penalty": ("ppo", "pipeline", "missing_eos_penalty", -1.0),
    "ppo_gt missing_eos_penalty": ("ppo_gt", "pipeline", "missing_eos_penalty", -1.0),
    "sft show_samples": ("sft", "pipeline", "show_samples", -1),
}


@pytest.mark.parametrize("method, section, name, value", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_keys_once_unchecked_are_checked_for_range(base_raw, method, section, name, value):
    _refused(_with(base_raw, method, section, name, value), f"{section}.{name}" if section else name)


# Negative numbers that mean something, documented at their key: the one exception the walk below allows.
NEGATIVE_MEANS_SOMETHING = {"max_steps"}  # <= 0: train for `epochs` instead


@pytest.mark.parametrize("method, section", SCHEMAS, ids=[m or s or "top" for m, s in SCHEMAS])
def test_every_numeric_key_refuses_a_large_negative_number(base_raw, method, section):
    """No count, rate, length, weight or seed of the harness is -10^9: a key that takes it has no range check."""
    cls, _ = _where(method, section)
    for name in _numeric(cls):
        if (section is None and name in SECTION_TYPES) or name in NEGATIVE_MEANS_SOMETHING:
            continue
        _refused(_with(base_raw, method, section, name, -(10**9)), f"{section}.{name}" if section else name)


@pytest.mark.parametrize(
    "section, name",
    [("", "cache_dir"), ("", "device"), ("", "precision"), ("model", "name"), ("task", "text_column")]
    + [("gold", "label"), ("logger", "project"), ("logger", "entity"), ("logger", "group"), ("model", "dtype")],
)
def test_an_empty_or_blank_string_is_refused(base_raw, section, name):
    for blank in ("", "   "):
        raw = copy.deepcopy(base_raw)
        (raw.setdefault(section, {}) if section else raw)[name] = blank
        line = _refused(raw, f"{section}.{name}" if section else name)
        assert "empty" in line or "unknown" in line, line


def test_an_empty_list_or_a_non_finite_item_is_refused(base_raw):
    assert "empty" in _refused(_with(base_raw, "best_of_n", "pipeline", "ns", []), "pipeline.ns")
    assert "finite" in _refused(_with(base_raw, "best_of_n", "pipeline", "ns", [1, math.inf]), "pipeline.ns[1]")


def test_the_walk_sees_the_schemas_it_should():
    """The walk is not vacuous: the sections, the top level and most methods have numeric keys."""
    assert len(SCHEMAS) >= len(SECTION_TYPES) - 1 + 1 + len(METHODS) - 3
