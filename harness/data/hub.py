"""Models on disk or on the hub, found without downloading and without waiting on a network: what a saved model folder
says about itself (config, tokenizer, weight bytes), whether a hub name is in the hub cache or, with the hub on, exists
there (a probe that gives up after ``HUB_PROBE_S``)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.fields import ConfigError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")


HUB_PROBE_S = 5.0  # the longest a check waits on the hub; an answer that has not come by then counts as unreachable


# -------------------------------------------------------------------------------------------- models on disk / hub
@dataclass
class Pretrained:
    """What a model folder says about itself, read without loading it."""

    config: dict
    weight_bytes: int | None  # None: not on this machine (the hub will serve it)


def _hub_offline() -> bool:
    # Read at call time: the variables may be set after huggingface_hub was imported (a test, a launcher).
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


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
        raise ConfigError(
            f"{key}: '{name}' has no config.json, so it is not a saved model; give a folder written by "
            "save_pretrained, or a hub name"
        )
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{key}: '{cfg_file}' is not valid JSON ({str(e).splitlines()[0]}); re-save the model"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(
            f"{key}: '{cfg_file}' holds a JSON {type(config).__name__}, not a model config; re-save the model"
        )
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"{key}: '{name}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
            "beside the model with tokenizer.save_pretrained(folder)"
        )
    weights = [f for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    if not weights:
        raise ConfigError(
            f"{key}: '{name}' has no weights (no *.safetensors or *.bin); save the model with "
            "model.save_pretrained(folder)"
        )
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
        raise ConfigError(
            f"{key}: '{name}' is gated on the hub; accept its licence there and set HF_TOKEN in the "
            "environment (never in a config)"
        )
    if isinstance(err, RepositoryNotFoundError):
        raise ConfigError(
            f"{key}: no {repo_type} '{name}' on the hub (or it is private: set HF_TOKEN); check the name "
            "or give a local folder"
        )
    reason = (
        (str(err).strip().splitlines() or [type(err).__name__])[0][:120] if err is not None else "no answer in time"
    )
    raise ConfigError(
        f"{key}: cannot reach the hub to find '{name}' ({reason}); give a local folder, or set "
        "HF_HUB_OFFLINE=1 to use a copy in the hub cache"
    )


def _hub_name(name: str, key: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(
            f"{key}: '{name}' is neither an existing folder nor a valid hub name (org/name); fix the name or the path"
        ) from None


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
        raise ConfigError(
            f"{key}: folder '{name}' does not exist; give an existing model folder or a hub name (org/name)"
        )
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
        raise ConfigError(
            f"{key}: '{name}' is not a local folder and not in the hub cache, and the hub is off "
            f"(HF_HUB_OFFLINE=1); set {key}=/path/to/a/saved/copy, or fetch it first where the hub is "
            f"reachable (hf download {name})"
        )
    _probe_hub(name, key, "model")
    return None


def find_base(model) -> Pretrained | None:
    """``find_pretrained`` for the base model (a ``ModelConfig``), a GGUF one (``model.gguf``) included: what its
    file's header says, the weight bytes those of the fp32 folder it converts into."""
    if not model.gguf:
        return find_pretrained(model.name, "model.name")
    from harness.lm import gguf

    config = gguf.describe(gguf.locate(model.gguf))
    return Pretrained(config, 4 * config["parameters"])


def positions(config: dict) -> int | None:
    """The longest sequence a model config allows, under any of the names model families use."""
    found = [config[k] for k in POSITION_KEYS if isinstance(config.get(k), int)]
    return min(found) if found else None
