"""The DPO paper's baselines (Rafailov et al. 2023, §6.1, Fig. 2), on the same preference set, π_SFT and evaluator.

* **Preferred-FT** (:func:`run_preferred_ft`): supervised fine-tuning of π_SFT on (prompt, chosen) with TRL's
  ``SFTTrainer`` in prompt/completion format, so the loss is on the completion tokens (+ EOS) only. One example per
  training pair, its chosen completion y_w, as the DPO paper's Preferred-FT: a completion that is "chosen" in several
  pairs (in the all-pairs preference set the best of 4 samples is chosen in 3) is trained on that many times, so
  Preferred-FT sees the same pairs, as often, as DPO and Unlikelihood.
* **Unlikelihood** (:func:`run_unlikelihood`): our own loop over the pairs with ``losses.unlikelihood_loss``:
  token-mean NLL of y_w plus α × the token-mean −log(1 − π(y_l,t | x, y_l,<t)) of y_l (Welleck et al. 2019, eq. 4).
* **Best-of-N** (:func:`run_best_of_n`): N samples from π_SFT per held-out prompt, keep the one the learned reward
  model scores highest (or the gold reward: an oracle), report the gold reward of the kept ones. No training.

The trained baselines write their frontier points with the same :class:`pipelines.trainer_run.FrontierEvaluation` as DPO (at
step 0, every ``eval.every`` optimizer steps and at the end) and run the same data checks first. Both resume a killed
job from its last checkpoint (every ``pipeline.checkpoint_every`` steps; ``harness.runs.checkpoint``): Preferred-FT from
its trainer's, as DPO; Unlikelihood from its own ``checkpoint/state.pt``. Both stop at a non-finite loss
(``harness.runs.guards``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.eval.evaluator import (
    clustered_sem,
    prompt_evidence,
    sampling_seed,
    texts_of,
)
from harness.eval.row import EvalPoint
from harness.lm.batching import (
    length_sorted_order,
    micro_batches,
    trainer_batches,
    with_length_sorted_micro_batches,
)
from harness.lm.lm_head import DenseLMHead, token_logprobs
from harness.lm.memory import cost_now
from harness.lm.precision import autocast, trainer_flags
from harness.lm.sampling import sample
from harness.runs import checkpoint, preempt
from harness.runs.context import RunContext
from harness.runs.guards import check_finite
from pipelines.losses import unlikelihood_loss
from pipelines.stages.sft import load_sft
from pipelines.trainer_run import (
    GuardedTraining,
    prepare,
    save_args,
    trainer_callbacks,
    trainer_max_steps,
)
from pipelines.trainer_run import finish as _finish

log = logging.getLogger("harness.baselines")


# ----------------------------------------------------------------------------------------------------------------
# Preferred-FT
# ----------------------------------------------------------------------------------------------------------------


def run_preferred_ft(ctx: RunContext) -> dict:
    """SFT of π_SFT on the chosen completion of every training pair (one example per pair, duplicates kept, as the
    DPO paper's SFT on y_w), loss on the completion only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = ctx.cfg.pipeline
    resume = checkpoint.last_trainer_checkpoint(ctx.folder, ctx.key)  # (folder, mark) of a killed attempt, or None
    policy, reference, tok, train, tracker, evaluation = prepare(
        ctx, columns=("prompt", "chosen"), saved=resume[1] if resume else None
    )
    data = Dataset.from_dict({"prompt": list(train["prompt"]), "completion": list(train["chosen"])})
    per_device, accumulate = trainer_batches(cfg.batch_size, cfg.micro_batch_size, "pipeline")
    args = SFTConfig(
        output_dir=str(checkpoint.trainer_dir(ctx.folder)),
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulate,
        num_train_epochs=cfg.epochs,
        max_steps=trainer_max_steps(cfg.max_steps),
        max_length=cfg.max_length,
        completion_only_loss=True,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.1,  # as DPO: 10% linear warm-up, then constant
        weight_decay=0.0,
        **trainer_flags(ctx.precision),
        activation_checkpointing=False,
        report_to="none",
        **save_args(cfg.checkpoint_every),
        logging_steps=10,
        seed=ctx.cfg.seed,
        use_cpu=ctx.device.type == "cpu",
        dataloader_num_workers=0,
        packing=False,
        include_num_input_tokens_seen="non_padding",  # the compute axis: tokens through forward+backward
    )
    logs, callbacks = trainer_callbacks(ctx, tracker, evaluation)
    trainer_cls = type(
        "HarnessSFTTrainer", (GuardedTraining, DenseLMHead, with_length_sorted_micro_batches(SFTTrainer)), {}
    )
    trainer = trainer_cls(model=policy, args=args, train_dataset=data, processing_class=tok, callbacks=callbacks)
    log.info("Preferred-FT on the chosen completions of %d pairs", len(train))
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    facts = {
        "steps": trainer.state.global_step,
        "train_pairs": len(train),
        "train_examples": len(trainer.train_dataset),
        "train_loss": result.training_loss,
        "losses_finite": all(math.isfinite(x) for x in logs.losses + [result.training_loss]),
    }
    return _finish(ctx, trainer.model, reference, tok, tracker, evaluation, facts)


# ----------------------------------------------------------------------------------------------------------------
# Unlikelihood
# ----------------------------------------------------------------------------------------------------------------


def encode_completions(
    tok, prompts: list[str], completions: list[str], max_length: int | None = None
) -> list[tuple[list[int], int]]:
    """Each pair's token ids of prompt + completion + EOS (cut at ``max_length``; None: uncut) and where the
    completion starts, in two batched tokenizer calls.

    As TRL does, the completion starts where the ids of the prompt alone and of prompt + completion diverge (a
    byte-level BPE can merge across the boundary); ``check_pairs`` has made sure the prompt leaves room for it.
    """
    prompt_ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tok([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)["input_ids"]
    out = []
    for p_ids, ids in zip(prompt_ids, full_ids):
        ids = ids + [tok.eos_token_id]
        start = 0
        while start < min(len(p_ids), len(ids)) and p_ids[start] == ids[start]:
            start += 1
        out.append((ids[:max_length], start))
    return out


@dataclass
class EncodedPairs:
    """Preference pairs tokenized once for a whole run (``encode_completions`` of chosen and of rejected), not again
    in every batch: the rows of ``encoded_batch``. ``widths``: the tokens each pair pads its batch to (prompt + the
    longer completion + EOS, before the cut), the order of the length-sorted batches."""

    chosen: list[tuple[list[int], int]]
    rejected: list[tuple[list[int], int]]
    widths: list[int]

    @classmethod
    def of(cls, tok, prompts: list[str], chosen: list[str], rejected: list[str], max_length: int) -> EncodedPairs:
        # encoded uncut first: the widths are the lengths before the cut (``max_length``)
        uncut = [encode_completions(tok, prompts, side) for side in (chosen, rejected)]
        widths = [max(len(c), len(r)) for (c, _), (r, _) in zip(*uncut)]
        cut = [[(ids[:max_length], start) for ids, start in side] for side in uncut]
        return cls(cut[0], cut[1], widths)

    def __len__(self) -> int:
        return len(self.widths)

    def take(self, rows) -> EncodedPairs:
        rows = [int(i) for i in rows]
        return EncodedPairs(
            [self.chosen[i] for i in rows], [self.rejected[i] for i in rows], [self.widths[i] for i in rows]
        )


def encoded_batch(pairs: EncodedPairs, pad_token_id: int, device) -> dict:
    """B encoded pairs as one right-padded batch of 2B sequences, rows [chosen; rejected].

    Returns input_ids and attention_mask (2B, L), and labels / completion_mask (2B, L-1) aligned with the logits
    that predict them (logits[:, t] predicts input_ids[:, t+1]); completion_mask is 1 on completion tokens and EOS.
    """
    encoded = pairs.chosen + pairs.rejected
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    completion = torch.zeros((len(encoded), width), dtype=torch.float32)
    for row, (ids, start) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        completion[row, start : len(ids)] = 1.0
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": input_ids[:, 1:].to(device),
        "completion_mask": completion[:, 1:].to(device),
    }


def unlikelihood_step(policy, batch: dict, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Unlikelihood loss of one pair batch (see ``losses.unlikelihood_loss``): (loss, nll_chosen, ul_rejected)."""
    completion = batch["completion_mask"] != 0  # (2B, L-1): the LM head runs at these positions only
    logps = token_logprobs(policy, batch["input_ids"], batch["attention_mask"], completion)  # 0 off the completion
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)
    chosen_mask, rejected_mask = batch["completion_mask"].chunk(2, dim=0)
    return unlikelihood_loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, alpha)


def accumulate_unlikelihood(policy, tok, pairs: EncodedPairs, cfg, device, precision: str = "fp32"):
    """Gradients of one batch's Unlikelihood loss, accumulated over its equal micro-batches (in the order given, so a
    length-sorted batch pads little). The loss is a mean over pairs, so the mean of the equal micro-batches' losses
    is the batch's. Returns the batch's (loss, nll_chosen, ul_rejected), detached, and its real tokens."""
    k = (
        micro_batches(len(pairs), cfg.micro_batch_size, "pipeline.micro_batch_size")
        if len(pairs) == cfg.batch_size
        else 1
    )
    totals = torch.zeros(3)
    tokens = 0
    for part in np.array_split(np.arange(len(pairs)), k):
        batch = encoded_batch(pairs.take(part), tok.pad_token_id, device)
        with autocast(device, precision):  # the forward pass (and its fp32 loss) only
            loss, nll_chosen, ul_rejected = unlikelihood_step(policy, batch, cfg.alpha)
        (loss / k).backward()
        totals += torch.stack([loss.detach(), nll_chosen.detach(), ul_rejected.detach()]).cpu() / k
        tokens += int(batch["attention_mask"].sum())
    return totals[0], totals[1], totals[2], tokens


def run_unlikelihood(ctx: RunContext) -> dict:
    """Adam on the Unlikelihood loss over shuffled pair batches; the shared evaluator every ``eval.every`` steps.

    Every ``checkpoint_every`` steps the loop's whole state goes to ``<job>/checkpoint/state.pt``: the policy, Adam,
    the shuffling generator with the current epoch's order and the position in it, the global generators, counters
    and the run folder's progress; a rerun of a killed job continues from there as if never stopped."""
    cfg = ctx.cfg.pipeline
    saved = checkpoint.load(ctx.folder, ctx.key)
    policy, reference, tok, train, tracker, evaluation = prepare(
        ctx, columns=("prompt", "chosen", "rejected"), saved=saved
    )
    prompts, chosen, rejected = train["prompt"], train["chosen"], train["rejected"]
    batches_per_epoch = math.ceil(len(prompts) / cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * batches_per_epoch)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(ctx.cfg.seed)
    pairs = EncodedPairs.of(tok, list(prompts), list(chosen), list(rejected), cfg.max_length)
    widths = pairs.widths
    log.info("Unlikelihood (α=%s) on %d pairs for %d steps", cfg.alpha, len(prompts), total_steps)

    policy.train()  # dropout stays off (prepare set every p to 0), as for the other methods
    losses: list[float] = []
    step = tokens_trained = 0
    order, start = None, 0  # this epoch's pair order and where the next batch starts in it
    if saved:
        policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["shuffle"]
        checkpoint.set_rng_state(saved["rng"])
        losses, step, tokens_trained = list(saved["losses"]), saved["step"], saved["tokens_trained"]
        order, start = saved["order"], saved["start"]
    else:
        evaluation(policy, step=0)

    def save_checkpoint() -> None:  # the loop's whole state, as it stands after a step
        checkpoint.save(
            ctx.folder,
            ctx.key,
            {
                "policy": policy.state_dict(),
                "optimizer": optimizer.state_dict(),
                "shuffle": rng.bit_generator.state,
                "rng": checkpoint.rng_state(),
                "losses": losses,
                "step": step,
                "tokens_trained": tokens_trained,
                "order": [int(i) for i in order],
                "start": start,
                "progress": tracker.progress(),
                "clock": checkpoint.clock_state(evaluation.evaluator),
            },
        )

    with tqdm(total=total_steps, initial=step, desc=f"unlikelihood α={cfg.alpha}", unit="step") as bar:
        while step < total_steps:
            if order is None or start >= len(order):
                # a fresh shuffle every epoch; each batch sorted by length for its micro-batches (harness/lm/batching.py)
                order, start = length_sorted_order(widths, cfg.batch_size, rng), 0
            idx = order[start : start + cfg.batch_size]
            start += cfg.batch_size
            optimizer.zero_grad(set_to_none=True)
            loss, nll_chosen, ul_rejected, tokens = accumulate_unlikelihood(
                policy,
                tok,
                pairs.take(idx),
                cfg,
                ctx.device,
                ctx.precision,
            )
            check_finite("loss", loss, step + 1, unit="step")  # before the step: Adam never takes a non-finite gradient
            tokens_trained += tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            tracker.log(
                {
                    "objective/loss": losses[-1],
                    "objective/nll_chosen": nll_chosen.item(),
                    "objective/ul_rejected": ul_rejected.item(),
                    "policy/grad_norm": grad_norm.item(),
                },
                step=step,
            )
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", nll=f"{nll_chosen.item():.3f}", ul=f"{ul_rejected.item():.3f}")
            if step % ctx.cfg.eval.every == 0:
                evaluation(policy, step=step, tokens_trained=tokens_trained)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
            if step < total_steps:  # a safe point: pre-empted, the job saves now and stops (harness.runs.preempt)
                preempt.stop_if_requested(save_checkpoint)
    if evaluation.last_step != step:
        evaluation(policy, step=step, tokens_trained=tokens_trained)
    facts = {
        "alpha": cfg.alpha,
        "steps": step,
        "train_pairs": len(prompts),
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
    }
    return _finish(ctx, policy, reference, tok, tracker, evaluation, facts)


# ----------------------------------------------------------------------------------------------------------------
# Best-of-N
# ----------------------------------------------------------------------------------------------------------------


def best_of_n_kl(n: int) -> float:
    """KL(π_BoN ‖ π_SFT) = log N − (N−1)/N, the analytic value the DPO paper plots (Stiennon et al. 2020, App. G.3;
    Beirami et al. 2024 show it is an upper bound on the true KL, tight when rewards have no ties)."""
    return math.log(n) - (n - 1) / n


def pick_best(scores: np.ndarray, n: int) -> np.ndarray:
    """Index (along the last axis) of the highest score among the first ``n`` samples of each group.

    Args:
        scores: (..., N_max) scores of N_max i.i.d. samples per group.
        n: how many of them to choose from (a prefix, so Best-of-n and Best-of-m share samples).
    Returns:
        (...) long indices in [0, n).
    """
    return np.argmax(scores[..., :n], axis=-1)


def run_best_of_n(ctx: RunContext) -> dict:
    """One draw of max(N) samples per held-out prompt (× eval.samples_per_prompt groups), each N using a prefix.

    Prefixes make the picks nested: the best of the first 2N is never worse (by the scorer) than the best of the
    first N, so the reported reward is monotone in N in expectation, and different N differ by N alone.
    Rows: one per N, step 0, setting "N=<N>", kl = log N − (N−1)/N (kl_sem 0: it is not estimated), kl_sample null
    (π_BoN has no per-sample density to take a log-ratio of), proxy_reward = the reward model's mean score of the
    kept samples (null when the scorer is gold and no reward model is loaded).
    """
    from pipelines.stages.reward_model import load_reward_model, score_samples

    cfg, ev = ctx.cfg.pipeline, ctx.cfg.eval
    policy, tok, _ = load_sft(ctx)
    reward_model = load_reward_model(ctx)[0] if cfg.scorer == "reward_model" else None  # may train it (cached)
    tracker = ctx.tracker()
    ns = sorted({int(n) for n in cfg.ns})
    prompts, groups, n_max = ctx.task.eval_prompts, ev.samples_per_prompt, ns[-1]
    shape = (len(prompts), groups, n_max)  # prompt, group, sample: each prompt's samples are consecutive rows
    rows_prompts = [p for p in prompts for _ in range(groups * n_max)]
    # Every batch is made of whole runs of `repeat` rows of one prompt (repeat divides the batch and a prompt's rows),
    # sampled as `repeat` samples of it: the same rows and draws, with each run's prompt prefilled once.
    repeat = math.gcd(ev.batch_size, groups * n_max)
    gen = torch.Generator(device=ctx.device).manual_seed(sampling_seed(ev.seed, ctx.cfg.seed))  # varies with the seed
    texts, lengths, cut, rm_scores = [], [], [], []
    for i in tqdm(range(0, len(rows_prompts), ev.batch_size), desc=f"best-of-{n_max}: sampling π_SFT", unit="batch"):
        chunk = rows_prompts[i : i + ev.batch_size][::repeat]
        with ctx.autocast():
            s = sample(policy, tok, chunk, repeat, ev.max_new_tokens, ev.temperature, generator=gen)  # no_grad inside
            if reward_model is not None:
                rm_scores.append(score_samples(reward_model, s).cpu())  # no_grad inside
        texts += texts_of(tok, chunk, s)
        lengths.append(s.lengths().cpu())
        cut.append((~s.ended).cpu())
        # A safe point: pre-empted (harness.runs.preempt), the job stops here, keeping nothing. Every N shares this one
        # draw (nested prefixes), so there is no finished N to keep before it ends; the rerun draws it again from the
        # start (seeded: the same samples and rows).
        preempt.stop_if_requested()
    lengths = torch.cat(lengths).numpy().reshape(shape)
    cut = torch.cat(cut).numpy().astype(np.float64).reshape(shape)
    prompt_index = np.repeat(np.arange(len(prompts)), groups)  # the (P, groups) kept samples, flattened
    proxy = torch.cat(rm_scores).numpy().reshape(shape) if rm_scores else None

    if cfg.scorer == "gold":
        gold = np.asarray(ctx.gold(texts), dtype=np.float64).reshape(shape)
        scores = gold
    else:  # the gold reward only of the samples that some N keeps (a few per group instead of max(N))
        scores = proxy
        picked = np.concatenate([np.arange(len(prompts) * groups) * n_max + pick_best(scores, n).ravel() for n in ns])
        kept = np.unique(picked)
        gold = np.full(len(texts), np.nan)
        gold[kept] = np.asarray(ctx.gold([texts[k] for k in kept]), dtype=np.float64)
        gold = gold.reshape(shape)

    rows = []
    cost = cost_now(ctx.device)  # the models and memory the N samples and their scoring took
    for n in ns:
        pick = pick_best(scores, n)[..., None]  # (P, groups, 1)
        gold_kept = np.take_along_axis(gold, pick, -1).ravel()
        cut_kept = np.take_along_axis(cut, pick, -1).ravel()
        point = EvalPoint(
            method=ctx.method,
            setting=f"N={n}",
            seed=ctx.cfg.seed,
            step=0,
            kl=best_of_n_kl(n),
            kl_sem=0.0,
            kl_sample=None,
            gold_reward=float(gold_kept.mean()),
            gold_reward_sem=clustered_sem(gold_kept, prompt_index, len(prompts)),
            proxy_reward=float(np.take_along_axis(proxy, pick, -1).mean()) if proxy is not None else None,
            response_tokens=float(np.take_along_axis(lengths, pick, -1).mean()),
            run_id=tracker.run_id,
            truncated_frac=float(cut_kept.mean()),
            compute_tokens_generated=int(lengths[..., :n].sum()),  # the N drawn
            **cost,
            evidence=prompt_evidence(
                prompts, prompt_index, gold=gold_kept, kl=np.full(gold_kept.shape, best_of_n_kl(n)), truncated=cut_kept
            ),
        )
        rows.append(tracker.log_eval(point))
        print(
            f"best-of-{n:<3d} KL {point.kl:6.3f}  gold {point.gold_reward:.3f} ± {point.gold_reward_sem:.3f}"
            + (f"  RM {point.proxy_reward:.3f}" if point.proxy_reward is not None else "")
        )
    facts = {
        "method": ctx.method,
        "scorer": cfg.scorer,
        "ns": ns,
        "samples": len(texts),
        "gold_by_n": {r["setting"]: r["gold_reward"] for r in rows},
        "points": len(rows),
    }
    tracker.summary(facts)
    tracker.finish()
    return facts
