"""Checks before work: everything a job needs is looked at before its first stage trains.

``preflight(hc)`` runs on a validated config (``harness.config.validate`` has checked every value on its own) and
checks what needs the world around it: the device, folders that must be writable, the model, tokenizer and gold
classifier (found without downloading and without waiting on a network), lengths against the model's positions,
and the data (every row of a user's file; enough reviews and prompts; every pair of a preference file). Each failure
is a one-line :class:`ConfigError` that names the key (or the file, row and column) and the fix.

``user_error(exc)`` turns the errors a user causes (ours, Hydra's composition errors, a folder that cannot be
written) into that one line, and returns None for anything else: a bug keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.config import ConfigError, HarnessConfig, TaskConfig, identity_of

# How deep into the stage cache a pipeline reaches: 1 π_SFT, 2 + the preference set, 3 + the reward model.
STAGE_DEPTH = {"sft": 1, "ppo_gt": 1, "preferences": 2, "dpo": 2, "ipo": 2, "cdpo": 2, "unlikelihood": 2,
               "preferred_ft": 2, "reward_model": 3, "ppo": 3, "best_of_n": 3,
               "rloo": 3, "grpo": 3, "rloo_gt": 1, "grpo_gt": 1, "kto": 2, "online_dpo": 3, "evaluate": 1}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
HUB_PROBE_S = 5.0  # the longest a check waits on the hub; an answer that has not come by then counts as unreachable
FREE_MARGIN = 64 * 2**20  # bytes a job writes besides model weights (tokenizer, preference set, logs)
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


# ---------------------------------------------------------------------------------------------- the machine
def check_device(name: str, here: bool = True) -> None:
    """``device`` names a device this machine has. ``here=False`` (a launcher that runs jobs elsewhere, e.g. on a
    cluster's GPU nodes) leaves the question to the job: the syntax was checked by ``validate``."""
    if not here or name in ("auto", "cpu"):
        return
    import torch

    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if count == 0:
            raise ConfigError(f"device: '{name}' asked for, but torch sees no CUDA GPU on this machine; use device=cpu "
                              "or device=auto")
        if index >= count:
            raise ConfigError(f"device: '{name}' asked for, but this machine has {count} CUDA GPU(s) (cuda:0..cuda:"
                              f"{count - 1}); pick one of them")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' asked for, but torch sees no Apple GPU on this machine; use device=cpu or auto")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | Path, key: str) -> Path:
    """``path`` is (or can become) a folder this process can write. Creates nothing that stays: the probe is a
    temporary file in the deepest folder that exists. Returns that folder."""
    target = Path(path).expanduser().absolute()
    folder = _existing_ancestor(target)
    if not folder.is_dir():
        raise ConfigError(f"{key}: '{path}' cannot be a folder: '{folder}' is a file; set {key} to a folder you can write")
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}: cannot write in '{folder}' ({e.strerror}); set {key} to a folder you can write") from None
    return folder


def check_free_space(path: str | Path, need: int, key: str) -> None:
    """At least ``need`` bytes free where ``path`` will be written: a full disk stops the job now, not when the
    first stage saves its model."""
    folder = _existing_ancestor(Path(path).expanduser().absolute())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ConfigError(f"{key}: {free / 2**20:.0f} MiB free in '{folder}', this job writes about {need / 2**20:.0f} "
                          f"MiB (model weights and stage data); free some space or set {key} elsewhere")


# -------------------------------------------------------------------------------------------- models on disk / hub
@dataclass
class Pretrained:
    """What a model folder says about itself, read without loading it."""

    config: dict
    weight_bytes: int | None  # None: not on this machine (the hub will serve it)


def _hub_offline() -> bool:
    # Read at call time: the variables may be set after huggingface_hub was imported (a test, a launcher).
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _looks_like_path(name: str) -> bool:
    """A name a user meant as a folder: absolute, relative with ./ or ../, home-relative, or deeper than org/name."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _read_folder(folder: Path, name: str, key: str, tokenizer: bool = True) -> Pretrained:
    """config.json, tokenizer files and weights of a saved model folder."""
    if not folder.is_dir():
        raise ConfigError(f"{key}: '{name}' is a file, not a model folder; give the folder that holds config.json")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{key}: '{name}' has no config.json, so it is not a saved model; give a folder written by "
                          "save_pretrained, or a hub name")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: '{cfg_file}' is not valid JSON ({str(e).splitlines()[0]}); re-save the model") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{key}: '{cfg_file}' holds a JSON {type(config).__name__}, not a model config; re-save the model")
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{key}: '{name}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
                          "beside the model with tokenizer.save_pretrained(folder)")
    weights = [f for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    if not weights:
        raise ConfigError(f"{key}: '{name}' has no weights (no *.safetensors or *.bin); save the model with "
                          "model.save_pretrained(folder)")
    return Pretrained(config, sum(f.stat().st_size for f in weights))


def _probe_hub(name: str, key: str, repo_type: str) -> None:
    """Ask the hub whether ``name`` exists, waiting at most HUB_PROBE_S (a thread, so that even a DNS lookup that
    hangs does not hold the job). No file is downloaded."""
    outcome: dict[str, Any] = {}

    def ask() -> None:
        from huggingface_hub import HfApi

        try:
            info = HfApi().dataset_info if repo_type == "dataset" else HfApi().model_info
            info(name, timeout=HUB_PROBE_S)
            outcome["ok"] = True
        except Exception as e:  # noqa: BLE001 - every failure is reported below, in one line
            outcome["error"] = e

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(HUB_PROBE_S * 1.5)
    if outcome.get("ok"):
        return
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    err = outcome.get("error")
    if isinstance(err, GatedRepoError):
        raise ConfigError(f"{key}: '{name}' is gated on the hub; accept its licence there and set HF_TOKEN in the "
                          "environment (never in a config)")
    if isinstance(err, RepositoryNotFoundError):
        raise ConfigError(f"{key}: no {repo_type} '{name}' on the hub (or it is private: set HF_TOKEN); check the name "
                          "or give a local folder")
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120] if err is not None else "no answer in time"
    raise ConfigError(f"{key}: cannot reach the hub to find '{name}' ({reason}); give a local folder, or set "
                      "HF_HUB_OFFLINE=1 to use a copy in the hub cache")


def _hub_name(name: str, key: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"{key}: '{name}' is neither an existing folder nor a valid hub name (org/name); fix the "
                          "name or the path") from None


def find_pretrained(name: str, key: str, tokenizer: bool = True) -> Pretrained | None:
    """A model (with its tokenizer) given by local folder or hub name, found without downloading: a folder must hold
    config.json, a tokenizer and weights; a hub name must be in the hub cache, or, with the hub on, exist there.
    Returns None when only the hub has it (nothing on disk to read)."""
    local = Path(name)  # as the loaders read it: from_pretrained does not expand ~
    if local.exists():
        return _read_folder(local, name, key, tokenizer)
    if name.startswith("~"):
        raise ConfigError(f"{key}: '{name}': ~ is not expanded for model folders; give the full path")
    if _looks_like_path(name):
        raise ConfigError(f"{key}: folder '{name}' does not exist; give an existing model folder or a hub name (org/name)")
    _hub_name(name, key)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", cache_dir=_hub_cache())
    if isinstance(cached, str):
        try:
            return _read_folder(Path(cached).parent, name, key, tokenizer)
        except ConfigError:
            if _hub_offline():  # an incomplete copy and no hub to complete it: loading would fail
                raise
    if _hub_offline():
        raise ConfigError(f"{key}: '{name}' is not a local folder and not in the hub cache, and the hub is off "
                          f"(HF_HUB_OFFLINE=1); set {key}=/path/to/a/saved/copy, or fetch it first where the hub is "
                          f"reachable (hf download {name})")
    _probe_hub(name, key, "model")
    return None


def _no_remote_code(pre: Pretrained | None, name: str, key: str, trust: bool) -> None:
    """A model whose config names its own Python classes (``auto_map``) runs that code when loaded: only when asked."""
    if pre is not None and "auto_map" in pre.config and not trust:
        trust_key = key.rsplit(".", 1)[0] + ".trust_remote_code"
        raise ConfigError(f"{key}: '{name}' needs its own Python code to load (config.json has auto_map); set "
                          f"{trust_key}=true only if you trust that code")


def positions(config: dict) -> int | None:
    """The longest sequence a model config allows, under any of the names model families use."""
    found = [config[k] for k in POSITION_KEYS if isinstance(config.get(k), int)]
    return min(found) if found else None


def _tiny_weight_bytes(hc: HarnessConfig) -> int:
    m = hc.model
    params = (m.vocab_size + m.n_positions) * m.n_embd + 12 * m.n_layer * m.n_embd**2
    return 4 * params


def check_model(hc: HarnessConfig) -> int | None:
    """The base model and its tokenizer can be loaded and its positions fit every length the job uses. Returns the
    bytes of its weights (None when unknown)."""
    if hc.model.name == "tiny":
        check_lengths(hc, hc.model.n_positions, "model.n_positions")
        return _tiny_weight_bytes(hc)
    pre = find_pretrained(hc.model.name, "model.name")
    _no_remote_code(pre, hc.model.name, "model.name", hc.model.trust_remote_code)
    n_pos = positions(pre.config) if pre is not None else None
    if n_pos is not None:
        check_lengths(hc, n_pos, f"config.json of {hc.model.name}")
    return pre.weight_bytes if pre is not None else None


def check_gold(hc: HarnessConfig) -> None:
    """A Hugging Face gold classifier or reward model can be found, runs no code of its own unless allowed, has as
    many outputs as its kind says (one for a reward model), and a classifier has ``gold.label``."""
    from harness.gold import gold_kind_mismatch

    g = hc.gold
    if g.kind not in ("hf_classifier", "hf_reward_model"):
        return
    pre = find_pretrained(g.name_or_path, "gold.name_or_path")
    _no_remote_code(pre, g.name_or_path, "gold.name_or_path", g.trust_remote_code)
    labels = [str(v) for v in (pre.config.get("id2label") or {}).values()] if pre is not None else []
    outputs = len(labels) or (pre.config.get("num_labels") if pre is not None else None)
    if outputs and (outputs == 1) != (g.kind == "hf_reward_model"):
        raise ConfigError(gold_kind_mismatch(g.name_or_path, outputs, g.kind))
    if g.kind == "hf_classifier" and labels and g.label not in labels:
        raise ConfigError(f"gold.label: '{g.label}' is not a label of {g.name_or_path} ({', '.join(labels)}); set "
                          "gold.label to one of them")


def check_policy(hc: HarnessConfig) -> int | None:
    """``pipeline=evaluate``: the checkpoint to evaluate can be found (a folder with config.json and weights, or a
    hub name; its tokenizer is optional, π_SFT's is used without one), runs no code of its own unless allowed, and
    has the positions for a prompt plus ``eval.max_new_tokens``. Returns its weight bytes (None when unknown). Its
    vocabulary is checked against π_SFT's once π_SFT exists (``pipelines.evaluate.check_same_vocabulary``)."""
    if hc.pipeline.name != "evaluate":
        return None
    name = hc.pipeline.policy
    pre = find_pretrained(name, "policy", tokenizer=False)
    _no_remote_code(pre, name, "pipeline.policy", hc.pipeline.trust_remote_code)
    n_pos = positions(pre.config) if pre is not None else None
    need = hc.task.prompt_max_tokens + hc.eval.max_new_tokens
    if n_pos is not None and need > n_pos:
        raise ConfigError(f"policy: '{name}' has {n_pos} positions, fewer than prompts of up to "
                          f"{hc.task.prompt_max_tokens} words plus eval.max_new_tokens={hc.eval.max_new_tokens}; lower "
                          "eval.max_new_tokens or task.prompt_max_tokens")
    return pre.weight_bytes if pre is not None else None


def stage_depth(hc: HarnessConfig) -> int:
    return STAGE_DEPTH.get(hc.pipeline.name, 1)


def check_lengths(hc: HarnessConfig, n_pos: int, where: str) -> None:
    """Every training length and every sampled prompt + completion fits the model's ``n_pos`` positions.

    A prompt of up to ``task.prompt_max_tokens`` words has at least that many tokens, so the sampling check is a lower
    bound: it never stops a job that would have run."""
    depth, pipe, words = stage_depth(hc), hc.pipeline, hc.task.prompt_max_tokens
    lengths = [("sft.max_length", hc.sft.max_length)]
    if depth >= 3:
        lengths.append(("reward_model.max_length", hc.reward_model.max_length))
    if isinstance(getattr(pipe, "max_length", None), int):
        lengths.append(("pipeline.max_length", pipe.max_length))
    for key, value in lengths:
        if value > n_pos:
            raise ConfigError(f"{key}: {value} exceeds the model's {n_pos} positions ({where}); set {key}<={n_pos}")
    sampled = [("eval.max_new_tokens", hc.eval.max_new_tokens)]
    if depth >= 2:
        sampled.append(("preferences.max_new_tokens", hc.preferences.max_new_tokens))
    if isinstance(getattr(pipe, "max_new_tokens", None), int):
        sampled.append(("pipeline.max_new_tokens", pipe.max_new_tokens))
    for key, value in sampled:
        if words + value > n_pos:
            raise ConfigError(f"{key}: prompts of up to {words} words plus {value} new tokens need more than the model's "
                              f"{n_pos} positions ({where}); lower {key} or task.prompt_max_tokens")


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
        raise ConfigError(f"task.path: folder '{name}' does not exist; give a folder written by save_to_disk or a hub "
                          "dataset name")
    _hub_name(name, "task.path")
    import datasets

    cached = [Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___"),
              Path(_hub_cache()) / ("datasets--" + name.replace("/", "--"))]
    if any(p.exists() for p in cached):
        return
    if _hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise ConfigError(f"task.path: dataset '{name}' is not on this machine and the hub is off (HF_HUB_OFFLINE=1); "
                          "save it with save_to_disk where the hub is reachable and set task.path=/path/to/that/folder")
    _probe_hub(name, "task.path", "dataset")


def task_data(cfg: TaskConfig):
    """``load_task(cfg)``, checked (every row, enough reviews, enough distinct held-out prompts) and remembered for
    the job that asks next; each caller gets its own lists."""
    from harness.tasks import TaskData, load_task

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
    from harness.models import load_tokenizer

    key = (hc.model.name, hc.model.trust_remote_code)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(hc.model)
    return _TOKENIZERS[key]


def preference_file(hc: HarnessConfig):
    """The checked, rendered and split ``preferences.path`` (``harness.preference_file``), read once per job: the
    preflight's read is the one the preference stage stores."""
    from harness.preference_file import content_hash, load_preference_file

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
    depth, pipe = stage_depth(hc), hc.pipeline
    limits = []
    if isinstance(getattr(pipe, "max_length", None), int) and depth >= 2:
        limits.append(("pipeline.max_length", pipe.max_length - 1, f"pipeline.max_length={pipe.max_length} must leave "
                       "room for a completion"))
    if depth >= 3:
        limits.append(("reward_model.max_length", hc.reward_model.max_length - 1,
                       f"reward_model.max_length={hc.reward_model.max_length} must leave room for a completion"))
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
        pre = find_pretrained(hc.model.name, "model.name")
        n_pos = (positions(pre.config) if pre is not None else None) or 10**9
        lengths, unit = [len(ids) for ids in tok(pf.prompt, add_special_tokens=False)["input_ids"]], "tokens"
    for key, allowed, why in prompt_limits(hc, n_pos):
        row = next((i for i, n in enumerate(lengths) if n > allowed), None)
        if row is not None:
            raise ConfigError(f"preferences.path: '{pf.path}' {pf.places[row]} column 'prompt' has {lengths[row]} "
                              f"{unit}, more than the {max(allowed, 0)} allowed ({why}); shorten or drop that row, or "
                              f"raise {key}")


def with_file_prompts(hc: HarnessConfig, data):
    """``data`` with its training and evaluation prompts taken from the preference file (``preferences.source=file``):
    PPO's rollouts on the file's training prompts, the evaluator on its held-out ones (or on the task's, less any
    that the file trains on, with ``preferences.eval_prompts=task``). The SFT corpus stays the task's."""
    from harness.tasks import TaskData, check_heldout

    pf = preference_file(hc)
    check_preference_file(hc, pf)
    train = pf.train_prompts[: hc.task.n_train_prompts]
    if hc.preferences.eval_prompts == "file":
        evals = pf.heldout_prompts[: hc.task.n_eval_prompts]
        if len(evals) < hc.task.n_eval_prompts:
            logging.getLogger("harness").warning(
                "'%s' holds out %d prompts, fewer than task.n_eval_prompts=%d: the evaluator uses those %d (raise "
                "preferences.eval_fraction for more)", pf.path, len(evals), hc.task.n_eval_prompts, len(evals))
    else:
        trained = set(pf.train_prompts)
        evals = [p for p in data.eval_prompts if p not in trained]
        if not evals:
            raise ConfigError("preferences.eval_prompts: every evaluation prompt of the task is a training prompt of "
                              "the file; use preferences.eval_prompts=file")
    rollouts = getattr(hc.pipeline, "batch_size", 0) if hc.pipeline.name in ("ppo", "ppo_gt", "online_dpo") else 0
    if rollouts > len(train):
        raise ConfigError(f"pipeline.batch_size: {rollouts} prompts per rollout, but '{pf.path}' gives {len(train)} "
                          f"training prompts; set pipeline.batch_size<={len(train)} or give more prompts")
    out = TaskData(list(data.train_texts), list(data.heldout_texts), list(train), list(evals))
    check_heldout(out)
    return out


# ---------------------------------------------------------------------------------------------------- all of it
def models_saved(hc: HarnessConfig) -> int:
    """Model-sized artifacts a job may write: π_SFT, the reward model (and its checkpoint of the policy)."""
    return 1 + (stage_depth(hc) >= 3) + (hc.pipeline.name in ("ppo", "ppo_gt", "dpo", "ipo", "cdpo", "rloo", "grpo",
                                                                      "rloo_gt", "grpo_gt", "kto", "online_dpo"))


def preflight(hc: HarnessConfig, here: bool = True):
    """Every check a job needs before its first stage trains; returns the checked task data. Cheap checks first, the
    data (the slowest) last. ``here``: the job runs on this machine (see ``check_device``)."""
    check_no_secrets(hc)
    check_device(hc.device, here)
    if here:  # bf16 on this machine's device (a cluster's job checks its own node when it starts)
        from harness.models import pick_device
        from harness.precision import check_precision

        check_precision(hc.precision, pick_device(hc.device))
    check_process_split(hc)
    check_writable(hc.cache_dir, "cache_dir")
    weights = check_model(hc)
    check_policy(hc)
    check_gold(hc)
    check_free_space(hc.cache_dir, (weights or 0) * models_saved(hc) + FREE_MARGIN, "cache_dir")
    data = task_data(hc.task)
    return with_file_prompts(hc, data) if hc.preferences.source == "file" else data


def check_process_split(hc: HarnessConfig) -> None:
    """Launched as several processes (``accelerate launch``, ``torchrun``: ``harness.distributed``), each batch the
    job may train on is shared equally by them: π_SFT's, the reward model's, and the method's (PPO: each minibatch)."""
    from harness.distributed import launched_processes, per_process

    n, p = launched_processes(), hc.pipeline
    if n == 1:
        return
    per_process(hc.sft.batch_size, "sft.batch_size", n)
    if p.name in ("ppo", "reward_model"):
        per_process(hc.reward_model.batch_size, "reward_model.batch_size", n)
    if p.name in ("ppo", "ppo_gt"):
        per_process(p.batch_size // p.num_minibatches, "pipeline.batch_size / pipeline.num_minibatches", n)
    elif p.name in ("dpo", "ipo", "cdpo", "preferred_ft"):  # the TRL-trained methods (the others' loops are not split)
        per_process(p.batch_size, "pipeline.batch_size", n)


def check_jobs(jobs: Iterable[list[str]], compose_job: Callable[[list[str]], Any], here: bool) -> int:
    """Compose, validate and preflight every job of a sweep before the first runs. A failure names its job at the end
    of its line. Jobs with the same resolved config are checked once. Returns the number of jobs."""
    from harness.config import validate

    seen, n = set(), 0
    for n, overrides in enumerate(jobs, 1):
        try:
            hc = validate(compose_job(list(overrides)))
            key = json.dumps({k: identity_of(v) for k, v in vars(hc).items() if k != "raw"}, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                preflight(hc, here)
        except Exception as e:  # noqa: BLE001 - a user error gets its job appended; anything else propagates as is
            line = user_error(e)
            if line is None:
                raise
            raise ConfigError(f"{line} [job {n}: {' '.join(overrides)}]") from None
    return n


# --------------------------------------------------------------------------------------------- one-line errors
def _first_line(text: str) -> str:
    return next((s.strip() for s in str(text).splitlines() if s.strip()), "")


def _fields(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _omegaconf_line(e: Exception) -> str | None:
    """An OmegaConf error with a ``full_key``: an unknown key (with the keys allowed there), a value of the wrong
    type (with the type wanted), a missing value."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    key = getattr(e, "full_key", None)
    if not key:
        return None
    owner = getattr(e, "object_type", None)
    allowed = _fields(owner)
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and allowed:
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)" if close else ""
        where = f"under {key.rsplit('.', 1)[0]}" if "." in key else "at the top level"
        return f"{key}: unknown key{hint}; valid keys {where}: {', '.join(allowed)}"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: required value is missing (???); set it, e.g. {key}=<value>"
    if isinstance(e, ValidationError):
        leaf = key.rsplit(".", 1)[-1]
        wanted = next((str(f.type) for f in dataclasses.fields(owner) if f.name == leaf), None) if allowed else None
        return f"{key}: {_first_line(str(e))}" + (f"; give {key} a value of type {wanted}" if wanted else "")
    return f"{key}: {_first_line(str(e))}"


def _hydra_line(e: Exception) -> str | None:
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        return f"{group}: no option '{option}'; choose one of {', '.join(e.options)}"
    if isinstance(e, OverrideParseException):
        return f"command line: cannot parse '{e.override}' ({_first_line(e.message)}); write overrides as key=value"
    if isinstance(e.__cause__, OmegaConfBaseException):
        line = _omegaconf_line(e.__cause__)
        if line:
            return line
    if isinstance(e, OmegaConfBaseException):
        return _omegaconf_line(e) or f"config: {_first_line(str(e))}"
    if isinstance(e, HydraException):
        first = _first_line(str(e))
        if first.startswith("Ambiguous value for argument"):
            return f"command line: {first}; write a list as key=[a,b], or add -m to sweep over the values"
        return f"config: {first}"
    return None


def user_error(e: BaseException) -> str | None:
    """The one line a user error ends with, or None when ``e`` is not a user error (a bug keeps its traceback)."""
    if isinstance(e, ConfigError):
        return _first_line(str(e))
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS and e.filename:
        return (f"output: cannot write '{e.filename}' ({e.strerror}); set hydra.run.dir (hydra.sweep.dir with -m) and "
                "cache_dir to folders you can write, with free space")
    if isinstance(e, Exception):
        return _hydra_line(e)
    return None


# ---------------------------------------------------------------------------------------------------- secrets
def secret_values() -> dict[str, str]:
    """The secrets in this environment (W&B key, hub tokens), by variable; short values are ignored (no real key is
    that short, and redacting "1" would mangle every config)."""
    return {v: os.environ[v] for v in SECRET_ENV if len(os.environ.get(v, "")) >= 8}


def _strings(obj: Any, key: str = ""):
    """(dotted key, string) for every string in plain data."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(obj, str):
        yield key, obj


def check_no_secrets(hc: HarnessConfig) -> None:
    """No config value holds a secret (e.g. ``logger.entity=${oc.env:HF_TOKEN}``): config values are saved with the
    run, logged and sent to W&B, where a secret must never go. The error names the variable, never its value."""
    secrets = secret_values()
    if not secrets:
        return
    plain = {f.name: getattr(hc, f.name) for f in dataclasses.fields(hc) if f.name != "raw"}
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in plain.items()}
    for key, text in _strings(plain):
        for name, value in secrets.items():
            if value in text:
                raise ConfigError(f"{key}: holds the value of {name}; secrets stay in the environment, never in a config "
                                  "(they would be saved with the run and sent to W&B)")


def redact(obj: Any, secrets: dict[str, str] | None = None) -> Any:
    """``obj`` (plain data) with every secret value replaced by ``<NAME>``: a config that interpolates
    ``${oc.env:WANDB_API_KEY}`` must not carry the key into a saved config, a log or W&B."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        for name, value in secrets.items():
            obj = obj.replace(value, f"<{name}>")
    return obj
