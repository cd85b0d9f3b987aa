"""Result rows as the report groups them, and each method's name and look, read from the method registry's records.

The report never names a method: its callers (the composition root, ``harness/app``) pass the registry's records
(``methods: Mapping[str, Method]``). A method the mapping does not know (a toy method, rows of an old sweep) still
gets its own name and the default style (``harness.methods.style_of``), and is shown after the known ones.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from harness.methods import Method, in_family, style_of

REFERENCE = "reference"  # the family of the reference policy itself: one point at KL 0, no curve, never a rival


def method_label(method: str, methods: Mapping[str, Method]) -> str:
    """Readable name of a method for legends and tables (its record's label; an unknown method: its name)."""
    return style_of(methods, method)[0]


def method_style(method: str, methods: Mapping[str, Method]) -> tuple[str, str]:
    """(colour, marker) of a method; one the registry does not know gets ``harness.methods.DEFAULT_STYLE``."""
    return style_of(methods, method)[1:]


def ordered_methods(names: Iterable[str], methods: Mapping[str, Method]) -> list[str]:
    """Methods in the registry's order (the order of ``methods``), unknown ones after, alphabetically."""
    known = list(methods)
    return sorted(set(names), key=lambda m: (known.index(m) if m in known else len(known), m))


def reference_methods(methods: Mapping[str, Method]) -> tuple[str, ...]:
    """The methods that are the reference policy itself (family "reference"): a single point at KL 0."""
    return in_family(methods, REFERENCE)


def gao_form(method: str, methods: Mapping[str, Method]) -> str:
    """The Gao et al. law a method's points are fitted with ("rl" or "bon"); "rl" for a method the registry does
    not know."""
    return methods[method].gao_form if method in methods else "rl"


def group_by(rows: Iterable[dict], *keys: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]].append(r)
    return groups


def finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def parse_setting(setting: str) -> dict[str, str]:
    """``"cliprange=0.2,cliprange_value=0.2"`` -> ``{"cliprange": "0.2", "cliprange_value": "0.2"}``."""
    knobs = {}
    for part in (setting or "").split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            knobs[name.strip()] = value.strip()
    return knobs


def final_points(rows: Sequence[dict]) -> list[dict]:
    """The last evaluation (highest step) of every run; a run is a (run_id, setting, seed) triple, so that
    Best-of-N's one-row-per-N (all at step 0) counts each N as its own run."""
    last = {}
    for r in rows:
        key = (r["run_id"], r["setting"], r["seed"], r["method"])
        if key not in last or r["step"] >= last[key]["step"]:
            last[key] = r
    return list(last.values())


def training_tokens(row: dict) -> float:
    """Training tokens spent so far (generated + trained) of a row; NaN when the row has no compute fields."""
    gen, trained = row.get("compute_tokens_generated"), row.get("compute_tokens_trained")
    if not (finite(gen) or finite(trained)):
        return float("nan")
    return float(gen if finite(gen) else 0.0) + float(trained if finite(trained) else 0.0)


def has_compute(rows: Sequence[dict]) -> bool:
    """Whether some row carries training-compute fields with a positive token count."""
    return any(training_tokens(r) > 0 for r in rows)
