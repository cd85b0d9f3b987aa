"""Stage 1: supervised fine-tuning. π_SFT is trained once per (task, model, sft) config and cached; it is also
π_ref, the frozen anchor of every method's KL."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from harness.config import HarnessConfig, stage_fingerprint
from harness.lm.batching import trainer_batches, with_length_sorted_micro_batches
from harness.lm.lm_head import DenseLMHead
from harness.lm.models import (
    count_parameters,
    load_causal_lm,
    load_pretrained_lm,
    load_tokenizer,
)
from harness.runs.base_model import base_folder
from harness.runs.cache import Artifact, build_or_load, key_of
from harness.runs.context import RunContext
from harness.runs.weights import saved_model_problem

log = logging.getLogger("harness.sft")


def sft_identity(hc: HarnessConfig) -> dict:
    t = hc.task
    task_part = {k: getattr(t, k) for k in ("name", "n_train", "n_heldout", "seed", "path", "text_column")}
    return stage_fingerprint("sft", task_part, hc.model, hc.sft)


def sft_key(hc: HarnessConfig) -> str:
    """π_SFT's cache key, computed without building it."""
    return key_of(sft_identity(hc))


@torch.no_grad()
def perplexity(model, tok, texts: list[str], batch_size: int = 128, max_length: int = 128) -> float:
    """exp(mean NLL per token) of ``texts`` + EOS, the tokens SFT was trained to predict."""
    device = next(model.parameters()).device
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tok(
            [t + tok.eos_token for t in texts[i : i + batch_size]],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        ).to(device)
        logits = model(**enc).logits[:, :-1].float()
        target, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].float()
        lp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nll -= float((lp * mask).sum())
        count += int(mask.sum())
    return math.exp(nll / max(count, 1))


def _build(ctx: RunContext, out: Path, resume: Path) -> dict:
    """π_SFT into ``out``; its trainer's checkpoints in ``resume`` (a pre-empted build continues from them:
    ``pipelines.stages.resume``)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from pipelines.stages.resume import StageCheckpoints

    cfg, task = ctx.cfg, ctx.task
    source = base_folder(cfg)  # a GGUF model is converted here, once, under the cache's lock
    tok = load_tokenizer(cfg.model, task.train_texts, source)
    model = load_causal_lm(cfg.model, tok, seed=cfg.task.seed, source=source)
    log.info(
        "SFT: %s with %.2fM parameters on %d reviews",
        cfg.model.name,
        count_parameters(model) / 1e6,
        len(task.train_texts),
    )
    stage = StageCheckpoints(sft_key(cfg), resume)  # a stopped build's checkpoint, if any
    per_device, accumulate = trainer_batches(cfg.sft.batch_size, cfg.sft.micro_batch_size, "sft")
    args = SFTConfig(
        output_dir=str(resume),
        num_train_epochs=cfg.sft.epochs,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulate,
        learning_rate=cfg.sft.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.sft.warmup_ratio,
        max_length=cfg.sft.max_length,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # TRL defaults it on: pure cost here
        report_to=[],
        save_strategy="no",
        logging_steps=25,
        seed=cfg.task.seed,
        dataset_text_field="text",
        packing=False,
        use_cpu=ctx.device.type == "cpu",
        dataloader_num_workers=0,
        weight_decay=0.0,
    )
    trainer = type("HarnessSFTTrainer", (DenseLMHead, with_length_sorted_micro_batches(SFTTrainer)), {})(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": task.train_texts}),
        processing_class=tok,
        callbacks=[stage],
    )
    train_loss = stage.train(trainer)
    model = trainer.model
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ppl = perplexity(model, tok, task.heldout_texts)
    return {
        "train_loss": train_loss,
        "heldout_perplexity": ppl,
        "parameters": count_parameters(model),
        "train_reviews": len(task.train_texts),
    }


def ensure_sft(ctx: RunContext) -> Artifact:
    art = build_or_load(
        ctx.cache_root,
        "sft",
        sft_identity(ctx.cfg),
        lambda out, r: _build(ctx, out, r),
        check=saved_model_problem,
        resumable=True,
    )
    log.info("π_SFT %s: %s", "reused from cache" if art.reused else "trained", art.path)
    return art


def load_sft(ctx: RunContext):
    """(π_SFT model on the job's device, its tokenizer, the artifact)."""
    from transformers import AutoTokenizer

    art = ensure_sft(ctx)
    tok = AutoTokenizer.from_pretrained(str(art.path), trust_remote_code=ctx.cfg.model.trust_remote_code)
    model = load_pretrained_lm(art.path, tok, ctx.cfg.model.trust_remote_code).to(ctx.device)
    return model, tok, art


def run(ctx: RunContext) -> dict:
    """Train (or reuse) π_SFT, then evaluate it on held-out prompts: the frontier's origin."""
    policy, tok, art = load_sft(ctx)
    reference = load_pretrained_lm(art.path, tok, ctx.cfg.model.trust_remote_code).to(ctx.device)
    tracker = ctx.tracker()
    evaluator = ctx.evaluator(reference, tok)
    point = evaluator(policy, method="sft", setting="", seed=ctx.cfg.seed, step=0, run_id=tracker.run_id)
    tracker.log_eval(point)
    gold = np.asarray(ctx.gold(evaluator.last_texts))
    facts = {
        **art.manifest()["facts"],
        "checkpoint": str(art.path),
        "gold_mean": float(gold.mean()),
        "gold_std": float(gold.std()),
        "kl_to_self": point.kl,
        "truncated_frac": point.truncated_frac,
        "reused": art.reused,
    }
    tracker.summary(facts)
    tracker.finish()
    print(f"π_SFT checkpoint: {art.path}  ({'reused' if art.reused else 'trained'})")
    print(
        f"held-out perplexity {facts['heldout_perplexity']:.2f}; gold reward of samples on held-out prompts: "
        f"mean {facts['gold_mean']:.3f}, std {facts['gold_std']:.3f}; KL(π_SFT‖π_ref) = {point.kl:.2e}; "
        f"{100 * point.truncated_frac:.1f}% of samples reached max_new_tokens without EOS"
    )
    for text in evaluator.last_texts[: ctx.cfg.pipeline.show_samples]:
        print(f"  sample: {text}")
    return facts
