"""Model weights checked from their headers, before anything loads them: a safetensors file cut short (a copy that
stopped, a full disk at save), a header that is not JSON, a shard that ``model.safetensors.index.json`` names but
the folder lacks, a PyTorch ``.bin`` whose zip directory is gone. Each is one :class:`ConfigError` line naming the
file, instead of a loader's traceback after π_SFT has trained. Reads a few KiB per file, never the tensors."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from harness.fields import ConfigError

INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on its JSON header


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, from its header alone; None when the header is whole and every tensor
    it lists lies inside the file. Layout: 8 bytes little-endian header length n, n bytes of JSON, then the data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            return f"its header claims {n} bytes but the file has {size}: cut short"
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    data = size - 8 - n
    if ends and max(ends) > data:
        return f"its tensors need {max(ends)} bytes of data, the file holds {data}: cut short"
    return None


def bin_problem(path: Path) -> str | None:
    """A PyTorch ``.bin`` saved by ``torch.save`` (a zip archive): its central directory, at the end, must be there;
    a file cut short loses it. Old pickle-only files are left to the loader."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"its zip archive is damaged ({str(e).splitlines()[0][:80]}): cut short"
    return None


def check_weights(folder: str | Path, key: str) -> None:
    """Every weight file of a saved model ``folder`` readable from its header, and every shard its index names
    present. One ConfigError line naming ``key`` and the file; nothing is loaded."""
    folder = Path(folder)
    fix = "copy or save the model again (save_pretrained)"
    index = folder / INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise ConfigError(f"{key}: '{index}' is not a weight index (JSON with a weight_map); {fix}") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ConfigError(
                f"{key}: '{folder / missing[0]}' is missing ({len(missing)} of the {len(shards)} shards that "
                f"{INDEX} names); {fix}"
            )
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        problem = (
            safetensors_problem(f) if f.suffix == ".safetensors" else bin_problem(f) if f.suffix == ".bin" else None
        )
        if problem:
            raise ConfigError(f"{key}: '{f}' is damaged ({problem}); {fix}")


def unreadable_json(folder: Path) -> tuple[Path, str] | None:
    """The first JSON file of a saved model ``folder`` (config, tokenizer, generation config, index) that does not
    parse, and why; None when all do. Loaders read every one of them, and fail with a traceback on a cut one."""
    for f in sorted(Path(folder).glob("*.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
            return f, f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    return None


WEIGHT_FILES = ("model.safetensors", INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json")


def saved_model_problem(folder: str | Path) -> str | None:
    """What makes a folder written by ``save_pretrained`` (a cached π_SFT or reward model) unusable, read from its
    files' headers: a JSON file (config, tokenizer, index) that does not parse, no weights, weights cut short or a
    shard missing; None when it can be loaded."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    bad = unreadable_json(folder)
    if bad:
        return f"{bad[0].name} cannot be read: {bad[1]}"
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        return "its model weights are missing"
    try:
        check_weights(folder, "weights")
    except ConfigError as e:
        return str(e).split(": ", 1)[-1]
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None
