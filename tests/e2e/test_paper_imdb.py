"""``experiment=paper_imdb`` (the DPO paper's §6.1 study) end to end through the command line, on tiny local stand-ins
in the real formats, and its stop before training when the hub is off.

The stand-ins are what the paper's names resolve to, only small: a GPT-2 saved with ``save_pretrained`` whose tokenizer
is a GPT-2-style byte-level BPE with no pad token (``GPT2TokenizerFast``, as ``gpt2-large``); an IMDb-shaped
``DatasetDict`` (train/test, ``text``/``label``, the test split sorted by label as IMDb's is) written with
``save_to_disk``; a ``RobertaForSequenceClassification`` with NEGATIVE/POSITIVE labels and a RoBERTa tokenizer (as
``siebert/sentiment-roberta-large-english``). The command changes only where these live and the budgets.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the study runs in a child process (900 s at most)
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


def _reviews(n: int, seed: int) -> list[str]:
    """Movie reviews from the embedded generator, some with IMDb's HTML line breaks."""
    from harness.data.tasks import generate_reviews

    texts = generate_reviews(n, seed)
    return [t.replace(". ", ". <br /><br />", 1) if i % 3 == 0 else t for i, t in enumerate(texts)]


def build_imdb(path: Path, n_train: int = 240, n_test: int = 80) -> Path:
    """train/test splits with ``text`` and a ClassLabel ``label`` (neg, pos); the test split sorted by label, as IMDb's
    is."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})

    def split(texts: list[str], by_label: bool) -> Dataset:
        labels = [int(vader.polarity_scores(t)["compound"] >= 0) for t in texts]
        rows = sorted(zip(labels, texts)) if by_label else list(zip(labels, texts))
        return Dataset.from_dict({"text": [t for _, t in rows], "label": [y for y, _ in rows]}, features=features)

    DatasetDict(train=split(_reviews(n_train, 1), False), test=split(_reviews(n_test, 2), True)).save_to_disk(str(path))
    return path


def _byte_level_bpe(texts: list[str], special: list[str], folder: Path, vocab_size: int = 400) -> tuple[str, str]:
    """vocab.json and merges.txt of a byte-level BPE trained on ``texts`` (GPT-2's and RoBERTa's tokenizer kind)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=special, show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(folder))
    return vocab, merges


def build_gpt2(path: Path, corpus: list[str]) -> Path:
    """A GPT-2 as ``gpt2-large`` is stored: config.json, weights and a GPT-2 tokenizer with EOS and no pad token."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    vocab, merges = _byte_level_bpe(corpus, ["<|endoftext|>"], path / "bpe")
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert tok.pad_token is None and tok.eos_token == "<|endoftext|>"
    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_positions=1024,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(conf).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_classifier(path: Path, corpus: list[str]) -> Path:
    """A RoBERTa sequence classifier as siebert's is stored, labels NEGATIVE/POSITIVE, with its RoBERTa tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    vocab, merges = _byte_level_bpe(corpus, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], path / "bpe")
    tok = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=512)
    torch.manual_seed(0)
    conf = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    RobertaForSequenceClassification(conf).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("paper_imdb")
    corpus = _reviews(300, 3)
    return {
        "imdb": build_imdb(d / "imdb"),
        "model": build_gpt2(d / "gpt2", corpus),
        "gold": build_classifier(d / "siebert", corpus),
        "root": d,
    }


# ------------------------------------------------------------------------------------------------ end to end
# One setting per method of the paper's grid. The offline methods keep the paper's budget, one epoch at batch 64 (216
# pairs here: 4 steps); PPO gets 2 updates of 16 episodes. Every other knob of each method (rates, batch, the KL
# controller, lengths) comes from conf/preset/, as in the real run.
STUDY = [
    ["pipeline=sft"],
    ["pipeline=preferred_ft"],
    ["pipeline=dpo", "pipeline.beta=0.1"],
    ["pipeline=unlikelihood", "pipeline.alpha=0.5"],
    ["pipeline=ppo_gt", "pipeline.target_kl=6", "pipeline.updates=2", "pipeline.batch_size=16"],
    ["pipeline=ppo", "pipeline.target_kl=6", "pipeline.updates=2", "pipeline.batch_size=16"],
]
# PPO's batch labels its points once set (one of Xu et al. 2024's ingredients, schemas.PPOPipeline.labelled_budget_keys):
# the test's cut shows; the preset's own knobs label nothing.
SETTINGS = {
    ("sft", ""),
    ("preferred_ft", ""),
    ("dpo", "beta=0.1"),
    ("unlikelihood", "alpha=0.5"),
    ("ppo_gt", "target_kl=6.0,batch_size=16"),
    ("ppo", "target_kl=6.0,batch_size=16"),
}


def _env() -> dict:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def _study_override(study: list[list[str]]) -> str:
    return "study=[" + ",".join("[" + ",".join(f'"{o}"' for o in entry) + "]" for entry in study) + "]"


@pytest.fixture(scope="module")
def paper_run(stand_ins):
    d = stand_ins["root"]
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "experiment=paper_imdb",
        # where the stand-ins live (the paper's hub names otherwise)
        f"model.name={stand_ins['model']}",
        f"task.path={stand_ins['imdb']}",
        f"gold.name_or_path={stand_ins['gold']}",
        # the budgets: prompts, evaluation interval, and the study's entries
        "task.n_train_prompts=40",
        "task.n_eval_prompts=8",
        "eval.every=2",
        _study_override(STUDY),
        f"cache_dir={d / 'cache'}",
        f"hydra.sweep.dir={d / 'sweep'}",
        "logger.wandb_mode=offline",
        "threads=1",
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return d / "sweep", d / "cache", run


def test_paper_study_runs_every_method_and_writes_the_report(paper_run):
    sweep, _, run = paper_run
    assert "study finished: 6 jobs" in run.stdout
    for name in ("frontier.png", "points.csv", "summary.md"):
        assert (sweep / name).stat().st_size > 0, name
    rows = list(csv.DictReader((sweep / "points.csv").open()))
    # the preset knobs (learning rates, batch, KL controller) label nothing: only the grid's own knob (and the cut batch)
    assert {(r["method"], r["setting"]) for r in rows} == SETTINGS
    steps = {m: {int(r["step"]) for r in rows if r["method"] == m} for m, _ in SETTINGS}
    assert steps["sft"] == {0}
    assert steps["ppo"] == steps["ppo_gt"] == {0, 2}  # step 0, every eval.every=2 updates, the end
    for method in ("dpo", "unlikelihood", "preferred_ft"):  # one epoch: ceil(216 pairs / 64) = 4 optimizer steps
        assert steps[method] == {0, 2, 4}, method
    assert "gpt2-large on IMDb" in (sweep / "summary.md").read_text()
    # job folders are named by what tells the jobs apart, not by where the model, data and gold live
    assert not [p for p in sweep.iterdir() if "name_or_path" in p.name or "model.name" in p.name or "study=" in p.name]


def _job_config(sweep: Path, method: str) -> dict:
    import yaml

    folders = [p for p in sweep.iterdir() if p.is_dir() and f"pipeline={method}," in p.name + ","]
    assert len(folders) == 1, [p.name for p in sweep.iterdir()]
    return yaml.safe_load((folders[0] / "config.yaml").read_text())


def test_paper_knobs_reach_each_method(paper_run, stand_ins):
    """The saved config of each job holds the paper's setting: the stand-ins by path, the stages' and the method's
    knobs from the experiment and conf/preset/, the study's budget on top."""
    sweep, *_ = paper_run
    dpo = _job_config(sweep, "dpo")
    assert dpo["model"]["name"] == str(stand_ins["model"])
    assert dpo["task"] | {"name": "imdb", "path": str(stand_ins["imdb"])} == dpo["task"]
    assert dpo["gold"]["kind"] == "hf_classifier" and dpo["gold"]["name_or_path"] == str(stand_ins["gold"])
    assert (dpo["task"]["prompt_min_tokens"], dpo["task"]["prompt_max_tokens"]) == (2, 8)
    assert dpo["preferences"]["samples_per_prompt"] == 4 and dpo["eval"]["max_new_tokens"] == 64
    assert dpo["sft"]["epochs"] == 1 and dpo["reward_model"]["epochs"] == 3
    assert (
        dpo["pipeline"] | {"beta": 0.1, "learning_rate": 1e-6, "batch_size": 64, "epochs": 1, "max_steps": 0}
        == dpo["pipeline"]
    )
    for method in ("unlikelihood", "preferred_ft"):
        pipe = _job_config(sweep, method)["pipeline"]
        assert (pipe["learning_rate"], pipe["batch_size"]) == (1e-6, 64), method
    for method in ("ppo", "ppo_gt"):
        pipe = _job_config(sweep, method)["pipeline"]
        assert pipe["target_kl"] == 6 and pipe["kl_coef"] == 0.2 and pipe["horizon"] == 10000, method
        assert (pipe["learning_rate"], pipe["ppo_epochs"], pipe["vf_coef"], pipe["updates"]) == (1.41e-5, 4, 0.1, 2)


def test_gpt2_tokenizer_without_pad_gets_its_own(paper_run):
    """GPT-2 has no pad token: π_SFT's tokenizer gets one distinct from EOS, and the model an embedding row for it."""
    _, cache, _ = paper_run
    from transformers import AutoConfig, AutoTokenizer

    (sft,) = [p for p in (cache / "sft").iterdir() if p.is_dir()]
    tok = AutoTokenizer.from_pretrained(str(sft))
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert AutoConfig.from_pretrained(str(sft)).vocab_size >= len(tok)


def test_imdb_test_split_sorted_by_label_gives_prompts_from_both_labels(stand_ins):
    """IMDb's test split is sorted by label; the held-out reviews (evaluation prompts) must not all be negative."""
    from datasets import load_from_disk

    from harness.config import TaskConfig
    from harness.data.tasks import load_task

    test = load_from_disk(str(stand_ins["imdb"]))["test"]
    negatives = sum(1 for y in test["label"] if y == 0)
    assert list(test["label"]) == sorted(test["label"]) and 0 < negatives < len(test)
    data = load_task(
        TaskConfig(name="imdb", path=str(stand_ins["imdb"]), n_heldout=negatives, n_train_prompts=40, n_eval_prompts=8)
    )
    label_of = {" ".join(t.split()): y for t, y in zip(test["text"], test["label"])}
    assert {label_of[t] for t in data.heldout_texts} == {0, 1}


# ------------------------------------------------------------------------------------------- the hub is off
def _stopped(run: subprocess.CompletedProcess, key: str, tmp: Path) -> None:
    """Exit 2, one line naming ``key``, nothing trained or written."""
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1, run.stderr[-2000:]
    assert err[0].startswith("error: ") and key in err[0], err[0]
    assert "] start " not in run.stdout and "trained" not in run.stdout + run.stderr
    assert not (tmp / "cache").exists() and not (tmp / "sweep").exists()


def test_paper_gold_by_hub_name_with_the_hub_off_stops_before_training(stand_ins, tmp_path):
    """gold=siebert (the paper's hub name), no hub and no local copy: one line before π_SFT trains."""
    hub = tmp_path / "empty_hub"  # a hub cache with nothing in it, whatever this machine has cached
    env = {**_env(), "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp_path / "hf_home")}
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "experiment=paper_imdb",
        "gold=siebert",
        f"model.name={stand_ins['model']}",
        f"task.path={stand_ins['imdb']}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "logger.wandb_mode=disabled",
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _stopped(run, "gold.name_or_path: 'siebert/sentiment-roberta-large-english' is not a local folder", tmp_path)
    assert "[job 1: pipeline=sft" in run.stderr


@pytest.mark.parametrize(
    "given, key",
    [
        ({}, "model.name: 'gpt2-large' is not a local folder"),
        (
            {"model.name": "model", "gold.name_or_path": "gold"},
            "task.path: dataset 'stanfordnlp/imdb' is not on this machine",
        ),
    ],
    ids=["model by hub name", "dataset by hub name"],
)
def test_every_hub_name_of_the_paper_is_checked(stand_ins, tmp_path, monkeypatch, capsys, given, key):
    """The base model and the IMDb dataset by their hub names are checked like the classifier (in-process)."""
    import harness.app.cli as app

    def no_training(*args, **kwargs):
        raise AssertionError("reached run_job: it would have trained")

    monkeypatch.setattr(app, "run_job", no_training)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_datasets"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "empty_datasets")
    argv = [
        "experiment=paper_imdb",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "logger.wandb_mode=disabled",
        *(f"{k}={stand_ins[v]}" for k, v in given.items()),
    ]
    with pytest.raises(SystemExit) as e:
        app.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and key in err[0], err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "sweep").exists()
