"""What a job costs in memory, measured: its peak (resident memory of its process on the CPU, memory allocated on
the GPU) since the job started, and the models it holds. Every result row records them (``harness.eval.row``'s cost
fields), so the report can show, per method, what the DPO paper's first pain is about: PPO holds four models.

The peak is the job's, not the process's: a study runs several jobs one after another in one worker process, so each
job resets the high-water mark when it starts (``reset_peak``; Linux: ``/proc/self/clear_refs`` with 5, which sets
VmHWM to the current resident size). Where that cannot be done, the process's lifetime peak (``getrusage``) is
reported and ``peak_memory_kind`` says so.
"""

from __future__ import annotations

import gc
import resource
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_reset_done = False


def reset_peak(device: torch.device) -> None:
    """Start the job's peak from what the process holds now."""
    global _reset_done
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR.write_text("5")
        _reset_done = True
    except OSError:  # not Linux, or a kernel that refuses it: the process's lifetime peak stands in
        _reset_done = False


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """(MiB, kind): the job's peak since ``reset_peak``: ``device`` (CUDA memory allocated by torch), ``resident``
    (VmHWM of the process), or ``process`` (its lifetime peak, when the high-water mark could not be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "device"
    if _reset_done:
        try:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "resident"
        except (OSError, ValueError, IndexError):
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process"  # Linux: kB


def models_held() -> list[torch.nn.Module]:
    """The transformers models this process holds now, counted once each (a model's backbone is part of it, not a
    second model): policy, reference, critic, reward model, whatever the method keeps alive. Measured, not declared,
    so a trainer's hidden copy (a reference model TRL makes) counts too."""
    from transformers import PreTrainedModel

    # By type, not isinstance: isinstance reads ``__class__``, which some lazy module proxies answer by importing (3 s
    # over a process's objects; this takes ~0.1 s). Collected first: a model dropped but left in a reference cycle is
    # not one the job holds (its memory goes at the collector's next run).
    gc.collect()
    found = [o for o in gc.get_objects() if issubclass(type(o), PreTrainedModel)]
    inner = {id(m) for o in found for m in o.modules() if m is not o}
    return [o for o in found if id(o) not in inner]


def parameters_of(models: list[torch.nn.Module]) -> int:
    """Parameters of ``models``, a tensor shared by two of them (tied embeddings, a shared backbone) counted once."""
    seen, total = set(), 0
    for model in models:
        for p in model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel()
    return total


def cost_now(device: torch.device) -> dict:
    """The cost fields of a result row (``harness.eval.row``) measured now: models held, their parameters, the job's
    peak memory and its kind. (The evaluator counts the models at most every 30 s; a one-off row, such as each of
    Best-of-N's, takes them all from here.)"""
    held = models_held()
    peak, kind = peak_memory(device)
    return {
        "models_held": len(held),
        "model_parameters": parameters_of(held),
        "peak_memory_mb": round(peak, 1) if peak is not None else None,
        "peak_memory_kind": kind,
    }
