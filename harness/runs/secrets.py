"""Secrets stay in the environment: no config value may hold the W&B key or a hub token (``check_no_secrets``, a
preflight check), and everything saved with a run or sent to W&B has them replaced by ``<NAME>`` (``redact``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from harness.config import HarnessConfig
from harness.fields import ConfigError

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")


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
