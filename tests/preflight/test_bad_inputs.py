"""A battery of bad inputs: each stops before any work with exit status 2 and exactly one line on stderr that names
the key (or the file, row and column), with no traceback, no job folder and no cache artifact.

Three ways in, all ending in the same handler (``harness.app.stop_on_user_error``):

- the command line in-process (``harness.app.main(argv)``, stderr captured) for what Hydra composes: group options,
  types, keys, override syntax, sweeps, folders; ``run_job`` is replaced by a guard, so a case that slipped through
  the checks fails loudly instead of training;
- ``validate`` + ``preflight`` on a config composed once (a Hydra composition costs ~0.35 s; these cases test what
  comes after it): values checked against the world, data files of every format, models, tokenizers, classifiers;
- two real ``python -m harness`` processes: a single run and a study sweep.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.app.cli as app
from harness.app.jobs import load as validate
from harness.config import to_container
from harness.fields import ConfigError
from harness.preflight import checks
from tests.conftest import compose

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hf_notARealToken0123456789"


# ------------------------------------------------------------------------------------------------------ fixtures
def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _reviews(n: int) -> list[dict]:
    return [{"text": f"review {i}: the plot was fine and the cast did a solid job"} for i in range(n)]


def _tokenizer_json() -> str:
    """The smallest tokenizer.json the ``tokenizers`` library reads (the preflight loads a local folder's)."""
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")).to_str()


TOKENIZER = _tokenizer_json()


def _model_folder(path: Path, config: dict | str | None, tokenizer: bool = True, weights: bool = True) -> Path:
    """A folder shaped like a saved model; its files are only looked at, never loaded."""
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tokenizer:
        (path / "tokenizer.json").write_text(TOKENIZER)
    if weights:  # a whole safetensors file holding no tensor: 8 bytes of header length, then the header "{}"
        (path / "model.safetensors").write_bytes((8).to_bytes(8, "little") + b"{}      ")
    return path


GPT2 = {"model_type": "gpt2", "n_positions": 1024}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every bad data file, dataset folder and model folder, written once for the module."""
    d = tmp_path_factory.mktemp("bad_inputs")
    ok = _reviews(60)
    f = {
        "broken_json": _jsonl(d / "broken.jsonl", ok[:2] + ['{"text": "unterminated'] + ok[:60]),
        "array_line": _jsonl(d / "array.jsonl", ok[:3] + ["[1, 2]"] + ok),
        "missing_column": _jsonl(d / "review.jsonl", [{"review": r["text"]} for r in ok]),
        "number": _jsonl(d / "number.jsonl", ok[:3] + [{"text": 5}] + ok),
        "list": _jsonl(d / "list.jsonl", ok[:3] + [{"text": ["a", "list"]}] + ok),
        "null": _jsonl(d / "null.jsonl", ok[:3] + [{"text": None}] + ok),
        "empty_text": _jsonl(d / "empty.jsonl", ok[:3] + [{"text": "   "}] + ok),
        "no_rows": _jsonl(d / "no_rows.jsonl", []),
        "too_small": _jsonl(d / "small.jsonl", _reviews(12)),
        "wrong_suffix": _jsonl(d / "reviews.txt", ok),
        "folder": d / "folder.jsonl",
        "csv_missing_column": d / "review.csv",
        "csv_short_row": d / "short.csv",
        "csv_empty_text": d / "empty.csv",
        "csv_huge_field": d / "huge.csv",
        "csv_too_small": d / "small.csv",
    }
    f["folder"].mkdir()
    (d / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n')
    (d / "latin1.csv").write_bytes(b"text\nfine film\ncaf\xe9 film\n")
    f["not_utf8"], f["csv_not_utf8"] = d / "latin1.jsonl", d / "latin1.csv"
    f["csv_missing_column"].write_text("review\n" + "\n".join(r["text"] for r in ok) + "\n")
    f["csv_short_row"].write_text("id,text\n" + "\n".join(f"{i},good film" for i in range(5)) + "\n5\n")
    f["csv_empty_text"].write_text("text\n" + "\n".join(r["text"] for r in ok[:4]) + '\n""\n')
    f["csv_huge_field"].write_text("text\n" + "x" * 200_000 + "\n")
    f["csv_too_small"].write_text("text\n" + "\n".join(r["text"] for r in ok[:12]) + "\n")
    f.update(_datasets(d))
    f.update(_models(d))
    return f


def _datasets(d: Path) -> dict[str, Path]:
    """save_to_disk folders (the imdb task's local format), each wrong in one way."""
    from datasets import Dataset, DatasetDict

    texts = [r["text"] for r in _reviews(60)]

    def save(name: str, splits: dict) -> Path:
        DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(str(d / name))
        return d / name

    (d / "not_a_dataset").mkdir()
    return {
        "ds_not_a_dataset": d / "not_a_dataset",
        "ds_no_train": save("no_train", {"validation": {"text": texts}}),
        "ds_missing_column": save("ds_review", {"train": {"review": texts}}),
        "ds_int_column": save("ds_int", {"train": {"text": list(range(60))}}),
        "ds_null": save("ds_null", {"train": {"text": texts[:3] + [None] + texts}}),
        "ds_empty_text": save("ds_empty", {"train": {"text": texts[:5] + [""] + texts}}),
        "ds_too_small": save("ds_small", {"train": {"text": texts[:12]}, "test": {"text": texts[:5]}}),
    }


def _models(d: Path) -> dict[str, Path]:
    """Model folders (for model.name and gold.name_or_path) and a hub cache holding one incomplete model."""
    hub = d / "hub"
    snap = hub / "models--acme--cached-lm" / "snapshots" / "0123abc"
    _model_folder(snap, GPT2, tokenizer=False)
    (hub / "models--acme--cached-lm" / "refs").mkdir()
    (hub / "models--acme--cached-lm" / "refs" / "main").write_text("0123abc")
    classifier = {
        "model_type": "roberta",
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
        "max_position_embeddings": 514,
    }
    return {
        "hub": hub,
        "m_empty": _model_folder(d / "m_empty", None, tokenizer=False, weights=False),
        "m_bad_json": _model_folder(d / "m_bad_json", "{not json"),
        "m_no_tokenizer": _model_folder(d / "m_no_tok", GPT2, tokenizer=False),
        "m_no_weights": _model_folder(d / "m_no_weights", GPT2, weights=False),
        "m_remote_code": _model_folder(d / "m_remote", {**GPT2, "auto_map": {"AutoModelForCausalLM": "x.Model"}}),
        "m_short": _model_folder(d / "m_short", {"model_type": "gpt2", "n_positions": 32}),
        "g_labels": _model_folder(d / "g_labels", {**classifier, "id2label": {"0": "neg", "1": "pos"}}),
        "g_remote_code": _model_folder(d / "g_remote", {**classifier, "auto_map": {"AutoModel": "x.M"}}),
    }


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``python -m harness <argv>`` in-process; returns (exit status, stderr lines). Nothing may train."""

    def no_training(*args, **kwargs):
        raise AssertionError("a bad input reached run_job: it would have trained")

    monkeypatch.setattr(app, "run_job", no_training)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def run(argv: list[str]) -> tuple[int | str | None, list[str]]:
        defaults = {
            "cache_dir": tmp_path / "cache",
            "hydra.run.dir": tmp_path / "run",
            "hydra.sweep.dir": tmp_path / "sweep",
            "logger.wandb_mode": "disabled",
        }
        given = {a.split("=", 1)[0] for a in argv}
        argv = [*argv, *(f"{k}={v}" for k, v in defaults.items() if k not in given)]
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            app.main(argv)
        return e.value.code, capsys.readouterr().err.splitlines()

    return run


@pytest.fixture(scope="module")
def base_raw() -> dict:
    """The tiny_debug config as plain data, composed once for the module."""
    return to_container(compose(["experiment=tiny_debug"]))


@pytest.fixture
def checked(base_raw, tmp_path, monkeypatch, capsys):
    """``validate`` + ``preflight`` of the base config with dotted ``changes``, through the command line's handler;
    returns (exit status, stderr lines)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def run(changes: dict) -> tuple[int | str | None, list[str]]:
        raw = copy.deepcopy(base_raw)
        raw["cache_dir"] = str(tmp_path / "cache")
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = raw
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            app.stop_on_user_error(lambda: checks.preflight(validate(raw)))
        return e.value.code, capsys.readouterr().err.splitlines()

    return run


def assert_stopped(code, err: list[str], key: str, tmp_path: Path) -> None:
    """Exit 2, one line that starts with the error and names ``key``, no traceback, nothing made or trained."""
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and key in err[0], err[0]
    assert "Traceback" not in err[0] and "HYDRA_FULL_ERROR" not in err[0]
    for made in ("cache", "run", "sweep"):
        assert not (tmp_path / made).exists(), f"{made} folder was made"


# ------------------------------------------------------------------------------ the command line (Hydra composes)
CLI_CASES = {
    "unknown group option": (["model=nope"], "model: no option 'nope'"),
    "unknown experiment": (["experiment=nope"], "experiment: no option"),
    "unknown pipeline": (["pipeline=ppo2"], "pipeline: no option"),
    "unknown launcher": (["hydra/launcher=nope"], "hydra/launcher: no option"),
    "int as text": (["seed=abc"], "seed:"),
    "int as float": (["model.n_layer=1.5"], "model.n_layer:"),
    "float as list": (["sft.epochs=[1,2]"], "sft.epochs:"),
    "bool as text": (["stages_per_seed=maybe"], "stages_per_seed:"),
    "misspelt section": (["pipline.beta=1"], "did you mean pipeline?"),
    "misspelt key": (["sft.epochz=2"], "did you mean sft.epochs?"),
    "key of another pipeline": (["pipeline.beta=1"], "pipeline.beta: unknown key"),
    "added unknown key": (["+foo=1"], "foo: unknown top-level key"),
    "override syntax": (["seed=[1,"], "command line: cannot parse"),
    "unknown flag": (["--no-such-flag"], "command line: unrecognized"),
    "sweep in a single run": (["seed=1,2"], "add -m"),
    "unresolvable interpolation": (["gold.batch_size=${nope}"], "gold.batch_size: cannot resolve"),
    "unset environment variable": (["logger.entity=${oc.env:HARNESS_NO_SUCH_VAR}"], "logger.entity: cannot resolve"),
    "bad value when printing the config": (["--cfg", "job", "model=nope"], "model: no option"),
    "plain sweep with a bad job": (["-m", "seed=0,1", "sft.epochs=0"], "sft.epochs: must be > 0"),
    "absent cuda device": (["device=cuda:64"], "device: 'cuda:64'"),
    "gold classifier with the hub off": (["gold=siebert"], "gold.name_or_path: 'siebert/"),
    "data file with a broken line": (["task=local", "task.path={broken_json}"], "line 3 column"),
    "dataset column of numbers": (["task=imdb", "task.path={ds_int_column}"], "holds int64 values"),
    "model folder without tokenizer": (["model.name={m_no_tokenizer}"], "has no tokenizer"),
}


@pytest.mark.parametrize("argv, expected", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_bad_command_line_stops_in_one_line(cli, tmp_path, files, argv, expected):
    code, err = cli([a.format(**files) if "{" in a and "$" not in a else a for a in argv])
    assert_stopped(code, err, expected, tmp_path)


# -------------------------------------------------------------------------- values checked against the world
VALUE_CASES = {
    "nonsense device": ({"device": "gpu"}, "device: unknown device"),
    "absent mps device": ({"device": "mps"}, "device: 'mps'"),
    "negative threads": ({"threads": -1}, "threads: must be >= 0"),
    "sft length over positions": ({"model.n_positions": 40}, "sft.max_length: 64 exceeds"),
    "pipeline length over positions": ({"pipeline": {"name": "dpo", "max_length": 200}}, "pipeline.max_length: 200"),
    "reward-model length over positions": (
        {"pipeline": {"name": "ppo"}, "reward_model.max_length": 97},
        "reward_model.max_length",
    ),
    "sampling over positions": ({"eval.max_new_tokens": 90}, "eval.max_new_tokens:"),
    "ppo sampling over positions": ({"pipeline": {"name": "ppo", "max_new_tokens": 95}}, "pipeline.max_new_tokens:"),
    "eval prompts impossible": ({"task.n_eval_prompts": 5000}, "task.n_eval_prompts"),
    "corpus too small": ({"task.n_train": 10}, "the minimum is 50"),
    "path for the generated task": ({"task.path": "/tmp/x.jsonl"}, "task.path: task 'reviews'"),
    "unknown top-level key": ({"sede": 3}, "sede: unknown top-level key"),
}


@pytest.mark.parametrize("changes, expected", VALUE_CASES.values(), ids=VALUE_CASES.keys())
def test_bad_value_stops_in_one_line(checked, tmp_path, changes, expected):
    if changes.get("device") == "mps":
        import torch

        if torch.backends.mps.is_available():
            pytest.skip("this machine has an Apple GPU")
    code, err = checked(changes)
    assert_stopped(code, err, expected, tmp_path)


# --------------------------------------------------------------------------------------------------- data files
DATA_CASES = {
    "jsonl array line": ("local", "array_line", "line 4: a JSON list"),
    "jsonl not utf-8": ("local", "not_utf8", "line 2: byte"),
    "jsonl missing column": ("local", "missing_column", "task.text_column: column 'text' missing"),
    "jsonl number as text": ("local", "number", "line 4 column 'text' is a number (5)"),
    "jsonl list as text": ("local", "list", "line 4 column 'text' is a list"),
    "jsonl null text": ("local", "null", "line 4 column 'text' is null"),
    "jsonl empty text": ("local", "empty_text", "empty 'text' at line 4"),
    "jsonl no rows": ("local", "no_rows", "has no rows"),
    "jsonl too small": ("local", "too_small", "the minimum is 50"),
    "unsupported suffix": ("local", "wrong_suffix", "unsupported file type '.txt'"),
    "path is a folder": ("local", "folder", "is a folder"),
    "csv not utf-8": ("local", "csv_not_utf8", "line 3: byte"),
    "csv missing column": ("local", "csv_missing_column", "column 'text' missing"),
    "csv short row": ("local", "csv_short_row", "line 7 column 'text' is null"),
    "csv empty text": ("local", "csv_empty_text", "empty 'text' at line 6"),
    "csv malformed": ("local", "csv_huge_field", "malformed CSV"),
    "csv too small": ("local", "csv_too_small", "the minimum is 50"),
    "dataset folder unreadable": ("imdb", "ds_not_a_dataset", "holds neither dataset_dict.json nor state.json"),
    "dataset without train split": ("imdb", "ds_no_train", "no 'train' split (it has: validation)"),
    "dataset missing column": ("imdb", "ds_missing_column", "column 'text' missing"),
    "dataset null text": ("imdb", "ds_null", "[train]' row 3 column 'text' is null"),
    "dataset empty text": ("imdb", "ds_empty_text", "empty 'text' at row 5"),
    "dataset too small": ("imdb", "ds_too_small", "the minimum is 50"),
    "file missing": ("local", "/no/such/reviews.jsonl", "does not exist"),
    "dataset folder missing": ("imdb", "/no/such/imdb", "folder '/no/such/imdb' does not exist"),
    "hub dataset with the hub off": ("imdb", None, "dataset 'stanfordnlp/imdb' is not on this machine"),
}


@pytest.mark.parametrize("task, name, expected", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_bad_data_stops_in_one_line(checked, tmp_path, files, task, name, expected):
    path = str(files.get(name, name)) if name else "stanfordnlp/imdb"
    code, err = checked({"task.name": task, "task.path": path})
    assert_stopped(code, err, expected, tmp_path)
    assert err[0].startswith("error: task.") and path in err[0]


# ---------------------------------------------------------------------------- models, tokenizers, classifiers
SIEBERT = {"gold.kind": "hf_classifier", "gold.name_or_path": "siebert/sentiment-roberta-large-english"}
MODEL_CASES = {
    "hub model with the hub off": ({"model.name": "gpt2"}, "model.name: 'gpt2' is not a local folder"),
    "invalid hub name": ({"model.name": "no such model!"}, "nor a valid hub name"),
    "model folder missing": ({"model.name": "/no/such/model"}, "folder '/no/such/model' does not exist"),
    "model folder without config": ({"model.name": "m_empty"}, "has no config.json"),
    "model config not json": ({"model.name": "m_bad_json"}, "is not valid JSON"),
    "model without weights": ({"model.name": "m_no_weights"}, "has no weights"),
    "model needing remote code": ({"model.name": "m_remote_code"}, "model.trust_remote_code=true"),
    "model shorter than sft.max_length": ({"model.name": "m_short"}, "sft.max_length: 64 exceeds the model's 32"),
    "gold classifier folder missing": ({**SIEBERT, "gold.name_or_path": "/no/such/clf"}, "gold.name_or_path"),
    "gold label not in classifier": ({**SIEBERT, "gold.name_or_path": "g_labels"}, "gold.label: 'POSITIVE' is not"),
    "gold classifier needing remote code": (
        {**SIEBERT, "gold.name_or_path": "g_remote_code"},
        "gold.trust_remote_code",
    ),
}


@pytest.mark.parametrize("changes, expected", MODEL_CASES.values(), ids=MODEL_CASES.keys())
def test_unloadable_model_tokenizer_or_classifier_stops_before_sft(checked, tmp_path, files, changes, expected):
    changes = {k: str(files[v]) if v in files else v for k, v in changes.items()}
    code, err = checked(changes)
    assert_stopped(code, err, expected, tmp_path)


def test_hub_cache_is_read_without_the_hub(checked, tmp_path, files, monkeypatch):
    """A hub name is looked up in the hub cache (no network): a cached model without its tokenizer is named."""
    monkeypatch.setenv("HF_HUB_CACHE", str(files["hub"]))
    code, err = checked({"model.name": "acme/cached-lm"})
    assert_stopped(code, err, "model.name: 'acme/cached-lm' has no tokenizer", tmp_path)


def test_trusted_remote_code_passes_the_check(files):
    """With trust_remote_code on, the same folder is accepted (the switch works; it is off by default)."""
    pre = checks.find_pretrained(str(files["m_remote_code"]), "model.name")
    checks._no_remote_code(pre, "m", "model.name", trust=True)
    with pytest.raises(ConfigError, match="model.trust_remote_code"):
        checks._no_remote_code(pre, "m", "model.name", trust=False)


def test_the_hub_is_never_waited_on(monkeypatch):
    """With the hub on but unreachable, the check answers within its probe limit, in one line."""
    import time

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from harness.data import hub

    monkeypatch.setattr(hub, "HUB_PROBE_S", 0.2)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: time.sleep(30))
    start = time.time()
    with pytest.raises(ConfigError, match="gold.name_or_path: cannot reach the hub") as e:
        hub.find_pretrained("acme/slow-classifier", "gold.name_or_path")
    assert time.time() - start < 5 and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ folders and secrets
def _writable(folder: str) -> bool:
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def test_unwritable_or_full_folders_stop_in_one_line(cli, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        ([f"cache_dir={a_file}/cache"], "cache_dir: "),
        ([f"hydra.run.dir={a_file}/run"], "hydra.run.dir: "),
        (["-m", f"hydra.sweep.dir={a_file}/sweep", "seed=0,1"], "hydra.sweep.dir: "),
    ]
    if not _writable("/sys"):  # read-only even for root here (permission bits alone do not stop root)
        cases.append((["cache_dir=/sys/harness-cache"], "cache_dir: cannot write in '/sys'"))
    for argv, expected in cases:
        code, err = cli(argv)
        assert_stopped(code, err, expected, tmp_path)


def test_a_full_disk_stops_before_training(checked, tmp_path, monkeypatch):
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 2**20})())
    code, err = checked({})
    assert_stopped(code, err, "cache_dir: 1 MiB free", tmp_path)


def test_a_secret_in_a_config_value_stops_and_is_never_printed(checked, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    code, err = checked({"logger.entity": SECRET})
    assert_stopped(code, err, "logger.entity: holds the value of HF_TOKEN", tmp_path)
    assert SECRET not in err[0]


def test_saved_config_never_holds_a_secret(monkeypatch):
    """``resolved`` (saved with the run, sent to W&B) replaces any secret an interpolation pulled in."""
    from harness.app.jobs import load as validate
    from tests.conftest import compose

    monkeypatch.setenv("WANDB_API_KEY", "wandb-" + SECRET)
    hc = validate(compose(["logger.project=p-${oc.env:WANDB_API_KEY}"]))
    from harness.runs.identity import resolved

    raw = resolved(hc)
    assert raw["logger"]["project"] == "p-<WANDB_API_KEY>"
    assert SECRET not in json.dumps(raw)


# ------------------------------------------------------------------------------------- real processes, end to end
def _harness(*argv: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_TOKEN": SECRET}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            *argv,
            f"cache_dir={tmp / 'cache'}",
            f"hydra.run.dir={tmp / 'run'}",
            f"hydra.sweep.dir={tmp / 'sweep'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a child Python process
def test_cli_hydra_composition_error_is_one_line(tmp_path):
    r = _harness("sft.epochz=2", tmp=tmp_path)
    assert_stopped(r.returncode, r.stderr.splitlines(), "sft.epochz: unknown key (did you mean sft.epochs?)", tmp_path)


@pytest.mark.slow  # a child Python process
def test_cli_study_checks_every_job_before_the_first(tmp_path):
    """A study whose gold classifier cannot load stops before π_SFT trains, naming the key and the job."""
    r = _harness("-m", "experiment=smoke", "gold=siebert", tmp=tmp_path)
    assert_stopped(r.returncode, r.stderr.splitlines(), "gold.name_or_path", tmp_path)
    assert "[job 1:" in r.stderr and "] start " not in r.stdout
