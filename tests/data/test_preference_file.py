"""Your own preference data (``preferences.source=file``): a file in TRL's standard format runs ``pipeline=dpo`` and
``pipeline=ppo`` (through the reward model fitted on the file's pairs) end to end through the command line on the tiny
model, a conversational file runs DPO with a reward-model checkpoint as the gold reward, the file's formats and
containers read alike, and every bad file stops before training with one line naming the row and the column."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.app.cli as app
from harness.data.preference_file import (
    load_preference_file,
    render_plain,
    render_template,
    shared_text_prompt,
    split_prompts,
)
from harness.data.tasks import _NEG_ADJ, _PARTS, _POS_ADJ
from harness.fields import ConfigError

BUDGET = [
    "experiment=tiny_debug",
    "task.n_train=160",
    "task.n_heldout=40",
    "preferences.eval_fraction=0.2",
    "eval.every=2",
    "threads=1",
    "logger.wandb_mode=disabled",
]


# ------------------------------------------------------------------------------------------------------ fixtures
def _standard(n_parts: int = len(_PARTS)) -> list[dict]:
    """Two review-like pairs per prompt ("The plot was" + " great and fresh." over " dull and flat.")."""
    rows = []
    for i, part in enumerate(_PARTS[:n_parts]):
        for j in range(2):
            pos = [_POS_ADJ[(i + k + j) % len(_POS_ADJ)] for k in (0, 5)]
            neg = [_NEG_ADJ[(i + k + 3 * j) % len(_NEG_ADJ)] for k in (0, 7)]
            rows.append(
                {
                    "prompt": f"The {part} was",
                    "chosen": f" {pos[0]} and {pos[1]}.",
                    "rejected": f" {neg[0]} and {neg[1]}.",
                }
            )
    return rows


def _conversational(rows: list[dict]) -> list[dict]:
    def say(role, text):
        return [{"role": role, "content": text}]

    return [
        {
            "prompt": say("user", f"How was it? {r['prompt']}..."),
            "chosen": say("assistant", r["chosen"].strip()),
            "rejected": say("assistant", r["rejected"].strip()),
        }
        for r in rows
    ]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _gold_reward_model(folder: Path) -> Path:
    """A GPT-2-style sequence classifier with one output (num_labels=1), random weights: a reward-model checkpoint."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from harness.lm.models import train_tokenizer

    tok = train_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in _standard()], 300)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=128,
            n_embd=16,
            n_layer=1,
            n_head=2,
            num_labels=1,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("preference_files")
    std = _standard()
    return {
        "standard": _jsonl(d / "standard.jsonl", std),
        "conversational": _jsonl(d / "conv.jsonl", _conversational(std)),
        "gold_rm": _gold_reward_model(d / "gold_rm"),
        "dir": d,
        "cache": d / "cache",
    }


def _harness(argv: list[str], folder: Path, cache: Path) -> dict:
    """``python -m harness <argv>``, in this process; returns the job's result."""
    app.main([*argv, *BUDGET, f"cache_dir={cache}", f"hydra.run.dir={folder}"])
    return json.loads((folder / "done.json").read_text())["result"]


def _artifact(cache: Path, stage: str) -> tuple[Path, dict]:
    (folder,) = [p for p in (cache / stage).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder, json.loads((folder / "artifact.json").read_text())


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------- end to end (the CLI)
@pytest.mark.slow  # trains on the tiny config
def test_standard_file_runs_dpo_and_ppo_end_to_end(data, tmp_path):
    """DPO trains on the file's training pairs and is evaluated on its held-out prompts; PPO's reward model is fitted
    on the same pairs and validated on the held-out ones; the set's identity is the file's content."""
    from datasets import load_from_disk

    from harness.eval.evaluator import prompts_key

    cache, rows = data["cache"], _standard()
    dpo = _harness(
        [
            "pipeline=dpo",
            "preferences.source=file",
            f"preferences.path={data['standard']}",
            "pipeline.max_steps=4",
            "pipeline.batch_size=8",
        ],
        tmp_path / "dpo",
        cache,
    )
    train_prompts, held = split_prompts([r["prompt"] for r in rows], 0.2, 0)  # the documented split, by hand
    train_rows = [r for r in rows if r["prompt"] not in held]
    assert dpo["train_pairs"] == len(train_rows) and dpo["losses_finite"] and dpo["parameter_change"] > 0
    folder, manifest = _artifact(cache, "preferences")
    assert manifest["facts"]["file_sha256"] == hashlib.sha256(data["standard"].read_bytes()).hexdigest()
    assert manifest["facts"]["layout"] == "standard"
    pairs = load_from_disk(str(folder / "pairs"))
    assert pairs["train"]["chosen"] == [r["chosen"] for r in train_rows]  # the file's text, unchanged
    assert set(pairs["test"]["prompt"]) == set(held) and not set(held) & set(pairs["train"]["prompt"])
    evidence = _rows(tmp_path / "dpo" / "evidence.jsonl")
    assert {e["prompts_key"] for e in evidence} == {prompts_key(held[:8])}  # the evaluator's prompts: held out

    ppo = _harness(
        [
            "pipeline=ppo",
            "preferences.source=file",
            f"preferences.path={data['standard']}",
            "pipeline.updates=2",
            "pipeline.batch_size=8",
            "pipeline.max_new_tokens=8",
            "reward_model.epochs=1",
        ],
        tmp_path / "ppo",
        cache,
    )
    _, rm = _artifact(cache, "reward_model")
    assert rm["identity"]["parts"][1] == manifest["key"]  # fitted on the file's preference set
    assert rm["facts"]["heldout_pairs"] == len(pairs["test"])
    assert np.isfinite(ppo["gold_reward"]) and np.isfinite(ppo["kl"]) and ppo["episodes"] == 16
    assert {e["prompts_key"] for e in _rows(tmp_path / "ppo" / "evidence.jsonl")} == {prompts_key(held[:8])}

    # Editing the file in place (one more pair) makes a new job and a new preference set; a moved copy, the same set.
    from harness.app.jobs import job_key
    from harness.app.jobs import load as validate
    from harness.data.caches import preference_file
    from tests.conftest import compose

    def keys(path):
        hc = validate(compose(["pipeline=dpo", "preferences.source=file", f"preferences.path={path}"]))
        return job_key(hc), preference_file(hc).identity()

    copy = _jsonl(tmp_path / "copy.jsonl", rows)
    before = keys(copy)
    _jsonl(copy, rows + [{"prompt": "The end was", "chosen": " fine.", "rejected": " bad."}])
    after = keys(copy)
    assert before[0] != after[0] and before[1] != after[1] and before[1] == keys(data["standard"])[1]


@pytest.mark.slow  # trains on the tiny config
def test_conversational_file_runs_dpo_with_a_reward_model_as_gold(data, tmp_path):
    """Messages rendered plainly (the tiny tokenizer has no chat template); the gold reward is a reward-model
    checkpoint, whose raw score is what the pairs and the evaluator report."""
    from datasets import load_from_disk

    from harness.data.gold import ClassifierGold

    cache = data["cache"]
    result = _harness(
        [
            "pipeline=dpo",
            "preferences.source=file",
            f"preferences.path={data['conversational']}",
            "gold=reward_model",
            f"gold.name_or_path={data['gold_rm']}",
            "pipeline.max_steps=2",
            "pipeline.batch_size=8",
        ],
        tmp_path / "dpo",
        cache,
    )
    assert result["losses_finite"] and result["parameter_change"] > 0
    (folder,) = [
        p
        for p in (cache / "preferences").iterdir()
        if p.is_dir() and json.loads((p / "artifact.json").read_text())["facts"]["layout"] == "conversational"
    ]
    assert json.loads((folder / "artifact.json").read_text())["facts"]["rendering"] == "plain"
    test = load_from_disk(str(folder / "pairs"))["test"]
    first = _conversational(_standard())[0]
    assert render_plain(first["prompt"], first["chosen"]) == (
        "User: How was it? The plot was...\nAssistant:",
        " " + first["chosen"][0]["content"],
    )
    assert all(p.startswith("User: How was it?") and p.endswith("\nAssistant:") for p in test["prompt"])
    gold = ClassifierGold(str(data["gold_rm"]), scalar=True)
    texts = [p + c for p, c in zip(test["prompt"], test["chosen"])]
    assert np.allclose(gold(texts), test["chosen_score"], atol=1e-5)


# ------------------------------------------------------------------------------------------- formats, containers
def test_formats_and_containers_read_alike(data, tmp_path):
    """The implicit-prompt forms give the same pairs as the explicit ones; Parquet and a save_to_disk folder read
    like the jsonl file."""
    import pandas as pd
    from datasets import Dataset, DatasetDict

    rows = _standard(6)
    explicit = load_preference_file(str(_jsonl(tmp_path / "a.jsonl", rows)))
    implicit = load_preference_file(
        str(
            _jsonl(
                tmp_path / "b.jsonl",
                [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows],
            )
        )
    )
    assert (implicit.prompt, implicit.chosen, implicit.rejected) == (
        explicit.prompt,
        explicit.chosen,
        explicit.rejected,
    )
    assert implicit.layout == "standard, implicit prompt"
    conv = _conversational(rows)
    conv_explicit = load_preference_file(str(_jsonl(tmp_path / "c.jsonl", conv)))
    conv_implicit = load_preference_file(
        str(
            _jsonl(
                tmp_path / "d.jsonl",
                [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in conv],
            )
        )
    )
    assert conv_implicit.prompt == conv_explicit.prompt and conv_implicit.chosen == conv_explicit.chosen
    pd.DataFrame(rows).to_parquet(tmp_path / "e.parquet")
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "f"))
    for other in (load_preference_file(str(tmp_path / "e.parquet")), load_preference_file(str(tmp_path / "f"))):
        assert (other.prompt, other.chosen, other.heldout_prompts) == (
            explicit.prompt,
            explicit.chosen,
            explicit.heldout_prompts,
        )
        assert other.places[2] == "row 2"
    assert shared_text_prompt("The film was good", "The film was great") == ("The film was", " good", " great")


def test_chat_template_renders_like_trl(data):
    """With a chat template, the prompt carries the generation prompt and each completion is the rest of its
    rendered conversation (TRL's apply_chat_template), and the split is seeded and disjoint."""
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template

    tok = AutoTokenizer.from_pretrained(str(data["gold_rm"]))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    example = _conversational(_standard(1))[0]
    ours = render_template(tok, example["prompt"], example["chosen"], example["rejected"])
    theirs = apply_chat_template(example, tok)
    assert ours == (theirs["prompt"], theirs["chosen"], theirs["rejected"])
    assert ours[0].endswith("<|assistant|>")
    prompts = [f"p{i}" for i in range(20)] * 2
    train, held = split_prompts(prompts, 0.2, seed=3)
    assert len(held) == 4 and not set(train) & set(held) and set(train) | set(held) == set(prompts)
    assert split_prompts(prompts, 0.2, seed=3) == (train, held) != split_prompts(prompts, 0.2, seed=4)


def test_reward_model_gold_is_its_raw_or_squashed_score(data):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.data.gold import ClassifierGold

    texts = ["The plot was great.", "The cast was awful and the plot dull."]
    tok = AutoTokenizer.from_pretrained(str(data["gold_rm"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(data["gold_rm"])).eval()
    with torch.no_grad():
        expected = [model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert np.allclose(ClassifierGold(str(data["gold_rm"]), scalar=True)(texts), expected, atol=1e-5)
    squashed = ClassifierGold(str(data["gold_rm"]), scalar=True, squash="sigmoid")(texts)
    assert np.allclose(squashed, 1 / (1 + np.exp(-np.array(expected))), atol=1e-6)
    with pytest.raises(ConfigError, match="gold.kind: .* has one output"):
        ClassifierGold(str(data["gold_rm"]))


def test_evaluation_prompts_come_from_the_file_or_the_task(data):
    """eval_prompts=file: the file's held-out prompts; =task: the task's, less any the file trains on. PPO's rollout
    prompts are the file's training prompts either way; the SFT corpus stays the task's."""
    from harness.app.jobs import load as validate
    from harness.data.caches import preference_file, task_data
    from harness.preflight.checks import preflight
    from tests.conftest import compose

    base = [
        "experiment=tiny_debug",
        "preferences.source=file",
        f"preferences.path={data['standard']}",
        "preferences.eval_fraction=0.2",
        f"cache_dir={data['dir'] / 'unused'}",
    ]
    hc = validate(compose(base))
    pf, task = preference_file(hc), task_data(hc.task)
    from_file = preflight(hc)
    assert from_file.eval_prompts == pf.heldout_prompts[:8] and from_file.train_prompts == pf.train_prompts[:40]
    assert from_file.train_texts == task.train_texts
    from_task = preflight(validate(compose([*base, "preferences.eval_prompts=task"])))
    assert from_task.eval_prompts == [p for p in task.eval_prompts if p not in pf.train_prompts]
    assert from_task.train_prompts == from_file.train_prompts


def test_a_pretrained_model_renders_with_its_chat_template_and_counts_its_tokens(data, tmp_path):
    """A model given by folder: its tokenizer's chat template renders the conversations, and prompt lengths are
    checked in its own tokens (the tiny model is checked in words, a lower bound)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from harness.app.jobs import load as validate
    from harness.preflight.checks import preflight
    from tests.conftest import compose

    tok = AutoTokenizer.from_pretrained(str(data["gold_rm"]))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "lm"
    )
    tok.save_pretrained(tmp_path / "lm")
    base = [
        "experiment=tiny_debug",
        "pipeline=dpo",
        f"model.name={tmp_path / 'lm'}",
        "preferences.source=file",
        f"preferences.path={data['conversational']}",
        "preferences.eval_fraction=0.2",
        f"cache_dir={tmp_path / 'c'}",
    ]
    evals = preflight(validate(compose(base))).eval_prompts
    assert len(evals) == 8 and all(p.startswith("<|user|>How was it?") and p.endswith("<|assistant|>") for p in evals)
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in evals)
    with pytest.raises(
        ConfigError, match=r"preferences.path: .* column 'prompt' has \d+ tokens, .*pipeline.max_length"
    ):
        preflight(validate(compose([*base, f"pipeline.max_length={longest}"])))


# ------------------------------------------------------------------------------------------------ bad files
def _bad(d: Path) -> dict[str, Path]:
    ok = _standard(3)
    conv = _conversational(ok)
    (d / "not_parquet.parquet").write_bytes(b"not a parquet file")
    (d / "not_a_dataset").mkdir(exist_ok=True)
    return {
        "missing_column": _jsonl(d / "missing.jsonl", ok[:2] + [{"prompt": "The end was", "chosen": " fine."}]),
        "no_chosen": _jsonl(d / "no_chosen.jsonl", [{"prompt": "x", "answer": "y", "rejected": "z"}]),
        "number": _jsonl(d / "number.jsonl", ok[:3] + [{"prompt": "The end was", "chosen": 5, "rejected": " bad."}]),
        "null": _jsonl(d / "null.jsonl", ok[:1] + [{"prompt": "The end was", "chosen": " ok.", "rejected": None}]),
        "empty": _jsonl(d / "empty.jsonl", ok[:1] + [{"prompt": "  ", "chosen": " ok.", "rejected": " bad."}]),
        "same": _jsonl(d / "same.jsonl", ok[:2] + [{"prompt": "The end was", "chosen": " ok.", "rejected": " ok."}]),
        "long": _jsonl(
            d / "long.jsonl", ok[:4] + [{"prompt": " ".join(["word"] * 70), "chosen": " ok.", "rejected": " no."}]
        ),
        "broken": _jsonl(d / "broken.jsonl", ok[:1] + ['{"prompt": "The end', *map(json.dumps, ok)]),
        "mixed": _jsonl(d / "mixed.jsonl", conv[:2] + ok[:1]),
        "message": _jsonl(
            d / "message.jsonl", conv[:1] + [{**conv[1], "chosen": [{"role": "assistant", "content": ["a"]}]}]
        ),
        "no_prompt": _jsonl(d / "no_prompt.jsonl", [{"chosen": "Great film.", "rejected": "Awful film."}]),
        "txt": _jsonl(d / "pairs.txt", ok),
        "not_parquet": d / "not_parquet.parquet",
        "not_a_dataset": d / "not_a_dataset",
        "absent": d / "absent.jsonl",
        "one_prompt": _jsonl(d / "one_prompt.jsonl", ok[:2]),
        # the format decided per column: a message dict where a list belongs, a column in the other format
        "chosen_dict": _jsonl(d / "chosen_dict.jsonl", [{**conv[0], "chosen": conv[0]["chosen"][0]}, *conv[1:]]),
        "rejected_dict": _jsonl(d / "rejected_dict.jsonl", [{**conv[0], "rejected": conv[0]["rejected"][0]}]),
        "prompt_text": _jsonl(d / "prompt_text.jsonl", [{**conv[0], "prompt": "How was it?"}, *conv[1:]]),
        "rejected_messages": _jsonl(d / "rejected_msgs.jsonl", [{**ok[0], "rejected": conv[0]["rejected"]}]),
        "prompt_number": _jsonl(d / "prompt_number.jsonl", [{**ok[0], "prompt": 7}, *ok[1:]]),
    }


BAD = {  # name: (file, what the one line must say)
    "missing column": ("missing_column", "line 3 has no column 'rejected'"),
    "no chosen column": ("no_chosen", "line 1 has no column 'chosen'"),
    "number, not text": ("number", "line 4 column 'chosen' is a number (5), not text"),
    "null field": ("null", "line 2 column 'rejected' is null, not text"),
    "empty prompt": ("empty", "line 2 column 'prompt' is empty"),
    "chosen == rejected": ("same", "line 3 column 'rejected' equals column 'chosen'"),
    "prompt too long": ("long", "line 5 column 'prompt' has 70 words"),
    "broken json": ("broken", "line 2 column 12: broken JSON"),
    "text among messages": ("mixed", "line 3 column 'prompt' is text"),
    "non-text message": ("message", "line 2 column 'chosen' message 0 has a content that is a list"),
    "no shared prompt": ("no_prompt", "line 1 column 'chosen' and column 'rejected' share no beginning"),
    "unknown format": ("txt", "unsupported file type '.txt'; use .jsonl, .parquet"),
    "unreadable parquet": ("not_parquet", "as Parquet"),
    "folder not a dataset": ("not_a_dataset", "cannot be loaded as a save_to_disk dataset: it holds neither"),
    "file missing": ("absent", "does not exist"),
    "a single prompt": ("one_prompt", "distinct prompt(s); give at least 2"),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return _bad(tmp_path_factory.mktemp("bad_preference_files"))


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``python -m harness <argv>`` in-process with training forbidden; returns (exit status, stderr lines)."""

    def no_training(*args, **kwargs):
        raise AssertionError("a bad preference file reached run_job: it would have trained")

    monkeypatch.setattr(app, "run_job", no_training)

    def run(argv: list[str]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            app.main(
                [
                    *argv,
                    "experiment=tiny_debug",
                    f"cache_dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={tmp_path / 'run'}",
                    "logger.wandb_mode=disabled",
                ]
            )
        return e.value.code, capsys.readouterr().err.splitlines()

    return run


@pytest.mark.parametrize("name, expected", BAD.values(), ids=BAD.keys())
def test_bad_preference_file_stops_in_one_line(cli, bad, tmp_path, name, expected):
    code, err = cli(["pipeline=dpo", "preferences.source=file", f"preferences.path={bad[name]}"])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: preferences.path: '{bad[name]}") and expected in err[0], err[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


# Issue 25: the format is decided column by column, and the line names the column at fault (before, a conversational
# file whose `chosen` was one message dict was blamed on its `prompt` column: the format was guessed from `chosen`).
PER_COLUMN = {
    "chosen one message dict": ("chosen_dict", "line 1 column 'chosen' is one message (a dict), not a list"),
    "rejected one message dict": ("rejected_dict", "line 1 column 'rejected' is one message (a dict)"),
    "prompt text, chosen messages": ("prompt_text", "line 1 column 'prompt' is text, but column 'chosen' is a list"),
    "rejected messages, chosen text": ("rejected_messages", "line 1 column 'rejected' is a list of messages, but"),
    "prompt a number": ("prompt_number", "line 1 column 'prompt' is a number (7); every prompt must be text"),
}


@pytest.mark.battery
@pytest.mark.parametrize("name, expected", PER_COLUMN.values(), ids=PER_COLUMN.keys())
def test_the_format_is_decided_per_column_and_the_column_at_fault_named(cli, bad, tmp_path, name, expected):
    code, err = cli(["pipeline=dpo", "preferences.source=file", f"preferences.path={bad[name]}"])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: preferences.path: '{bad[name]}") and expected in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


CONFIG = {  # bad settings around a good file: (overrides, the line's start)
    "file source without a path": (["preferences.source=file"], "preferences.path: preferences.source=file needs"),
    "path without the file source": (["preferences.path={standard}"], "preferences.path: is read only with"),
    "labels for a labelled file": (
        ["preferences.source=file", "preferences.path={standard}", "preferences.labels=bradley_terry"],
        "preferences.labels:",
    ),
    "classifier kind on a reward model": (["gold.kind=hf_classifier", "gold.name_or_path={gold_rm}"], "gold.kind: '"),
    "squash on a classifier": (["gold.kind=vader", "gold.squash=sigmoid"], "gold.squash: applies to"),
    "rollouts larger than the file's prompts": (
        ["pipeline=ppo", "preferences.source=file", "preferences.path={standard}", "pipeline.batch_size=64"],
        "pipeline.batch_size: 64 prompts per rollout",
    ),
}


@pytest.mark.parametrize("argv, expected", CONFIG.values(), ids=CONFIG.keys())
def test_bad_preference_settings_stop_in_one_line(cli, data, tmp_path, argv, expected):
    code, err = cli([a.format(**data) for a in argv])
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {expected}"), err
