"""Reading a sweep: every ``points.jsonl`` (result rows) and ``evidence.jsonl`` (their per-prompt means) below a folder.

The row and the evidence line are defined once, in ``harness.eval.row``. A last line a kill cut short (no newline,
not JSON) is skipped: the run was stopped while writing it, and a resumed run writes it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from harness.eval.row import EVIDENCE_ARRAYS, EVIDENCE_KEYS, REQUIRED_KEYS, evidence_key
from harness.runs.folder import REPLACED

log = logging.getLogger(__name__)


def load_points(folder: str | Path) -> list[dict]:
    """Read every result row under ``folder``.

    Args:
        folder: a sweep (or run) folder; every ``points.jsonl`` below it, at any depth, is read in sorted
            path order.

    Returns:
        The rows as dicts, in file order.  Blank lines are skipped.  A row repeated verbatim (the same run
        reached through two files, e.g. a copied run folder) is kept once, so that nothing is counted twice.
        An empty list when there is no ``points.jsonl``.

    Raises:
        ValueError: one line, ``<file>:<line>: ...``, for a line that is not a JSON object or lacks one of
            ``harness.eval.row.REQUIRED_KEYS`` (the missing keys are named).
    """
    rows, seen = [], set()
    for _, row in json_lines(folder, "points.jsonl", REQUIRED_KEYS):
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def json_lines(folder: str | Path, name: str, required: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """Yield ``("<file>:<line>", object)`` for every non-blank line of every file ``name`` under ``folder`` (any
    depth, sorted path order); a line that is not a JSON object or lacks a ``required`` key is a one-line
    ValueError naming the file and line, but for a file's last line when a kill cut it short (no newline and not
    JSON): that one is skipped, with a warning."""
    for path in sorted(Path(folder).rglob(name)):
        if any(part.startswith(REPLACED) for part in path.relative_to(folder).parts):
            continue  # a run moved aside by overwrite=true (harness.runs.folder): kept, but no longer the job's
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.readlines()
        except UnicodeDecodeError as e:  # a ValueError too: name the file, as for a bad line
            line = path.read_bytes()[: e.start].count(b"\n") + 1
            raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start : e.start + 1]!r})") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if lineno == len(lines) and not line.endswith("\n"):
                    log.warning("%s: skipped a cut last line (its run was stopped while writing it)", where)
                    continue
                raise ValueError(f"{where}: bad JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise ValueError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
            yield where, obj


def load_evidence(folder: str | Path) -> dict[tuple[str, str, str, str, int], dict]:
    """Read every ``evidence.jsonl`` under ``folder`` (any depth, sorted path order).

    Each line is one evaluation: ``{"run_id", "method", "setting", "seed", "step", "prompts_key", "gold": [P],
    "kl": [P], "truncated": [P]}``, index p being the p-th evaluation prompt of the sweep.

    Returns:
        ``{evidence_key: record}`` with ``gold``, ``kl``, ``truncated`` as float arrays (P,); a record repeated
        verbatim (a copied run folder) is kept once.  Empty when there is no evidence.

    Raises:
        ValueError: one line, ``<file>:<line>: ...``, for a line that is not a JSON object, lacks a key, has
            lists of different lengths or non-numbers; or when runs were evaluated on different prompts
            (different ``prompts_key`` or prompt counts); or when two different records share a key (two runs
            with one id: their rows could not be told apart).
    """
    out: dict[tuple[str, str, str, str, int], dict] = {}
    origin: dict[tuple[str, str, str, str, int], str] = {}
    first = None  # (prompts_key, P, where) of the first record
    for where, rec in json_lines(folder, "evidence.jsonl", EVIDENCE_KEYS):
        arrays = {}
        for k in EVIDENCE_ARRAYS:
            v = rec[k]
            if (
                not isinstance(v, list)
                or not v
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            ):
                raise ValueError(f"{where}: {k!r} must be a non-empty list of numbers")
            arrays[k] = np.asarray(v, dtype=float)
        sizes = {k: a.size for k, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{where}: gold, kl, truncated have different lengths {sizes}")
        n = arrays["gold"].size
        if first is None:
            first = (rec["prompts_key"], n, where)
        elif (rec["prompts_key"], n) != first[:2]:
            raise ValueError(
                f"{where}: the runs were evaluated on different prompts (prompts_key "
                f"{rec['prompts_key']!r}, {n} prompts; {first[2]} has {first[0]!r}, "
                f"{first[1]} prompts)"
            )
        try:
            key = evidence_key(rec)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: step must be an integer, got {rec['step']!r}") from None
        if key not in out:
            out[key], origin[key] = {**rec, **arrays}, where
        elif not all(np.array_equal(out[key][k], arrays[k]) for k in arrays):
            raise ValueError(
                f"{where}: run {key[0]!r} ({key[1]}, seed {key[2]}, {key[3] or 'no setting'}, step {key[4]}) "
                f"already has different evidence in {origin[key]}: two runs share one run_id"
            )
    return out
