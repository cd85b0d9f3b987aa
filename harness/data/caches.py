"""The data a job trains on, read once and checked: the task's reviews and prompts (every row, enough held-out prompts)
and a preference file (every pair, prompt lengths against the job's limits). The preflight's read is the read the job
uses (``RunContext.task``, the preference stage), remembered per identity for the job that asks next."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from harness.config import HarnessConfig, TaskConfig
from harness.data.hub import (
    _hub_cache,
    _hub_name,
    _hub_offline,
    _looks_like_path,
    _probe_hub,
    find_base,
    positions,
)
from harness.fields import ConfigError

# --------------------------------------------------------------------------------------------------------- data
_TASKS: dict[str, Any] = {}  # checked task data by identity: the check's load is the load the job trains on


_TASKS_KEPT = 4


def _task_key(cfg: TaskConfig) -> str:
    """The task config plus the data file's size and time, so an edited file is read again."""
    stamp, path = None, Path(cfg.path or "").expanduser()
    if cfg.path and path.exists():
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    return json.dumps([dataclasses.asdict(cfg), stamp], sort_keys=True, default=str)


def check_dataset_source(cfg: TaskConfig) -> None:
    """``task=imdb`` by hub name: in the datasets or hub cache, or on a reachable hub (never a long network wait)."""
    if cfg.name != "imdb":
        return
    name = cfg.path or "stanfordnlp/imdb"
    if Path(name).expanduser().exists():
        return
    if _looks_like_path(name):
        raise ConfigError(
            f"task.path: folder '{name}' does not exist; give a folder written by save_to_disk or a hub dataset name"
        )
    _hub_name(name, "task.path")
    import datasets

    cached = [
        Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___"),
        Path(_hub_cache()) / ("datasets--" + name.replace("/", "--")),
    ]
    if any(p.exists() for p in cached):
        return
    if _hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise ConfigError(
            f"task.path: dataset '{name}' is not on this machine and the hub is off (HF_HUB_OFFLINE=1); "
            "save it with save_to_disk where the hub is reachable and set task.path=/path/to/that/folder"
        )
    _probe_hub(name, "task.path", "dataset")


def task_data(cfg: TaskConfig):
    """``load_task(cfg)``, checked (every row, enough reviews, enough distinct held-out prompts) and remembered for
    the job that asks next; each caller gets its own lists."""
    from harness.data.tasks import TaskData, load_task

    key = _task_key(cfg)
    if key not in _TASKS:
        check_dataset_source(cfg)
        while len(_TASKS) >= _TASKS_KEPT:
            _TASKS.pop(next(iter(_TASKS)))
        _TASKS[key] = load_task(cfg)
    d = _TASKS[key]
    return TaskData(list(d.train_texts), list(d.heldout_texts), list(d.train_prompts), list(d.eval_prompts))


# ---------------------------------------------------------------------------------------------- preference file
_PREFERENCE_FILES: dict[str, Any] = {}  # checked preference files by what determines them (see preference_file)


_TOKENIZERS: dict[tuple, Any] = {}


def _rendering_tokenizer(hc: HarnessConfig):
    """The policy's tokenizer, whose chat template renders a conversational file (loaded once); None for ``tiny``,
    whose tokenizer is trained by the SFT stage and has no template (conversations get the plain rendering)."""
    if hc.model.name == "tiny":
        return None
    from harness.lm.models import load_tokenizer

    key = (hc.model.name, hc.model.trust_remote_code)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(hc.model)
    return _TOKENIZERS[key]


def preference_file(hc: HarnessConfig):
    """The checked, rendered and split ``preferences.path`` (``harness.data.preference_file``), read once per job: the
    preflight's read is the one the preference stage stores."""
    from harness.data.preference_file import content_hash, load_preference_file

    p = hc.preferences
    key = json.dumps([content_hash(p.path), p.eval_fraction, hc.task.seed, hc.model.name])
    if key not in _PREFERENCE_FILES:
        while len(_PREFERENCE_FILES) >= _TASKS_KEPT:
            _PREFERENCE_FILES.pop(next(iter(_PREFERENCE_FILES)))
        _PREFERENCE_FILES[key] = load_preference_file(p.path, _rendering_tokenizer(hc), p.eval_fraction, hc.task.seed)
    return _PREFERENCE_FILES[key]


def prompt_limits(hc: HarnessConfig, n_pos: int) -> list[tuple[str, int, str]]:
    """(key, the most prompt tokens it allows, why) for the prompts of a preference file: each trainer's
    ``max_length`` must leave a completion token, and a sampled prompt must leave its new tokens the model's
    positions."""
    depth, pipe = hc.method.stages, hc.pipeline
    limits = []
    if isinstance(getattr(pipe, "max_length", None), int) and depth >= 2:
        limits.append(
            (
                "pipeline.max_length",
                pipe.max_length - 1,
                f"pipeline.max_length={pipe.max_length} must leave room for a completion",
            )
        )
    if depth >= 3:
        limits.append(
            (
                "reward_model.max_length",
                hc.reward_model.max_length - 1,
                f"reward_model.max_length={hc.reward_model.max_length} must leave room for a completion",
            )
        )
    sampled = [("eval.max_new_tokens", hc.eval.max_new_tokens)]
    if depth >= 2:  # the preference stage samples π_SFT on the file's prompts (the reward model's normalisation)
        sampled.append(("preferences.max_new_tokens", hc.preferences.max_new_tokens))
    if isinstance(getattr(pipe, "max_new_tokens", None), int):
        sampled.append(("pipeline.max_new_tokens", pipe.max_new_tokens))
    key, new = max(sampled, key=lambda kv: kv[1])
    limits.append((key, n_pos - new, f"the model's {n_pos} positions must hold it and {key}={new} sampled tokens"))
    return limits


def check_preference_file(hc: HarnessConfig, pf) -> None:
    """No prompt of the file is too long for the job (:func:`prompt_limits`). Counted in the model's tokens where its
    tokenizer is at hand; for ``tiny`` (tokenizer trained by SFT) in whitespace words, a lower bound on its byte-level
    BPE tokens (every word is at least one token), so the check never stops a job that would have run."""
    tok = _rendering_tokenizer(hc)
    if tok is None:
        n_pos, unit = hc.model.n_positions, "words (so at least as many tokens)"
        lengths = [len(p.split()) for p in pf.prompt]
    else:
        pre = find_base(hc.model)
        n_pos = (positions(pre.config) if pre is not None else None) or 10**9
        lengths, unit = [len(ids) for ids in tok(pf.prompt, add_special_tokens=False)["input_ids"]], "tokens"
    for key, allowed, why in prompt_limits(hc, n_pos):
        row = next((i for i, n in enumerate(lengths) if n > allowed), None)
        if row is not None:
            raise ConfigError(
                f"preferences.path: '{pf.path}' {pf.places[row]} column 'prompt' has {lengths[row]} "
                f"{unit}, more than the {max(allowed, 0)} allowed ({why}); shorten or drop that row, or "
                f"raise {key}"
            )


def with_file_prompts(hc: HarnessConfig, data):
    """``data`` with its training and evaluation prompts taken from the preference file (``preferences.source=file``):
    PPO's rollouts on the file's training prompts, the evaluator on its held-out ones (or on the task's, less any
    that the file trains on, with ``preferences.eval_prompts=task``). The SFT corpus stays the task's."""
    from harness.data.tasks import TaskData, check_heldout

    pf = preference_file(hc)
    check_preference_file(hc, pf)
    train = pf.train_prompts[: hc.task.n_train_prompts]
    if hc.preferences.eval_prompts == "file":
        evals = pf.heldout_prompts[: hc.task.n_eval_prompts]
        if len(evals) < hc.task.n_eval_prompts:
            logging.getLogger("harness").warning(
                "'%s' holds out %d prompts, fewer than task.n_eval_prompts=%d: the evaluator uses those %d (raise "
                "preferences.eval_fraction for more)",
                pf.path,
                len(evals),
                hc.task.n_eval_prompts,
                len(evals),
            )
    else:
        trained = set(pf.train_prompts)
        evals = [p for p in data.eval_prompts if p not in trained]
        if not evals:
            raise ConfigError(
                "preferences.eval_prompts: every evaluation prompt of the task is a training prompt of "
                "the file; use preferences.eval_prompts=file"
            )
    rollouts = hc.pipeline.batch_size if hc.method.rollout_prompts else 0
    if rollouts > len(train):
        raise ConfigError(
            f"pipeline.batch_size: {rollouts} prompts per rollout, but '{pf.path}' gives {len(train)} "
            f"training prompts; set pipeline.batch_size<={len(train)} or give more prompts"
        )
    out = TaskData(list(data.train_texts), list(data.heldout_texts), list(train), list(evals))
    check_heldout(out)
    return out
