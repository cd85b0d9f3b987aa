"""What the frontier evaluations cost a DPO run: optimizer steps/s with the evaluator on vs off.

The same DPO job (the embedded default unless overridden) is trained ``--rounds`` times with the shared evaluator at
step 0, every ``eval.every`` steps and at the end, and ``--rounds`` times without it, alternating on/off so that other
load on the machine hits both alike. Steps/s counts the whole ``trainer.train()`` (evaluations included when on).

    python benchmarks/eval_overhead.py                      # default config, threads=1
    python benchmarks/eval_overhead.py --rounds 5 eval.every=20 pipeline.max_steps=100

Target (issue 4): evaluation on is at most 15% slower at the default ``eval.every``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs, alternating (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers here as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. eval.every=20 (default: threads=1)")
    args = parser.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_dir

    from harness.app.cli import CONF_DIR
    from harness.app.jobs import load as validate
    from harness.app.jobs import resolved
    from harness.eval.evaluator import Evaluator
    from harness.runs.context import RunContext
    from pipelines.dpo import build_trainer
    from pipelines.stages.preferences import ensure_preferences, load_pairs
    from pipelines.stages.sft import load_sft
    from pipelines.trainer_run import EvaluationCallback, FrontierEvaluation, check_pairs, load_frozen_reference

    overrides = ["pipeline=dpo", "logger.wandb_mode=disabled", "threads=1", *args.overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hc = validate(compose(config_name="config", overrides=overrides))
    hc.raw = resolved(hc)
    if hc.threads > 0:
        torch.set_num_threads(hc.threads)
    work = Path(tempfile.mkdtemp(prefix="eval_overhead-"))
    ctx = RunContext(cfg=hc, folder=work)
    cfg = hc.pipeline

    _, tok, sft = load_sft(ctx)
    train = check_pairs(load_pairs(ensure_preferences(ctx))["train"], tok, cfg.max_length)
    reference = load_frozen_reference(sft.path, tok, ctx.device)
    evaluator = Evaluator(reference, tok, ctx.task.eval_prompts, ctx.gold, hc.eval)

    def one_run(with_eval: bool, i: int) -> tuple[float, int, int]:
        policy = load_sft(ctx)[0]
        callbacks = []
        evaluation = None
        if with_eval:
            ctx.folder = work / f"run{i}"
            evaluation = FrontierEvaluation(evaluator, ctx.tracker(), method="dpo", setting=ctx.setting, seed=hc.seed)
            callbacks.append(EvaluationCallback(evaluation, hc.eval.every))
        trainer = build_trainer(
            policy,
            reference,
            tok,
            train,
            cfg,
            str(work / "_trainer"),
            seed=hc.seed,
            use_cpu=ctx.device.type == "cpu",
            callbacks=callbacks,
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        return seconds, trainer.state.global_step, len(evaluation.rows) if evaluation else 0

    results = {"on": [], "off": []}
    for r in range(args.rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):  # alternate which goes first
            seconds, steps, evals = one_run(mode == "on", r)
            results[mode].append(
                {"seconds": seconds, "steps": steps, "evaluations": evals, "steps_per_s": steps / seconds}
            )
            load = os.getloadavg()[0]  # a contended number shows here (the box is shared)
            results[mode][-1]["load_1min"] = load
            print(
                f"round {r} eval {mode:3s}: {steps} steps in {seconds:6.2f} s = {steps / seconds:6.2f} steps/s"
                + (f" ({evals} evaluations)" if evals else "")
                + f"  [load {load:.2f}]",
                flush=True,
            )

    on = statistics.median(x["steps_per_s"] for x in results["on"])
    off = statistics.median(x["steps_per_s"] for x in results["off"])
    summary = {
        "config": {
            "eval.every": hc.eval.every,
            "max_steps": cfg.max_steps,
            "batch_size": cfg.batch_size,
            "eval_prompts": len(ctx.task.eval_prompts),
            "eval.samples_per_prompt": hc.eval.samples_per_prompt,
            "eval.max_new_tokens": hc.eval.max_new_tokens,
            "threads": hc.threads,
        },
        "steps_per_s_eval_on": on,
        "steps_per_s_eval_off": off,
        "slowdown": 1 - on / off,
        "runs": results,
    }
    print(
        f"\nmedian steps/s: eval off {off:.2f}, eval on {on:.2f} -> {100 * (1 - on / off):.1f}% slower "
        f"(eval.every={hc.eval.every}; target <= 15%)"
    )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
