"""Pipeline name -> the function that runs it. Imported lazily so that validation never loads a trainer."""

from __future__ import annotations

import importlib

RUNNERS = {
    "sft": "pipelines.sft:run",
    "preferences": "pipelines.preferences:run",
    "reward_model": "pipelines.reward_model:run",
    "ppo": "pipelines.ppo:run",
    "ppo_gt": "pipelines.ppo:run",
    "dpo": "pipelines.dpo:run",
    "ipo": "pipelines.dpo:run",
    "cdpo": "pipelines.dpo:run",
    "preferred_ft": "pipelines.baselines:run_preferred_ft",
    "unlikelihood": "pipelines.baselines:run_unlikelihood",
    "best_of_n": "pipelines.baselines:run_best_of_n",
    "rloo": "pipelines.online_rl:run",
    "rloo_gt": "pipelines.online_rl:run",
    "grpo": "pipelines.online_rl:run",
    "grpo_gt": "pipelines.online_rl:run",
    "kto": "pipelines.kto:run",
    "online_dpo": "pipelines.online_dpo:run",
    "evaluate": "pipelines.evaluate:run",
}


def runner(name: str):
    module, fn = RUNNERS[name].split(":")
    return getattr(importlib.import_module(module), fn)
