"""Mixed precision: fp32 master weights, bf16 forward passes (``precision=bf16``; ``precision=fp32`` is the default).

With bf16, every weight, gradient and optimiser state stays fp32; the forward passes of our own loops (PPO's rollout
and update, Unlikelihood's step, the sampler, the evaluator) run under ``torch.autocast(dtype=torch.bfloat16)``,
and the TRL/transformers trainers (DPO, IPO, cDPO, Preferred-FT, RLOO, GRPO) get their ``bf16`` flag, which does the
same through accelerate. Log-probabilities, KLs and losses are taken from logits cast to fp32 (``harness.lm.sampling``),
so only the matrix products run in bf16. The stages (π_SFT, the preference set, the reward model) are built in fp32
whatever this says: one cached π_SFT is π_ref for both precisions, and their points share one frontier.
"""

from __future__ import annotations

import contextlib

import torch

from harness.fields import ConfigError


def pick_device(name: str) -> torch.device:
    """``device=auto`` is CUDA when torch sees one. Here, not beside the model loaders, because a study's config checks
    ask for it and importing transformers' models for them cost the study's process ~5 s before its first job."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 autocast: a CUDA GPU with native bf16 (Ampere or later), or a CPU (correct
    everywhere, fast only with AVX512-BF16/AMX). Apple's MPS is left out."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu"


def check_precision(precision: str, device: torch.device) -> None:
    """One ConfigError line when ``precision=bf16`` is asked for on a device that cannot run it."""
    if precision == "bf16" and not supports_bf16(device):
        what = (
            torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else device.type
        )
        raise ConfigError(
            f"precision: bf16 asked for, but the device ({what}) cannot run bf16 (CUDA needs compute "
            "capability 8.0 or later); use precision=fp32"
        )


def autocast(device: torch.device, precision: str):
    """The context the forward passes run in: bf16 autocast on ``device``, or nothing for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def trainer_flags(precision: str) -> dict:
    """A transformers/TRL TrainingArguments' precision flags: its own bf16 autocast over fp32 weights (TRL's configs
    default to bf16, so fp32 turns it off explicitly); fp16 never (it needs loss scaling, bf16 does not)."""
    return {"bf16": precision == "bf16", "fp16": False}
