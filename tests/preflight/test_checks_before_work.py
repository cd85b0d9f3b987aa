"""Issue 25's checks before work (step 4) and messages that name the right thing (step 5), through the command line
in-process (``harness.app.cli.main``; ``run_job`` replaced by a guard that fails the test if anything would train):
each case stops with exit status 2, one line on stderr, no traceback, no cache, no run or sweep folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.preflight.test_bad_inputs import GPT2, SECRET, _model_folder, assert_stopped

pytestmark = pytest.mark.battery


# ------------------------------------------------------------------------------------- numbers, strings, lists
VALUE_CASES = {
    "nan learning rate": (["sft.learning_rate=nan"], "sft.learning_rate: must be a finite number"),
    "infinite epochs": (["sft.epochs=inf"], "sft.epochs: must be a finite number"),
    "infinite kl_coef": (["pipeline=ppo", "pipeline.kl_coef=inf"], "pipeline.kl_coef: must be a finite number"),
    "nan beta": (["pipeline=dpo", "pipeline.beta=nan"], "pipeline.beta: must be a finite number"),
    "negative infinite margin": (["preferences.min_margin=-inf"], "preferences.min_margin: must be a finite"),
    "nan warmup (once unchecked)": (["sft.warmup_ratio=nan"], "sft.warmup_ratio: must be a finite number"),
    "nan eos penalty (once unchecked)": (
        ["pipeline=ppo", "pipeline.missing_eos_penalty=nan"],
        "pipeline.missing_eos_penalty: must be a finite",
    ),
    "warmup ratio of 1": (["sft.warmup_ratio=1.0"], "sft.warmup_ratio: must lie in [0, 1)"),
    "negative seed": (["seed=-1"], "seed: must be >= 0"),
    "empty cache_dir": (["cache_dir="], "cache_dir: is empty"),
    "quoted empty cache_dir": (["cache_dir=''"], "cache_dir: is empty"),
    "blank model name": (["model.name=' '"], "model.name: is empty"),
    "empty W&B project": (["logger.project="], "logger.project: is empty"),
    "empty list of N": (["pipeline=best_of_n", "pipeline.ns=[]"], "pipeline.ns: is an empty list"),
    "empty policy label": (["pipeline=evaluate", "policy=gpt2", "pipeline.label="], "pipeline.label: is empty"),
}


@pytest.mark.parametrize("argv, expected", VALUE_CASES.values(), ids=VALUE_CASES.keys())
def test_a_value_no_key_may_hold_stops_before_work(cli, tmp_path, argv, expected):
    code, err = cli(argv)
    assert_stopped(code, err, expected, tmp_path)


def test_an_empty_cache_dir_builds_nothing_in_the_current_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = cli(["cache_dir="])
    assert_stopped(code, err, "cache_dir: is empty", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- studies
STUDY_CASES = {
    "empty study": (["-m", "experiment=smoke", "study=[]"], "study: is an empty list"),
    "flat study list": (
        ["-m", "experiment=smoke", "study=['pipeline=dpo','pipeline=ppo']"],
        "study[0]: is 'pipeline=dpo', not a list of overrides",
    ),
    "flat study unquoted": (
        ["-m", "experiment=smoke", "study=[pipeline=dpo,pipeline=ppo]"],
        "a study is a list of jobs, each a list of quoted overrides",
    ),
    "empty study entry": (["-m", "experiment=smoke", "study=[[]]"], "study[0]: is an empty job"),
    "study entry not an override": (["-m", "experiment=smoke", "study=[[dpo]]"], "study[0]: holds 'dpo'"),
    "seeds as a number": (["-m", "experiment=smoke", "seeds=3"], "seeds: must be a list of seeds (got int 3)"),
    "empty seeds": (["-m", "experiment=smoke", "seeds=[]"], "seeds: is an empty list"),
    "negative seed in a study": (["-m", "experiment=smoke", "seeds=[0,-1]"], "seeds: holds -1"),
    "seed listed twice": (["-m", "experiment=smoke", "seeds=[1,1]"], "seeds: lists seed 1 twice"),
    "study outside a study": (["study=[['pipeline=dpo']]"], "study: is read by the study sweeper only"),
    "seeds in a plain sweep": (["-m", "seed=0,1", "seeds=[0,1]"], "seeds: is read by the study sweeper only"),
}


@pytest.mark.parametrize("argv, expected", STUDY_CASES.values(), ids=STUDY_CASES.keys())
def test_a_malformed_study_says_the_shape_expected(cli, tmp_path, argv, expected):
    code, err = cli(argv)
    assert_stopped(code, err, expected, tmp_path)


def _config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "myconf"
    (d / "experiment").mkdir(parents=True)
    (d / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - tiny_debug\nseed: 3\n")
    (d / "other.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 5\n")
    return d


CONFIG_DIR_CASES = {
    "--config-dir plain sweep": (["-m", "experiment=mine", "sft.epochs=1,0"], "[job 2: experiment=mine sft.epochs=0"),
    "--config-name plain sweep": (["--config-name", "other", "-m", "sft.epochs=1,0"], "[job 2: sft.epochs=0"),
    "--config-dir study": (
        ["-m", "experiment=smoke", "study=[['pipeline=dpo'],['pipeline=dpo','pipeline.beta=-1']]"],
        "pipeline.beta: must be > 0",
    ),
    "--config-dir single run": (["experiment=mine", "pipeline=ppo", "pipeline.cliprange=inf"], "pipeline.cliprange"),
}


@pytest.mark.parametrize("argv, expected", CONFIG_DIR_CASES.values(), ids=CONFIG_DIR_CASES.keys())
def test_every_job_is_checked_whatever_the_config_options(cli, tmp_path, argv, expected):
    """With --config-dir / --config-name, Hydra's command line is composed as Hydra will compose it and every job
    checked before the first (before: the second job's bad value was found after the first job trained)."""
    code, err = cli(["--config-dir", str(_config_dir(tmp_path)), *argv])
    assert_stopped(code, err, expected, tmp_path)
    assert "myconf" not in err[0]  # the folder is no part of the job's name


def test_a_missing_config_dir_is_one_line(cli, tmp_path):
    code, err = cli(["--config-dir", str(tmp_path / "nope"), "seed=1"])
    assert_stopped(code, err, "--config-dir: ", tmp_path)


# ------------------------------------------------------------------------------------------------- launchers
def test_slurm_launcher_without_slurm_stops_before_the_sweep_folder(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no sbatch on it
    code, err = cli(["-m", "experiment=smoke", "hydra/launcher=submitit_slurm"])
    assert_stopped(code, err, "hydra/launcher: submitit_slurm submits each job with Slurm's sbatch", tmp_path)


@pytest.mark.parametrize("n_jobs", [0, -1000])
def test_joblib_without_workers_stops_before_the_sweep_folder(cli, tmp_path, n_jobs):
    code, err = cli(["-m", "seed=0,1", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"])
    assert_stopped(code, err, f"hydra.launcher.n_jobs: {n_jobs} names no worker", tmp_path)


# ------------------------------------------------------------------------------------------ pipeline=evaluate
def test_a_reward_models_folder_is_not_evaluated_as_a_policy(checked, tmp_path):
    rm = _model_folder(tmp_path / "rm", {**GPT2, "architectures": ["GPT2ForSequenceClassification"], "num_labels": 1})
    code, err = checked({"pipeline": {"name": "evaluate", "policy": str(rm)}})
    assert_stopped(
        code, err, "is a GPT2ForSequenceClassification (config.json's architectures), not a causal", tmp_path
    )


@pytest.mark.parametrize(
    "config, expected",
    [
        ({**GPT2, "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257}, "has 50257 output logits"),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 300}, "is a llama model"),
    ],
    ids=["gpt2 vocabulary against tiny", "another family against tiny"],
)
def test_a_vocabulary_that_cannot_match_is_refused_before_sft(checked, tmp_path, config, expected):
    policy = _model_folder(tmp_path / "policy", config)
    code, err = checked({"pipeline": {"name": "evaluate", "policy": str(policy)}})
    assert_stopped(code, err, expected, tmp_path)


def test_a_causal_lm_with_tinys_vocabulary_passes_the_check(base_raw, tmp_path):
    """The check can pass: a GPT-2 causal LM with at most model.vocab_size logits is left to the exact comparison."""
    from harness.app.jobs import load
    from harness.preflight.checks import check_policy, not_a_causal_lm

    assert not_a_causal_lm({"architectures": ["GPT2LMHeadModel"]}) is None
    assert not_a_causal_lm({}) is None
    policy = _model_folder(tmp_path / "policy", {**GPT2, "architectures": ["GPT2LMHeadModel"], "vocab_size": 400})
    hc = load({**base_raw, "pipeline": {"name": "evaluate", "policy": str(policy)}})
    assert check_policy(hc) == 16  # its weight bytes: the check ran to its end


# ------------------------------------------------------------------------------------------------- messages
def test_an_unknown_pipeline_lists_the_methods_only(cli, tmp_path):
    code, err = cli(["pipeline=ppo2"])
    assert_stopped(code, err, "pipeline: no option 'ppo2'; choose one of", tmp_path)
    assert "_schema" not in err[0] and "dpo" in err[0]


@pytest.mark.parametrize(
    "value", ["/runs/0_pipeline=dpo,seed=1/policy", "/runs/a,b/policy"], ids=["with = and ,", "with ,"]
)
def test_an_unquoted_path_with_separators_gets_the_hint_to_quote_it(cli, tmp_path, value):
    code, err = cli(["pipeline=evaluate", f"policy={value}"])
    assert_stopped(code, err, f"quote it: \"policy='{value}'\"", tmp_path)


# -------------------------------------------------------------------------------------------------- secrets
def test_a_failing_study_job_is_named_by_index_with_its_secrets_hidden(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    code, err = cli(["-m", "experiment=smoke", f"logger.entity={SECRET}", "+wandb_api_key=plainsecret123"])
    assert_stopped(code, err, "[job 1: ", tmp_path)
    assert SECRET not in err[0] and "plainsecret123" not in err[0], err[0]


def test_a_failing_plain_sweep_job_hides_a_secret_looking_key(cli, tmp_path):
    code, err = cli(["-m", "seed=0,1", "+hub.token=hf_plainsecret456", "sft.epochs=0"])
    assert_stopped(code, err, "[job 1: ", tmp_path)
    assert "hf_plainsecret456" not in err[0] and "<redacted>" in err[0], err[0]


def test_a_single_runs_error_hides_a_secret_it_would_echo(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    code, err = cli([f"logger.entity=[{SECRET}"])  # a parse error echoes the override
    assert_stopped(code, err, "command line: cannot parse", tmp_path)
    assert SECRET not in err[0] and "<WANDB_API_KEY>" in err[0], err[0]


def test_overrides_are_redacted_alike_everywhere():
    from harness.runs.secrets import redact_overrides, secret_looking

    shown = redact_overrides(["pipeline.max_new_tokens=8", "+api_key=x1", "hydra.run.dir=/d", "cache_dir=/c", "seed=1"])
    assert shown == ["pipeline.max_new_tokens=8", "+api_key=<redacted>", "seed=1"]
    assert secret_looking("logger.hf_token") and not secret_looking("task.prompt_max_tokens")
    assert json.dumps(shown)  # plain strings
