"""Bad input stops before any work with a one-line error naming the key; every config file composes."""

import json
from pathlib import Path

import pytest

from harness.app.cli import CONF_DIR
from harness.app.jobs import load as validate
from harness.fields import ConfigError
from tests.conftest import compose


def one_line_error(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate(compose(overrides))
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["task.name=netflix"], "task.name"),
        (["task.n_train=0"], "task.n_train"),
        (["task.n_eval_prompts=-3"], "task.n_eval_prompts"),
        (["task.prompt_min_tokens=9"], "task.prompt_min_tokens"),
        (["task.prompt_min_tokens=0"], "task.prompt_min_tokens"),
        (["model.n_layer=0"], "model.n_layer"),
        (["model.n_head=3"], "model.n_head"),
        (["eval.samples_per_prompt=0"], "eval.samples_per_prompt"),
        (["preferences.labels=coinflip"], "preferences.labels"),
        (["preferences.min_margin=-1"], "preferences.min_margin"),
        (["pipeline.name=ppo2"], "pipeline.name"),
        (["task=local"], "task.path"),
        (["+task.colour=red"], "task.colour"),
        (["sft.epochs=0"], "sft.epochs"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    msg = one_line_error(overrides, key)
    assert msg.startswith(key)


def every_config_choice():
    """Every option of every group but pipeline and experiment: tests/runs/test_job_keys.py composes and validates
    every pipeline with its defaults and every job of every experiment (each entry, each seed) against its golden
    identities."""
    root = Path(CONF_DIR)
    for group in ("task", "model", "gold", "eval", "logger"):
        for f in sorted((root / group).glob("*.yaml")):
            yield group, f.stem


@pytest.mark.parametrize("group, name", list(every_config_choice()))
def test_every_config_file_composes_and_validates(group, name):
    overrides = [f"{group}={name}"]
    if (group, name) == ("task", "local"):
        overrides.append("task.path=/tmp/reviews.jsonl")
    if (group, name) == ("gold", "reward_model"):  # the checkpoint is the user's to name
        overrides.append("gold.name_or_path=/tmp/reward_model")
    hc = validate(compose(overrides))
    assert hc.pipeline.name


def test_missing_required_value_is_named(tmp_path):
    msg = one_line_error(["task=local"], "task.path")
    assert "task.path" in msg


def _local(tmp_path, rows):
    p = tmp_path / "reviews.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def test_local_file_with_missing_column_or_empty_text_fails_before_training(tmp_path, run_pipeline):
    bad = _local(tmp_path, [{"review": "a fine film"}] * 5)
    with pytest.raises(ConfigError, match="task.text_column") as e:
        run_pipeline("sft", "task=local", f"task.path={bad}")
    assert "\n" not in str(e.value)
    empty = _local(tmp_path, [{"text": "a fine film"}, {"text": "  "}])
    with pytest.raises(ConfigError, match="empty"):
        run_pipeline("sft", "task=local", f"task.path={empty}")
    assert not (tmp_path / "cache" / "sft").exists() or not any((tmp_path / "cache" / "sft").glob("*/artifact.json"))


def test_unknown_model_name_fails_before_training(run_pipeline, tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        run_pipeline("sft", "model.name=no-such-model-anywhere")


@pytest.mark.slow  # a child Python process
def test_cli_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "task.n_train=0",
            f"cache_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/run",
            "logger.wandb_mode=disabled",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: task.n_train")


@pytest.mark.parametrize("experiment", ["real_model", "real_model_smoke"])
def test_the_real_model_studies_give_each_method_its_pretrained_model_knobs(experiment):
    """Both studies run SmolLM2 with the rates of a pretrained model, from one preset per method (the smoke study's
    presets name the full study's), not the tiny model's 1e-3-scale defaults."""
    ppo = validate(compose([f"experiment={experiment}", "pipeline=ppo"]))
    dpo = validate(compose([f"experiment={experiment}", "pipeline=dpo"]))
    sft = validate(compose([f"experiment={experiment}", "pipeline=sft"]))
    assert ppo.model.gguf and ppo.model.name == "SmolLM2-135M-Instruct"
    assert (ppo.pipeline.learning_rate, ppo.pipeline.critic_learning_rate, ppo.pipeline.ppo_epochs) == (4e-5, 5e-5, 1)
    assert (dpo.pipeline.learning_rate, dpo.pipeline.max_steps) == (5e-5, 24)
    assert sft.sft.learning_rate == 1e-4 and sft.reward_model.learning_rate == 3e-5
