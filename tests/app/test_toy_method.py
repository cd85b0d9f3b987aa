"""A method is one registry record, its module and its YAML: a toy method defined only here (a record, a schema and a
runner; a ConfigStore node stands in for its YAML) runs through ``pipeline=toy``, through a study, and appears in the
study's report with the default style, with no other file of the harness touched."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from harness.methods import DEFAULT_STYLE, Method
from pipelines.registry import METHODS
from pipelines.schemas import PipelineBase


@dataclass
class ToyPipeline(PipelineBase):
    """π_SFT with its logits scaled by ``scale`` (a sharper or flatter policy): one evaluation, one row."""

    name: str = "toy"
    scale: float = 1.0  # the knob that labels its points


def run_toy(ctx) -> dict:
    import copy

    import torch

    from harness.lm.models import freeze
    from pipelines.stages.sft import load_sft
    from pipelines.trainer_run import start_tracking

    reference, tok, _ = load_sft(ctx)
    freeze(reference)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        policy.get_output_embeddings().weight.mul_(ctx.cfg.pipeline.scale)
    tracker, evaluation = start_tracking(ctx, reference, tok)
    row = evaluation(policy, step=0)
    tracker.finish()
    return {"method": ctx.method, "setting": ctx.setting, "gold_reward": row["gold_reward"], "kl": row["kl"]}


TOY = Method("toy", ToyPipeline, f"{__name__}:run_toy", knobs=("scale",))


@pytest.fixture
def toy(monkeypatch):
    from hydra.core.config_store import ConfigStore

    import harness.app.cli  # noqa: F401  (registers the schemas of the registry's methods)

    monkeypatch.setitem(METHODS, "toy", TOY)
    ConfigStore.instance().store(group="pipeline", name="toy", node=ToyPipeline())  # its YAML, in memory
    yield TOY
    ConfigStore.instance().repo["pipeline"].pop("toy.yaml", None)


def _rows(folder):
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_a_toy_method_runs_as_a_pipeline_and_through_a_study_into_the_report(toy, tiny_cache_copy, tmp_path):
    from harness.app.cli import main

    common = [f"cache_dir={tiny_cache_copy}", "logger.wandb_mode=disabled"]  # π_SFT of the tiny config, built once
    main(["pipeline=toy", "experiment=tiny_debug", "pipeline.scale=2", *common, f"hydra.run.dir={tmp_path / 'one'}"])
    (row,) = _rows(tmp_path / "one")
    assert (row["method"], row["setting"], row["step"]) == ("toy", "scale=2.0", 0)
    assert 0 <= row["gold_reward"] <= 1 and row["kl"] > 0.01  # a sharper π_SFT is another policy

    sweep = tmp_path / "study"
    main(
        [
            "-m",
            "experiment=smoke",
            'study=[["pipeline=sft"],["pipeline=toy","pipeline.scale=0.5"]]',
            "hydra/launcher=basic",
            f"hydra.sweep.dir={sweep}",
            *common,
        ]
    )
    summary = (sweep / "summary.md").read_text()
    assert "| toy |" in summary  # its own name: a method the registry gives no label
    assert (sweep / "frontier.png").stat().st_size > 0
    assert toy.style == ("toy", *DEFAULT_STYLE)
