"""The base model's folder: what every loader reads the pretrained weights and tokenizer from.

``model.name`` itself for a hub name or a local folder; for a model shipped as a GGUF file (``model.gguf``,
``harness.lm.gguf``) the converted transformers folder in the stage cache under ``base_model/<key>``, keyed by the
file's sha256 (the same file converts to the same folder whatever the job), built once under the cache's lock like
every stage, checked when read back like every stage. ``tiny`` has none (it is built from config).
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.config import HarnessConfig
from harness.lm import gguf
from harness.runs.cache import build_or_load
from harness.runs.weights import saved_model_problem

log = logging.getLogger("harness")
# Bumped when ``gguf.convert`` changes what it writes, so a folder converted by an older harness is not reused.
CONVERTER_VERSION = 1


def base_folder(hc: HarnessConfig) -> str:
    """The folder (or hub name) the base model loads from; converts a GGUF model on first use."""
    if not hc.model.gguf:
        return hc.model.name
    path = gguf.locate(hc.model.gguf)
    identity = {"gguf_sha256": gguf.file_hash(path), "converter": CONVERTER_VERSION}
    art = build_or_load(
        hc.cache_dir, "base_model", identity, lambda out: gguf.convert(path, out), check=saved_model_problem
    )
    if not art.reused:
        log.info("%s: converted %s into %s", hc.model.name, path.name, art.path)
    return str(Path(art.path))
