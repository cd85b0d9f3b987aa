"""Stage 3 of RLHF: the Bradley–Terry reward model r_φ, trained with TRL's RewardTrainer on the preference set.

Loss −log σ(r_φ(x, y_w) − r_φ(x, y_l)) (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1), initialised from π_SFT's
backbone with a fresh scalar head. Cached. Stored with it: held-out pair accuracy and the mean/std of its scores on
π_SFT samples, so PPO can normalise the score (Huang et al. 2024, detail "reward normalisation").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from harness.config import HarnessConfig, stage_fingerprint
from harness.lm import packing
from harness.lm.batching import trainer_batches, with_length_sorted_micro_batches
from harness.lm.models import freeze, load_scalar_model
from harness.lm.sampling import Samples, positions
from harness.runs.cache import Artifact, build_or_load, key_of
from harness.runs.context import RunContext
from harness.runs.weights import saved_model_problem
from pipelines.stages.preferences import ensure_preferences, load_pairs, preferences_key
from pipelines.stages.sft import ensure_sft

log = logging.getLogger("harness.reward_model")


@torch.no_grad()
def score_samples(model, s: Samples, batch_size: int = 256) -> torch.Tensor:
    """r_φ(prompt + response) for sampled token tensors, read at the last attended token (the EOS of a finished
    response, as in training, where TRL appends EOS; ``harness.lm.models.read_score_at_last_token``), ``batch_size``
    episodes at a time. The backbone runs packed (``harness.lm.packing``) and the head at those tokens only; a model
    without a linear ``score`` head is called as it is, on the padded batch. -> (B,) float"""
    out = []
    for i in range(0, s.query.shape[0], batch_size):
        part = s.subset(torch.arange(i, min(i + batch_size, s.query.shape[0]), device=s.query.device))
        if isinstance(getattr(model, "score", None), torch.nn.Linear):
            out.append(model.score(packing.last_states(model, part))[:, 0].float())
        else:
            a = part.attention_mask
            out.append(
                model(input_ids=part.sequences, attention_mask=a, position_ids=positions(a)).logits[:, 0].float()
            )
    return torch.cat(out)


class TextScorer:
    """r_φ on texts (prompt + response), EOS appended as in training: ``list[str] -> np.ndarray``."""

    def __init__(self, model, tok, batch_size: int = 256) -> None:
        self.model, self.tok, self.batch_size = model.eval(), tok, batch_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(
                [t + self.tok.eos_token for t in texts[i : i + self.batch_size]],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.model.config.max_position_embeddings,
            ).to(device)
            out.append(self.model(**enc).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def reward_model_identity(hc: HarnessConfig) -> dict:
    return stage_fingerprint("reward_model", preferences_key(hc), hc.reward_model, {"stage_seed": hc.stage_seed})


def reward_model_key(hc: HarnessConfig) -> str:
    """The reward model's cache key, computed without building it (nor what it stands on)."""
    return key_of(reward_model_identity(hc))


def _build(ctx: RunContext, out: Path, resume: Path) -> dict:
    """r_φ into ``out``; its trainer's checkpoints in ``resume`` (a pre-empted build continues from them:
    ``pipelines.stages.resume``)."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from pipelines.stages.resume import StageCheckpoints

    cfg = ctx.cfg.reward_model
    sft = ensure_sft(ctx)
    prefs = ensure_preferences(ctx)
    tok = AutoTokenizer.from_pretrained(str(sft.path), trust_remote_code=ctx.cfg.model.trust_remote_code)
    # The fresh scalar head is drawn from torch's global generator: seeded here, so the model is the same whatever
    # else this process did before (π_SFT built or reused), and a damaged artifact is rebuilt to the same weights.
    torch.manual_seed(ctx.cfg.stage_seed)
    model = load_scalar_model(sft.path, tok, ctx.cfg.model.trust_remote_code)
    pairs = load_pairs(prefs)
    cols = ["prompt", "chosen", "rejected"]
    stage = StageCheckpoints(reward_model_key(ctx.cfg), resume)  # a stopped build's checkpoint, if any
    per_device, accumulate = trainer_batches(cfg.batch_size, cfg.micro_batch_size, "reward_model")
    args = RewardConfig(
        output_dir=str(resume),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulate,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # TRL defaults it on: pure cost here
        report_to=[],
        save_strategy="no",
        logging_steps=25,
        seed=ctx.cfg.stage_seed,
        use_cpu=ctx.device.type == "cpu",
        dataloader_num_workers=0,
    )
    trainer = with_length_sorted_micro_batches(RewardTrainer)(
        model=model,
        args=args,
        train_dataset=pairs["train"].select_columns(cols),
        processing_class=tok,
        callbacks=[stage],
    )
    train_loss = stage.train(trainer)
    model = trainer.model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    scorer = TextScorer(model, tok)
    test = pairs["test"]
    acc = (
        float(
            np.mean(
                scorer([p + c for p, c in zip(test["prompt"], test["chosen"])])
                > scorer([p + r for p, r in zip(test["prompt"], test["rejected"])])
            )
        )
        if len(test)
        else float("nan")
    )
    sft_scores = scorer(load_from_disk(str(prefs.path / "sft_samples"))["text"])
    return {
        "train_loss": train_loss,
        "heldout_accuracy": acc,
        "heldout_pairs": len(test),
        "sft_score_mean": float(sft_scores.mean()),
        "sft_score_std": float(sft_scores.std()),
    }


def ensure_reward_model(ctx: RunContext) -> Artifact:
    art = build_or_load(
        ctx.cache_root,
        "reward_model",
        reward_model_identity(ctx.cfg),
        lambda out, r: _build(ctx, out, r),
        check=saved_model_problem,
        resumable=True,
    )
    log.info("reward model %s: %s", "reused from cache" if art.reused else "trained", art.path)
    return art


def load_reward_model(ctx: RunContext):
    """(r_φ on the job's device in eval mode, tokenizer, facts incl. sft_score_mean / sft_score_std)."""
    from transformers import AutoTokenizer

    art = ensure_reward_model(ctx)
    tok = AutoTokenizer.from_pretrained(str(art.path), trust_remote_code=ctx.cfg.model.trust_remote_code)
    model = freeze(load_scalar_model(art.path, tok, ctx.cfg.model.trust_remote_code).to(ctx.device))
    return model, tok, art.manifest()["facts"]


def run(ctx: RunContext) -> dict:
    art = ensure_reward_model(ctx)
    facts = art.manifest()["facts"]
    print(f"reward model: {art.path}  ({'reused' if art.reused else 'trained'})")
    print(
        f"held-out pair accuracy {facts['heldout_accuracy']:.3f} on {facts['heldout_pairs']} pairs; "
        f"score on π_SFT samples {facts['sft_score_mean']:.3f} ± {facts['sft_score_std']:.3f}"
    )
    return {**facts, "path": str(art.path), "reused": art.reused}
