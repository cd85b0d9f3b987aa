"""The one namespace scheme of every method's per-step metrics (W&B; PPO's also in the run folder's updates.jsonl).

A metric is named ``<namespace>/<name>``, the namespace saying which part of the method it measures:

  objective/  what the update optimises: losses (objective/loss, PPO's objective/policy_loss), KL terms
              (objective/kl, objective/kl_k3, objective/non_score_reward, objective/rlhf_reward) and the KL
              coefficient (objective/kl_coef: PPO's β_KL, TRL's ``beta``)
  policy/     the policy and its step: entropy, clip fractions, approximate KL of the update, ratios, log-probs and
              lengths of its samples, gradient norm, learning rate
  critic/     PPO's value function V_ψ: value loss, value clip fraction, explained variance, mean value
  rewards/    the reward signal: scores (raw and normalised), the DPO family's implicit rewards (TRL's rewards/*),
              advantages, returns
  compute/    training compute and throughput: tokens generated and trained, episodes per second
  train/      the trainer's bookkeeping (epoch, runtime, ...) and the W&B step (train/step)
  eval/       TRL's validation metrics (its ``eval_*`` logs), when a trainer evaluates held-out pairs
  frontier/   the evaluator's points: the numeric fields of each result row (``Tracker.log_point``)

PPO names its metrics in these namespaces itself (``pipelines.ppo``); the trainer-based methods' logs pass through
:func:`namespaced` (``pipelines.trainer_run.TrackerCallback``). Light on purpose (no torch). The result rows of
points.jsonl (method, setting, seed, step, kl, gold_reward, ...) are not per-step metrics and keep their fields.
"""

from __future__ import annotations

NAMESPACES = {
    "objective": "losses, KL terms and the KL coefficient",
    "policy": "the policy's update: entropy, clip fractions, approximate KL, ratios, log-probs, lengths, gradient norm",
    "critic": "the value function: value loss, value clip fraction, explained variance, mean value",
    "rewards": "scores (raw, normalised), implicit rewards, advantages, returns",
    "compute": "tokens generated and trained, throughput",
    "train": "the trainer's bookkeeping (epoch, runtime) and the W&B step",
    "eval": "TRL's validation metrics",
    "frontier": "the evaluator's points (the result rows)",
}

# TRL's / transformers' log keys -> our names. Keys with a "/" that are not here keep their names when their prefix
# is one of ours (TRL's rewards/*, objective/*), move under policy/ when they describe the policy's samples
# (_POLICY_PREFIXES); other un-namespaced keys go to train/.
TRL_KEYS = {
    "loss": "objective/loss",
    "aux_loss": "objective/aux_loss",
    "policy_loss": "objective/policy_loss",  # GRPO
    "kl": "objective/kl",  # GRPO, RLOO, KTO
    "beta": "objective/kl_coef",  # online DPO
    "grad_norm": "policy/grad_norm",
    "learning_rate": "policy/learning_rate",
    "entropy": "policy/entropy",  # mean per token
    "mean_token_accuracy": "policy/mean_token_accuracy",
    "objective/entropy": "policy/sequence_entropy",  # online DPO: summed over the completion, as PPO's
    "reward": "rewards/mean",  # RLOO, GRPO: the sum of the reward functions (ours: one, rewards/score/*)
    "reward_std": "rewards/std",
    "frac_reward_zero_std": "rewards/frac_zero_std",
    "objective/scores": "rewards/scores",  # online DPO
    "objective/scores_margin": "rewards/scores_margin",
    "val/contain_eos_token": "rewards/contain_eos_token",  # online DPO: the share of completions that end in EOS
    "num_tokens": "compute/num_tokens",
}
_POLICY_PREFIXES = ("logps/", "logits/", "clip_ratio/", "completions/", "sampling/")


def metric_name(key: str) -> str:
    """Our name of one TRL / transformers training-log key (see :data:`TRL_KEYS`)."""
    if key in TRL_KEYS:
        return TRL_KEYS[key]
    if key.startswith(_POLICY_PREFIXES):
        return f"policy/{key}"
    return key if "/" in key else f"train/{key}"


def namespaced(logs: dict) -> dict:
    """A trainer's log (numbers only) under our names; its validation logs (``eval_<key>``) under ``eval/<key>``."""
    out = {}
    for k, v in logs.items():
        if not isinstance(v, (int, float)):
            continue
        out["eval/" + k[len("eval_") :] if k.startswith("eval_") else metric_name(k)] = v
    return out
