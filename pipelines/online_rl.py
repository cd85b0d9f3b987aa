"""RLOO and GRPO with TRL's ``RLOOTrainer`` and ``GRPOTrainer``: online RL with no critic, the baseline taken from
k completions of the same prompt.

Four methods, two algorithms × two rewards:

  rloo, rloo_gt   REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = r_i − mean_{j≠i} r_j over the k completions
                  of a prompt, where r_i = score_i − β · Σ_t (log π_θ − log π_ref)(y_t) (the k1 sequence KL, in the
                  reward as in PPO); a clipped sequence-level ratio loss (the ratio is 1 when num_iterations = 1).
  grpo, grpo_gt   Group-relative policy optimisation (Shao et al. 2024): A_i = (r_i − mean_g r) / (std_g r + 1e-4)
                  over the group, and β · k3 per token (exp(Δ) − Δ − 1, Δ = log π_ref − log π_θ) in the *loss*.

The score is the learned Bradley–Terry r_φ from the stage cache for ``rloo`` / ``grpo`` (read at EOS, appended to a
truncated completion, normalised with r_φ's stored π_SFT statistics: ``RewardModelScore``) and the gold reward on
the decoded prompt + completion for the ``_gt`` variants (normalised with the first batch, π_SFT's own samples:
``GoldScore``), the reward roles and the normalisation PPO uses (``pipelines.scoring``). Both reach TRL as a reward function (:class:`RewardFunction`), which rebuilds the sampled token
tensors from the completion ids TRL hands it, so r_φ scores exactly the tokens that were sampled.

What is held equal to PPO: the prompts (the task's training prompts), π_SFT as the initial policy and as π_ref (TRL
loads π_ref from the policy's ``_name_or_path``, which is π_SFT's cache folder: checked), ``max_new_tokens`` and the
temperature (pure sampling: top_k 0, top_p 1), dropout off, a constant learning rate, Adam's eps 1e-5, and the budget
in episodes: ``max_steps`` optimizer steps of ``batch_size`` completions (``batch_size / num_generations`` prompts),
one generation per step when ``num_iterations`` = 1. PPO's default 20 updates × 64 episodes = this default 20 × 64.

The frontier rows come from the same callbacks as DPO's (``pipelines.trainer_run``: the shared evaluator at step 0, every
``eval.every`` optimizer steps and at the end; logs, checkpoint marks), with the sampled-token count as the compute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from harness.fields import ConfigError
from harness.lm.models import disable_dropout
from harness.lm.precision import trainer_flags
from harness.lm.sampling import Samples, encode_prompts, positions
from harness.runs import checkpoint
from harness.runs.context import RunContext
from harness.runs.guards import check_finite
from pipelines.schemas import GRPOPipeline, OnlineRLPipeline, RLOOPipeline
from pipelines.scoring import normalised, reward_role
from pipelines.trainer_run import (
    FrontierEvaluation,
    GuardedTraining,
    finish,
    load_frozen_reference,
    save_args,
    trainer_callbacks,
)

log = logging.getLogger("harness.online_rl")


# ----------------------------------------------------------------------------------------------------------------
# The reward, as TRL's reward function
# ----------------------------------------------------------------------------------------------------------------


def completion_samples(tok, prompts: list[str], completion_ids: list[list[int]], device) -> Samples:
    """TRL's (prompt text, completion ids) rows as our sampled-token record: queries left-padded, completions
    right-padded, ``ended`` where the completion's last token is EOS (TRL cuts each completion after its first EOS).
    Row i is its own prompt (``prompt_index`` = i), so ``prompts`` may repeat."""
    query, query_mask = encode_prompts(tok, prompts, device)
    B, T = len(completion_ids), max(1, max(len(c) for c in completion_ids))
    response = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, T)
    for i, ids in enumerate(completion_ids):
        response[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1.0
    ended = torch.tensor([len(c) > 0 and c[-1] == tok.eos_token_id for c in completion_ids])
    return Samples(
        query, query_mask, response.to(device), mask.to(device), ended.to(device), torch.arange(B, device=device)
    )


class RewardFunction:
    """The reward role in TRL's form, ``(prompts, completions, completion_ids, **kw) -> list[float]``.

    ``score``: the reward role (``pipelines.scoring``, as PPO's), ``(samples, prompts) -> (B,)`` raw scores. Scores
    become (raw − mean) / std with ``norm`` = (mean, std) (``scoring.normalised``); ``norm`` None: taken from the first
    batch (π_SFT's own samples), as PPO-GT does. Every
    completion passes through here exactly once, so this is also where the sampled tokens are counted.
    """

    __name__ = "score"  # TRL names its reward metrics after the function: rewards/score/mean

    def __init__(
        self, score: Callable[[Samples, list[str]], torch.Tensor], tok, device, norm: tuple[float, float] | None
    ) -> None:
        self.score, self.tok, self.device, self.norm = score, tok, device, norm
        self.tokens_generated = 0  # completion tokens scored so far (EOS included): the compute axis

    @torch.no_grad()
    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], trainer_state=None, **kwargs
    ) -> list[float]:
        s = completion_samples(self.tok, prompts, completion_ids, self.device)
        raw = self.score(s, prompts).float()
        check_finite("reward", raw, (trainer_state.global_step if trainer_state is not None else 0) + 1, unit="step")
        scores, self.norm = normalised(raw, self.norm)
        self.tokens_generated += int(s.response_mask.sum().item())
        return scores.tolist()


def reward_function(ctx: RunContext, tok) -> tuple[RewardFunction, Callable | None]:
    """(the reward function, the evaluator's proxy scorer or None) for ``ctx``'s method: ``scoring.reward_role``, r_φ
    for rloo / grpo, the gold reward for the _gt variants."""
    cfg: OnlineRLPipeline = ctx.cfg.pipeline
    role = reward_role(ctx, tok, gold=cfg.name.endswith("_gt"), normalize=cfg.normalize_scores)
    return RewardFunction(role.score, tok, ctx.device, role.norm), role.proxy


# ----------------------------------------------------------------------------------------------------------------
# The trainers
# ----------------------------------------------------------------------------------------------------------------


def algorithm(cfg: OnlineRLPipeline) -> str:
    return "grpo" if isinstance(cfg, GRPOPipeline) else "rloo"


def trainer_config(
    cfg: OnlineRLPipeline,
    output_dir: str,
    *,
    seed: int,
    use_cpu: bool,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """TRL's RLOOConfig / GRPOConfig from our pipeline config.

    One optimizer step = ``batch_size`` completions, in ``batch_size / micro_batch_size`` accumulated micro-batches;
    TRL's ``steps_per_generation`` defaults to the accumulation steps, so each step's completions are generated
    together (whole groups of ``num_generations``) and each generation feeds ``num_iterations`` steps. fp32, no
    activation checkpointing, no vLLM (TRL's configs default to bf16 and to recomputing activations, wrong on CPU and
    wasted on small models); pure sampling at ``temperature``; a constant learning rate with Adam's eps 1e-5, as PPO.
    """
    from harness.fields import micro_batches

    accumulate = micro_batches(cfg.batch_size, cfg.micro_batch_size, "pipeline.micro_batch_size")
    common = dict(
        output_dir=output_dir,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.batch_size // accumulate,
        gradient_accumulation_steps=accumulate,
        max_steps=cfg.max_steps,
        num_iterations=cfg.num_iterations,
        epsilon=cfg.epsilon,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_epsilon=1e-5,
        max_grad_norm=cfg.max_grad_norm,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        **trainer_flags(precision),
        activation_checkpointing=False,
        use_vllm=False,
        disable_dropout=True,
        report_to="none",
        logging_steps=logging_steps,
        seed=seed,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        log_completions=False,
        **save_args(checkpoint_every),
    )
    if algorithm(cfg) == "grpo":
        from trl import GRPOConfig

        return GRPOConfig(**common, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards)
    from trl import RLOOConfig

    return RLOOConfig(**common, normalize_advantages=cfg.normalize_advantages)


def _positions_from_mask(module, args, kwargs):
    """Forward pre-hook: position ids that skip left padding when the caller passes none (see ``pad_aware``)."""
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2 and not args:
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if inputs is not None:
            kwargs["position_ids"] = positions(mask)[:, -inputs.shape[1] :]  # the last columns: cached decoding too
    return args, kwargs


def pad_aware(model):
    """Make ``model`` number positions from its attention mask when a caller gives none.

    TRL's RLOO and GRPO left-pad the prompts of a batch and compute every log-probability (π_old, π_ref, and π_θ in
    the loss) with ``model(input_ids, attention_mask)`` and no position ids, so a model with absolute positions
    (GPT-2, the embedded default) sees a prompt with p pad tokens shifted p positions to the right; ``generate``
    (which sampled the completion), our sampler and the evaluator number from the first real token. Without this
    hook the loss and the KL would be those of a different, shifted input: tests/pipelines/test_online_trl.py computes the
    trainer's advantages by hand with pad-skipping positions and they agree only with it. Models with relative
    positions (RoPE) are unchanged by it. Callers that pass position ids are untouched."""
    if not getattr(model, "_harness_pad_aware", False):
        model.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
        model._harness_pad_aware = True
    return model


def _trainer_class(name: str):
    from trl import GRPOTrainer, RLOOTrainer

    base = GRPOTrainer if name == "grpo" else RLOOTrainer
    # A non-finite loss stops the run before the optimizer step that would take it in (as every trainer here).
    return type(f"Harness{base.__name__}", (GuardedTraining, base), {})


def prompt_dataset(prompts: list[str]):
    """The training prompts as TRL's standard (not conversational) prompt-only dataset."""
    from datasets import Dataset

    if not prompts:
        raise ConfigError("task.n_train_prompts: no training prompts; set task.n_train_prompts > 0")
    return Dataset.from_dict({"prompt": list(prompts)})


def build_trainer(
    policy,
    tok,
    prompts: list[str],
    reward_fn,
    cfg: OnlineRLPipeline,
    output_dir: str,
    *,
    seed: int = 0,
    use_cpu: bool = True,
    callbacks: list | None = None,
    logging_steps: int = 10,
    checkpoint_every: int = 0,
    precision: str = "fp32",
):
    """A (guarded) RLOO or GRPO trainer on ``prompts`` with ``reward_fn``. π_ref (when β > 0) is loaded by TRL from
    ``policy.config._name_or_path``: the caller makes sure that is π_SFT."""
    args = trainer_config(
        cfg,
        output_dir,
        seed=seed,
        use_cpu=use_cpu,
        logging_steps=logging_steps,
        checkpoint_every=checkpoint_every,
        precision=precision,
    )
    trainer = _trainer_class(algorithm(cfg))(
        model=pad_aware(policy),
        reward_funcs=[reward_fn],
        args=args,
        train_dataset=prompt_dataset(prompts),
        processing_class=tok,
        callbacks=callbacks or [],
    )
    if trainer.ref_model is not None:
        pad_aware(trainer.ref_model)
    return trainer


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


def run(ctx: RunContext) -> dict:
    """Train π_θ from π_SFT with RLOO or GRPO against r_φ or the gold reward; evaluate along the way. A job killed
    after a checkpoint continues from it (``pipelines.trainer_run``'s machinery)."""
    from pipelines.stages.sft import load_sft

    cfg: RLOOPipeline | GRPOPipeline = ctx.cfg.pipeline
    resume = checkpoint.last_trainer_checkpoint(ctx.folder, ctx.key)  # (folder, mark) of a killed attempt, or None
    saved = resume[1] if resume else None
    policy, tok, sft = load_sft(ctx)
    policy = disable_dropout(policy)
    # TRL builds π_ref itself, from the policy's _name_or_path: it must be π_SFT's folder, not a hub name.
    if str(policy.config._name_or_path) != str(sft.path):
        raise RuntimeError(
            f"π_SFT's config names {policy.config._name_or_path!r}, not its folder {sft.path}: TRL would "
            "load another model as the reference"
        )
    reference = load_frozen_reference(sft.path, tok, ctx.device, ctx.cfg.model.trust_remote_code)  # the evaluator's
    reward_fn, proxy = reward_function(ctx, tok)
    tracker = ctx.tracker(resume=saved["progress"] if saved else None)
    evaluation = FrontierEvaluation(
        ctx.evaluator(reference, tok, proxy=proxy),
        tracker,
        method=ctx.method,
        setting=ctx.setting,
        seed=ctx.cfg.seed,
    )
    if saved:
        evaluation.resume(saved)

    def compute(state) -> dict:
        # TRL counts the prompt + completion tokens of each generated batch; each is trained on num_iterations times
        return {
            "tokens_trained": state.num_input_tokens_seen * cfg.num_iterations,
            "tokens_generated": reward_fn.tokens_generated,
        }

    logs, callbacks = trainer_callbacks(ctx, tracker, evaluation, compute=compute)
    trainer = build_trainer(
        policy,
        tok,
        ctx.task.train_prompts,
        reward_fn,
        cfg,
        str(checkpoint.trainer_dir(ctx.folder)),
        seed=ctx.cfg.seed,
        use_cpu=ctx.device.type == "cpu",
        callbacks=callbacks,
        checkpoint_every=cfg.checkpoint_every,
        precision=ctx.precision,
    )
    log.info(
        "%s (β=%s, k=%d) for %d steps of %d completions (%d episodes)",
        ctx.method,
        cfg.beta,
        cfg.num_generations,
        cfg.max_steps,
        cfg.batch_size,
        cfg.episodes,
    )
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)

    facts = {
        "beta": cfg.beta,
        "num_generations": cfg.num_generations,
        "steps": trainer.state.global_step,
        "episodes": cfg.episodes,
        "train_loss": result.training_loss,
        "losses_finite": all(math.isfinite(x) for x in logs.losses + [result.training_loss]),
        "proxy_final": evaluation.rows[-1]["proxy_reward"],
        "tokens_generated": reward_fn.tokens_generated,
        "train_seconds": result.metrics.get("train_runtime"),
    }
    return finish(
        ctx,
        trainer.model,
        reference,
        tok,
        tracker,
        evaluation,
        facts,
        tail=f", {cfg.episodes} episodes ({facts['train_seconds']:.1f} s)",
    )
