"""Damaged files read back (issue 25 step 2): weights checked from their headers (harness/runs/weights.py), a damaged
resume checkpoint set aside with one warning and the job resumed from the previous good one or from scratch
(harness/runs/checkpoint.py), study job folder names that fit the filesystem (harness/runs/identity.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from harness.fields import ConfigError
from harness.runs import checkpoint
from harness.runs.identity import FOLDER_NAME_BYTES, fitting_name
from harness.runs.weights import check_weights

pytestmark = pytest.mark.battery


def _safetensors(path: Path, n_bytes: int = 16) -> Path:
    """A whole safetensors file with one float32 tensor of ``n_bytes // 4`` values."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(n_bytes // 4)}, str(path))
    return path


def test_whole_weights_pass(tmp_path):
    _safetensors(tmp_path / "model.safetensors")
    check_weights(tmp_path, "policy")  # returns: nothing damaged


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-4]), "cut short"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "shorter than a safetensors header"),
        (lambda p: p.write_bytes((6).to_bytes(8, "little") + b"{nope}"), "header is not JSON"),
        (lambda p: p.write_bytes((10**6).to_bytes(8, "little") + b"{}"), "cut short"),
    ],
    ids=["last bytes cut", "header cut", "header not JSON", "header longer than the file"],
)
def test_a_damaged_safetensors_is_one_line_naming_the_file(tmp_path, damage, expected):
    path = _safetensors(tmp_path / "model.safetensors")
    damage(path)
    with pytest.raises(ConfigError) as e:
        check_weights(tmp_path, "policy")
    assert str(e.value).startswith(f"policy: '{path}' is damaged") and expected in str(e.value)
    assert "\n" not in str(e.value)


def test_a_shard_named_in_the_index_but_missing_is_named(tmp_path):
    _safetensors(tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"model-00002-of-00002.safetensors' is missing \(1 of the 2 shards"):
        check_weights(tmp_path, "model.name")
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a weight index"):
        check_weights(tmp_path, "model.name")


def test_a_cut_torch_bin_is_named(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(64)}, path)
    check_weights(tmp_path, "policy")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ConfigError, match="pytorch_model.bin' is damaged"):
        check_weights(tmp_path, "policy")


def test_a_truncated_policy_given_to_evaluate_stops_in_the_preflight(checked_evaluate, tmp_path):
    code, err = checked_evaluate
    assert code == 2 and len(err) == 1 and "is damaged" in err[0] and "model.safetensors" in err[0], err


@pytest.fixture
def checked_evaluate(tmp_path, monkeypatch, capsys):
    """pipeline=evaluate on a policy folder whose safetensors is cut, through the command line's handler."""
    import harness.app.cli as app
    from harness.app.jobs import load
    from harness.config import to_container
    from harness.preflight import checks
    from tests.conftest import compose

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    path = _safetensors(policy / "model.safetensors", 64)
    path.write_bytes(path.read_bytes()[:-8])
    raw = to_container(compose(["experiment=tiny_debug", "pipeline=evaluate", f"policy={policy}"]))
    raw["cache_dir"] = str(tmp_path / "cache")
    with pytest.raises(SystemExit) as e:
        app.stop_on_user_error(lambda: checks.preflight(load(raw)))
    assert not (tmp_path / "cache").exists()
    return e.value.code, capsys.readouterr().err.splitlines()


# ------------------------------------------------------------------------------------------- resume checkpoints
KEY = "job-key-0"


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), lambda p: p.write_bytes(b"")],
    ids=["cut in half", "empty"],
)
def test_a_damaged_state_is_set_aside_with_one_warning_and_the_next_save_resumes(tmp_path, caplog, damage):
    path = checkpoint.save(tmp_path, KEY, {"step": torch.tensor(3), "progress": {}})
    damage(path)
    with caplog.at_level(logging.WARNING, logger="harness.runs.checkpoint"):
        assert checkpoint.load(tmp_path, KEY) is None  # from scratch
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0].getMessage()
    aside = list(path.parent.glob("state.pt.damaged-*"))
    assert len(aside) == 1 and not path.exists()  # kept, not deleted
    checkpoint.save(tmp_path, KEY, {"step": torch.tensor(5), "progress": {}})
    assert int(checkpoint.load(tmp_path, KEY)["step"]) == 5  # the next checkpoint is resumed from


def _trainer_checkpoint(job: Path, step: int) -> Path:
    path = checkpoint.trainer_dir(job) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    _safetensors(path / "model.safetensors")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    checkpoint.mark(path, KEY, {"progress": {}})
    return path


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: (p / "model.safetensors").unlink(), "weights are missing"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{"), "is damaged"),
        (lambda p: (p / "trainer_state.json").write_text("{cut"), "JSONDecodeError"),
        (lambda p: (p / checkpoint.MARK).write_text("{cut"), "JSONDecodeError"),
    ],
    ids=["weights deleted", "weights cut", "trainer state cut", "mark cut"],
)
def test_a_damaged_trainer_checkpoint_is_set_aside_and_the_previous_good_one_resumed(tmp_path, caplog, damage, why):
    good = _trainer_checkpoint(tmp_path, 2)
    bad = _trainer_checkpoint(tmp_path, 4)
    damage(bad)
    with caplog.at_level(logging.WARNING, logger="harness.runs.checkpoint"):
        found = checkpoint.last_trainer_checkpoint(tmp_path, KEY)
    assert found is not None and found[0] == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0], warnings
    assert not bad.exists() and len(list(bad.parent.glob("checkpoint-4.damaged-*"))) == 1
    checkpoint.keep_only(good)  # the set-aside folder is kept (evidence), never counted as a checkpoint
    assert len(list(bad.parent.glob("checkpoint-4.damaged-*"))) == 1
    assert checkpoint.last_trainer_checkpoint(tmp_path, KEY)[0] == good


def test_with_no_good_trainer_checkpoint_the_job_starts_from_scratch(tmp_path):
    (_trainer_checkpoint(tmp_path, 2) / "model.safetensors").unlink()
    assert checkpoint.last_trainer_checkpoint(tmp_path, KEY) is None


# ------------------------------------------------------------------------------------------- job folder names
def test_short_job_folder_names_are_unchanged_and_long_ones_fit():
    short = "pipeline.beta=0.1,pipeline=dpo,seed=0"
    assert fitting_name(short) == short  # today's names (golden job keys, README) stay
    long = ",".join(f"pipeline.knob_{i}=value_{i}" for i in range(40))
    fit = fitting_name(long)
    assert len(fit.encode()) <= FOLDER_NAME_BYTES and fit.startswith("pipeline.knob_0=value_0,")
    assert fit != fitting_name(long + "x") and fit == fitting_name(long)  # distinct jobs, distinct folders


def test_the_study_folder_name_goes_through_the_fitting_resolver():
    from omegaconf import OmegaConf

    import harness.app.cli  # registers the resolver

    node = OmegaConf.create({"name": "x" * 500, "subdir": "${harness_fit:${name}}"})
    assert len(node.subdir) <= FOLDER_NAME_BYTES
    text = (Path(harness.app.cli.CONF_DIR) / "shared" / "study.yaml").read_text()
    assert "subdir: ${harness_fit:${hydra.job.override_dirname}}" in text
