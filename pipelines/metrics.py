"""Metric names of the per-step logs (W&B and PPO's updates.jsonl).

Light on purpose (no torch): PPO and the trainer-based methods (``pipelines.trainer_run``) both name their metrics here.
"""

from __future__ import annotations

# The trainer's un-namespaced log keys -> our namespaces (objective/, policy/, train/); keys with a "/" (TRL's
# rewards/*, logps/*, logits/*) are kept as they are.
_LOG_KEYS = {"loss": "objective/loss", "grad_norm": "policy/grad_norm", "learning_rate": "policy/learning_rate",
             "entropy": "policy/entropy", "mean_token_accuracy": "policy/mean_token_accuracy"}


def namespaced(logs: dict) -> dict:
    out = {}
    for k, v in logs.items():
        if not isinstance(v, (int, float)):
            continue
        if k.startswith("eval_"):
            k = "val/" + k[len("eval_"):]
        out[k if "/" in k else _LOG_KEYS.get(k, f"train/{k}")] = v
    return out
