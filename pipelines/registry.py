"""The method registry: one record per method (and per stage that ``pipeline=<name>`` runs), the one list of methods.

Adding a method is a record here, its module (the runner) and its YAML (``conf/pipeline/<name>.yaml``); nothing else
names it. The library reads everything it needs from the record (``harness/methods.py`` says what each field means):
the config schema, the runner, the stages it stands on, what it saves, its label and style on the frontier, its
family, the knobs that label its points, the batches it splits across processes. Imported by the composition root
(``harness/app``, the study sweeper); light (no torch, no trainer).
"""

from __future__ import annotations

from harness.methods import PREFERENCES, REWARD_MODEL, SFT, Method
from pipelines import schemas as S


# ---------------------------------------------------------------------- batches split across processes (see Method)
def _reward_model_batch(hc) -> list[tuple[int, str]]:
    return [(hc.reward_model.batch_size, "reward_model.batch_size")]


def _ppo_minibatch(hc) -> list[tuple[int, str]]:
    p = hc.pipeline
    return [(p.batch_size // p.num_minibatches, "pipeline.batch_size / pipeline.num_minibatches")]


def _ppo_batches(hc) -> list[tuple[int, str]]:
    return _reward_model_batch(hc) + _ppo_minibatch(hc)


def _trainer_batch(hc) -> list[tuple[int, str]]:
    """The TRL-trained methods whose batch the processes share (the others' loops are not split)."""
    return [(hc.pipeline.batch_size, "pipeline.batch_size")]


_PPO = dict(
    schema=S.PPOPipeline,
    runner="pipelines.ppo:run",
    knobs=("kl_coef",),
    saves_policy=True,
    rollout_prompts=True,
    labelled_budget_keys=("batch_size",),
)  # Xu et al.: PPO's batch is an ingredient
_DPO = dict(
    schema=S.DPOPipeline,
    runner="pipelines.dpo:run",
    stages=PREFERENCES,
    knobs=("beta",),
    saves_policy=True,
    process_batches=_trainer_batch,
)
_RL = dict(runner="pipelines.online_rl:run", knobs=("beta",), saves_policy=True)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # (the order is the report's: its tables and legends list methods as they come here)
        # RLHF with our PPO (pipelines/ppo.py), on the learned reward model or the gold reward itself
        Method(
            "ppo",
            stages=REWARD_MODEL,
            label="PPO (learned RM)",
            color="#D55E00",
            marker="s",
            family="online",
            process_batches=_ppo_batches,
            **_PPO,
        ),
        Method(
            "ppo_gt",
            stages=SFT,
            label="PPO-GT (gold reward)",
            color="#E69F00",
            marker="D",
            process_batches=_ppo_minibatch,
            **_PPO,
        ),
        # critic-free online RL with TRL's trainers
        Method(
            "rloo",
            S.RLOOPipeline,
            stages=REWARD_MODEL,
            label="RLOO (learned RM)",
            color="#7F3C8D",
            marker="p",
            family="online",
            **_RL,
        ),
        Method(
            "rloo_gt", S.RLOOPipeline, stages=SFT, label="RLOO-GT (gold reward)", color="#B07AA1", marker="<", **_RL
        ),
        Method(
            "grpo",
            S.GRPOPipeline,
            stages=REWARD_MODEL,
            label="GRPO (learned RM)",
            color="#117733",
            marker=">",
            family="online",
            **_RL,
        ),
        Method(
            "grpo_gt", S.GRPOPipeline, stages=SFT, label="GRPO-GT (gold reward)", color="#999933", marker="d", **_RL
        ),
        # the DPO family with TRL's DPOTrainer
        Method("dpo", label="DPO", color="#0072B2", marker="o", family="offline", **_DPO),
        Method("ipo", label="IPO", color="#56B4E9", marker="v", family="offline", **_DPO),
        Method("cdpo", label="cDPO", color="#009E73", marker="^", family="offline", **_DPO),
        # the DPO paper's baselines
        Method(
            "unlikelihood",
            S.UnlikelihoodPipeline,
            "pipelines.baselines:run_unlikelihood",
            stages=PREFERENCES,
            label="Unlikelihood",
            color="#CC79A7",
            marker="P",
            knobs=("alpha",),
        ),
        Method(
            "preferred_ft",
            S.PreferredFTPipeline,
            "pipelines.baselines:run_preferred_ft",
            stages=PREFERENCES,
            label="Preferred-FT",
            color="#8C564B",
            marker="X",
            process_batches=_trainer_batch,
        ),
        Method(
            "best_of_n",
            S.BestOfNPipeline,
            "pipelines.baselines:run_best_of_n",
            stages=REWARD_MODEL,
            label="Best of N",
            color="#555555",
            marker="*",
            gao_form="bon",
        ),
        # the methods after the paper that learn from pairs or fresh pairs
        Method(
            "kto",
            S.KTOPipeline,
            "pipelines.kto:run",
            stages=PREFERENCES,
            label="KTO",
            color="#882255",
            marker="8",
            family="offline",
            knobs=("beta",),
            saves_policy=True,
        ),
        Method(
            "online_dpo",
            S.OnlineDPOPipeline,
            "pipelines.online_dpo:run",
            stages=REWARD_MODEL,
            label="Online DPO",
            color="#44AA99",
            marker="H",
            family="online",
            knobs=("beta",),
            saves_policy=True,
            rollout_prompts=True,
        ),
        # π_SFT itself (the reference: one point at KL 0), and a checkpoint trained elsewhere put on the frontier
        Method(
            "sft",
            S.SFTPipeline,
            "pipelines.stages.sft:run",
            label="SFT",
            color="#000000",
            marker="h",
            family="reference",
        ),
        Method(
            "evaluate",
            S.EvaluatePipeline,
            "pipelines.evaluate:run",
            label="Evaluated checkpoint",
            color="#E73F74",
            marker="x",
            takes_policy=True,
        ),
        # the other stages, each a pipeline of its own (train or reuse it, print what it is)
        Method("preferences", S.PreferencesPipeline, "pipelines.stages.preferences:run", stages=PREFERENCES),
        Method(
            "reward_model",
            S.RewardModelPipeline,
            "pipelines.stages.reward_model:run",
            stages=REWARD_MODEL,
            process_batches=_reward_model_batch,
        ),
    )
}

# The report's headline comparisons, (method, rival): does DPO lie above PPO, and above PPO on the gold reward itself?
COMPARISONS = (("dpo", "ppo"), ("dpo", "ppo_gt"))
