"""The three cached stages every method stands on: π_SFT (``sft``), the preference set (``preferences``) and the
Bradley–Terry reward model (``reward_model``), each built once per identity into the stage cache
(``harness/runs/cache.py``). The DPO family adds a fourth, π_ref's log-probs of the pairs (``reference_logps``), whose
key the trainer completes (it holds the tokenised pairs' hash): it is not among :func:`stage_keys`."""

from __future__ import annotations

from harness.config import HarnessConfig
from harness.methods import PREFERENCES, REWARD_MODEL


def stage_keys(hc: HarnessConfig) -> dict[str, str]:
    """The cache keys of the stages ``hc``'s method stands on, computed without building (or loading) any of them."""
    from pipelines.stages.preferences import preferences_key
    from pipelines.stages.reward_model import reward_model_key
    from pipelines.stages.sft import sft_key

    keys = {"sft": sft_key(hc)}
    if hc.method.stages >= PREFERENCES:
        keys["preferences"] = preferences_key(hc)
    if hc.method.stages >= REWARD_MODEL:
        keys["reward_model"] = reward_model_key(hc)
    return keys
