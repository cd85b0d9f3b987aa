"""Secrets stay in the environment: no config value may hold the W&B key or a hub token (``check_no_secrets``, a
preflight check), and everything saved with a run or sent to W&B has them replaced by ``<NAME>`` (``redact``)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from harness.config import HarnessConfig
from harness.fields import ConfigError

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")

# Words that make a key read like a credential (``+wandb.api_key=...``, ``+hub.token=...``): its value is hidden
# wherever overrides are shown, whether or not the environment holds that value. Whole words of the key's last part
# only, so that ``max_new_tokens`` stays visible.
SECRET_WORDS = {"token", "secret", "password", "passwd", "apikey", "credential", "credentials", "auth", "key"}


def secret_looking(key: str) -> bool:
    """Whether the last part of a dotted ``key`` names a credential (``api_key``, ``hf_token``, ``password``)."""
    words = [w.lower() for w in re.split(r"[_\-]", key.lstrip("+~").rsplit(".", 1)[-1]) if w]
    return any(w in SECRET_WORDS for w in words)


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
    plain = {f.name: getattr(hc, f.name) for f in dataclasses.fields(hc) if f.name not in ("raw", "method")}
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in plain.items()}
    for key, text in _strings(plain):
        for name, value in secrets.items():
            if value in text:
                raise ConfigError(
                    f"{key}: holds the value of {name}; secrets stay in the environment, never in a config "
                    "(they would be saved with the run and sent to W&B)"
                )


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


def redact_text(text: str) -> str:
    """``text`` (a message, a line of output) with every secret value of the environment replaced by ``<NAME>``: the
    one redaction every path that prints applies (a single run's error line, a study's, the report's)."""
    return redact(str(text))


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides as they may be shown (a study job named in an error, a progress line): secret values
    replaced by ``<NAME>`` and the value of a secret-looking key by ``<redacted>``; ``hydra.*`` and ``cache_dir``
    (where the job runs, not what it is) left out."""
    shown = []
    for o in overrides:
        key, eq, value = str(o).partition("=")
        bare = key.lstrip("+~")
        if bare.startswith("hydra.") or bare.startswith("hydra/") or bare == "cache_dir":
            continue
        if eq and secret_looking(bare):
            value = "<redacted>"
        shown.append(redact_text(f"{key}{eq}{value}"))
    return shown
