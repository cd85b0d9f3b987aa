"""``pipeline=evaluate``: a saved checkpoint on the frontier, with the evaluator, π_ref, prompts and seed of every method.

The acceptance test trains a tiny DPO job through the CLI, takes the policy it saved with ``save_pretrained``, and
evaluates that folder through the CLI as a study entry ``[pipeline=evaluate, policy=<folder>]``: the row must
reproduce the DPO run's last row (same seed -> same sampling seed -> the same samples) within that row's SEM.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.app.jobs import load as validate
from harness.fields import ConfigError
from tests.conftest import compose

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)  # command lines in child processes, 300 s each at most
ENV = {
    **os.environ,
    "WANDB_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def harness_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory):
    """A finished tiny DPO job (a learning rate that moves the policy in 3 steps) under <tmp>/study/dpo, on a copy of
    the session's stage cache (<tmp>/cache: the evaluation's study shares it)."""
    from tests.conftest import copy_stage_cache

    tmp = tmp_path_factory.mktemp("evaluate")
    copy_stage_cache(tiny_cache, tmp / "cache")
    done = harness_cli(
        "pipeline=dpo",
        "experiment=tiny_debug",
        "pipeline.max_steps=3",
        "pipeline.batch_size=16",
        "pipeline.learning_rate=5e-3",
        f"cache_dir={tmp / 'cache'}",
        f"hydra.run.dir={tmp / 'study' / 'dpo'}",
        "threads=1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


def test_saved_policy_reproduces_the_runs_last_row(trained):
    from transformers import AutoModelForCausalLM

    from harness.eval.row import REQUIRED_KEYS
    from harness.report.make import make_report
    from pipelines.registry import COMPARISONS, METHODS

    policy = trained / "study" / "dpo" / "policy"
    AutoModelForCausalLM.from_pretrained(str(policy))  # researchers load it as any checkpoint
    last = rows(trained / "study" / "dpo" / "points.jsonl")[-1]
    assert last["method"] == "dpo" and last["step"] == 3 and last["kl"] > 0.01  # the policy moved away from π_SFT

    # As a study entry (the study sweeper, its checks, the stage cache shared with the DPO job), with a label.
    done = harness_cli(
        "-m",
        "experiment=tiny_debug",
        "hydra/sweeper=study",
        "seeds=[0]",
        f"hydra.sweep.dir={trained / 'study' / 'eval'}",
        f'study=[["pipeline=evaluate","policy={policy}","pipeline.label=dpo_run"]]',
        f"cache_dir={trained / 'cache'}",
        "threads=1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (point_file,) = (trained / "study" / "eval").rglob("points.jsonl")
    (row,) = rows(point_file)
    assert (row["method"], row["setting"], row["seed"]) == ("evaluate", "policy=dpo_run", 0)
    assert set(REQUIRED_KEYS) <= set(row) and set(row) == set(last)  # the same schema as every method's rows
    assert abs(row["gold_reward"] - last["gold_reward"]) <= last["gold_reward_sem"]
    assert abs(row["kl"] - last["kl"]) <= last["kl_sem"]
    evidence = [
        rows(p)[-1] for p in (trained / "study" / "dpo" / "evidence.jsonl", point_file.with_name("evidence.jsonl"))
    ]
    assert evidence[0]["prompts_key"] == evidence[1]["prompts_key"]  # the same held-out prompts, prompt by prompt

    # The report places it beside DPO, as a method of its own.
    paths = make_report(trained / "study", METHODS, COMPARISONS, n_boot=50)
    summary = Path(paths["summary_md"]).read_text()
    assert "Evaluated checkpoint" in summary and "DPO" in summary  # the registry's label for method evaluate


@pytest.mark.slow  # a child Python process
def test_a_missing_checkpoint_is_one_line_before_any_work(tmp_path):
    done = harness_cli(
        "pipeline=evaluate",
        f"policy={tmp_path / 'no_such_checkpoint'}",
        "experiment=tiny_debug",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: policy:") and "does not exist" in lines[0], done.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_a_checkpoint_with_another_vocabulary_is_refused(trained, tmp_path):
    """A checkpoint with a tokenizer of its own that is not π_SFT's: one ConfigError, before its weights load."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.app.jobs import run_job
    from harness.data.tasks import load_task
    from harness.lm.models import train_tokenizer

    cfg = compose(
        [
            "pipeline=evaluate",
            f"policy={tmp_path / 'other'}",
            "experiment=tiny_debug",
            f"cache_dir={trained / 'cache'}",
            "logger.wandb_mode=disabled",
        ]
    )
    task = load_task(validate(cfg).task)
    tok = train_tokenizer(task.train_texts, 300)  # π_SFT's has 400 tokens
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=96, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(
        ConfigError, match=r"policy: .* does not have π_SFT's vocabulary \(its tokenizer has 300 tokens"
    ):
        run_job(cfg, tmp_path / "job")
    assert not (tmp_path / "job" / "points.jsonl").exists()


def word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0], pad_token=words[1])


def test_vocabulary_mismatch_names_what_differs():
    from pipelines.evaluate import vocabulary_mismatch

    words = ["<unk>", "<pad>", "good", "bad", "film"]
    tok = word_tokenizer(words)
    assert vocabulary_mismatch(tok, word_tokenizer(words), 5, 5) is None
    assert vocabulary_mismatch(tok, tok, None, 5) is None  # output rows unknown: the tokenizers decide
    assert vocabulary_mismatch(tok, tok, 64, 5) == "it has 64 output logits, π_SFT 5"  # e.g. padded embedding rows
    swapped = word_tokenizer(["<unk>", "<pad>", "bad", "good", "film"])
    assert vocabulary_mismatch(swapped, tok, 5, 5) == "token 'good' has id 3 in its tokenizer, id 2 in π_SFT's"
    assert vocabulary_mismatch(word_tokenizer(words + ["plot"]), tok, 6, 5) == "its tokenizer has 6 tokens, π_SFT's 5"


def test_policy_is_read_by_evaluate_only(tmp_path):
    with pytest.raises(ConfigError, match="policy: is read by pipeline=evaluate only"):
        validate(compose(["pipeline=dpo", f"policy={tmp_path}", "experiment=tiny_debug"]))
    with pytest.raises(ConfigError, match="policy: pipeline=evaluate needs the checkpoint"):
        validate(compose(["pipeline=evaluate", "experiment=tiny_debug"]))
    hc = validate(compose(["pipeline=evaluate", "pipeline.policy=org/some-model", "experiment=tiny_debug"]))
    assert hc.pipeline.policy == "org/some-model" and hc.method.setting(hc.pipeline) == "policy=some-model"
    assert hc.pipeline.checkpoint_stamp is None  # a hub name


def test_a_checkpoint_saved_again_is_a_new_job_not_a_reused_one(tmp_path):
    from harness.app.jobs import job_key, resolved

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)

    def key():
        hc = validate(compose(["pipeline=evaluate", f"policy={tmp_path}", "experiment=tiny_debug"]))
        hc.raw = resolved(hc)
        return job_key(hc), hc.method.setting(hc.pipeline)

    first = key()
    assert key() == first  # the same files: the same job (a rerun reuses it)
    (tmp_path / "model.safetensors").write_bytes(b"1" * 12)  # saved again, e.g. a later step under the same path
    second = key()
    assert second[0] != first[0] and second[1] == first[1]  # a new job, the same label on the frontier
