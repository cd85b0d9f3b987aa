"""Damaged stage artifacts read back from the cache (issue 25 step 2): a π_SFT or reward model whose weights or
JSON files are damaged, or a preference set that does not load, is set aside as ``<key>.damaged-<time>`` (renamed,
never deleted) with one warning and built again; a whole one is reused without a word.

The fast cases build stand-in artifacts of the stages' own layout (``save_pretrained``'s files, ``save_to_disk``'s
folders) through ``build_or_load`` with each stage's check; one slow case damages the real tiny stage cache and runs
``pipeline=reward_model`` on it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from harness.runs.cache import MANIFEST, build_or_load
from harness.runs.weights import saved_model_problem
from pipelines.stages.preferences import stored_set_problem

pytestmark = pytest.mark.battery


def _model(out: Path) -> None:
    """What ``save_pretrained`` leaves for a tiny model: config.json, a tokenizer file, two shards and their index."""
    from safetensors.torch import save_file

    (out / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    save_file({"a": torch.ones(8)}, str(out / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(8)}, str(out / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))


def _preference_set(out: Path) -> None:
    """A preference set's two datasets, as ``pipelines.stages.preferences`` saves them."""
    from datasets import Dataset, DatasetDict

    pairs = {"prompt": ["a"] * 40, "chosen": [" good"] * 40, "rejected": [" bad"] * 40}
    DatasetDict({"train": Dataset.from_dict(pairs), "test": Dataset.from_dict(pairs)}).save_to_disk(str(out / "pairs"))
    Dataset.from_dict({"text": ["a good"] * 40, "gold": [1.0] * 40}).save_to_disk(str(out / "sft_samples"))


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


MODEL_DAMAGE = {
    "a cut safetensors": (lambda p: _cut(p / "model-00002-of-00002.safetensors"), "cut short"),
    "a missing shard": (lambda p: (p / "model-00001-of-00002.safetensors").unlink(), "is missing (1 of the 2 shards"),
    "config.json that does not parse": (lambda p: (p / "config.json").write_text('{"model_type": "gp'), "config.json"),
    "config.json missing": (lambda p: (p / "config.json").unlink(), "config.json is missing"),
    "a tokenizer file that does not parse": (lambda p: _cut(p / "tokenizer_config.json"), "tokenizer_config.json"),
    "no weights at all": (
        lambda p: [f.unlink() for f in p.iterdir() if "safetensors" in f.name],
        "weights are missing",
    ),
    "a cut manifest": (lambda p: _cut(p / MANIFEST), MANIFEST),
}
SET_DAMAGE = {
    "a cut Arrow file": (lambda p: _cut(next((p / "pairs" / "train").glob("data-*.arrow"))), "pairs does not load"),
    "dataset_dict.json that does not parse": (
        lambda p: (p / "pairs" / "dataset_dict.json").write_text("{cut"),
        "pairs does not load",
    ),
    "a missing split": (
        lambda p: [f.unlink() for f in (p / "pairs" / "test").iterdir()] and (p / "pairs" / "test").rmdir(),
        "pairs does not load",
    ),
    "the samples gone": (
        lambda p: [f.unlink() for f in (p / "sft_samples").glob("data-*.arrow")],
        "sft_samples does not load",
    ),
}


def _built_twice(tmp_path, caplog, stage, build, check, damage) -> tuple[list, list[str], Path]:
    """Build an artifact, damage it, read it back: (the builds, the warnings, the artifact's path)."""
    builds = []

    def counted(out: Path) -> dict:
        builds.append(out)
        build(out)
        return {"loss": 1.0}

    first = build_or_load(tmp_path, stage, {"x": 1}, counted, check=check)
    assert not first.reused and check(first.path) is None  # a fresh artifact passes its check
    damage(first.path)
    with caplog.at_level(logging.WARNING, logger="harness.runs.cache"):
        again = build_or_load(tmp_path, stage, {"x": 1}, counted, check=check)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert again.path == first.path and not again.reused and again.manifest()["facts"] == {"loss": 1.0}
    assert check(again.path) is None  # rebuilt whole
    return builds, warnings, first.path


@pytest.mark.parametrize("stage", ["sft", "reward_model"])
@pytest.mark.parametrize("damage", MODEL_DAMAGE.values(), ids=MODEL_DAMAGE.keys())
def test_a_damaged_cached_model_is_set_aside_with_one_warning_and_rebuilt(tmp_path, caplog, stage, damage):
    harm, why = damage
    builds, warnings, path = _built_twice(tmp_path, caplog, stage, _model, saved_model_problem, harm)
    assert len(builds) == 2
    assert len(warnings) == 1 and why in warnings[0] and "set aside" in warnings[0], warnings
    aside = list(path.parent.glob(f"{path.name}.damaged-*"))
    assert len(aside) == 1 and (aside[0] / MANIFEST).exists()  # kept as it was, not deleted


@pytest.mark.parametrize("damage", SET_DAMAGE.values(), ids=SET_DAMAGE.keys())
def test_a_cached_preference_set_that_does_not_load_is_set_aside_and_rebuilt(tmp_path, caplog, damage):
    harm, why = damage
    builds, warnings, path = _built_twice(tmp_path, caplog, "preferences", _preference_set, stored_set_problem, harm)
    assert len(builds) == 2
    assert len(warnings) == 1 and why in warnings[0], warnings
    assert len(list(path.parent.glob(f"{path.name}.damaged-*"))) == 1


def test_a_whole_artifact_is_reused_without_a_word_and_twice_damaged_keeps_both(tmp_path, caplog):
    builds = []

    def build(out: Path) -> None:
        builds.append(out)
        _model(out)

    first = build_or_load(tmp_path, "sft", {"x": 1}, build, check=saved_model_problem)
    with caplog.at_level(logging.WARNING, logger="harness.runs.cache"):
        assert build_or_load(tmp_path, "sft", {"x": 1}, build, check=saved_model_problem).reused
    assert len(builds) == 1 and not caplog.records
    for _ in range(2):  # damaged again within the same second: a second set-aside folder, the first kept
        _cut(first.path / "model-00001-of-00002.safetensors")
        assert not build_or_load(tmp_path, "sft", {"x": 1}, build, check=saved_model_problem).reused
    assert len(builds) == 3 and len(list(first.path.parent.glob(f"{first.key}.damaged-*"))) == 2


def test_a_damaged_stage_cache_is_rebuilt_by_the_next_job(tiny_cache_copy, run_pipeline, caplog):
    """The real tiny cache: the preference set's Arrow file cut and the reward model's config.json cut; a
    ``pipeline=reward_model`` job sets both aside (one warning each), builds them again, and they equal the
    originals (their facts: the same seeds, the same pairs, the same training)."""
    cache = tiny_cache_copy
    prefs, rm = (
        next(p for p in (cache / s).iterdir() if (p / MANIFEST).exists()) for s in ("preferences", "reward_model")
    )
    facts = {p: json.loads((p / MANIFEST).read_text())["facts"] for p in (prefs, rm)}
    _cut(next((prefs / "pairs" / "train").glob("data-*.arrow")))
    _cut(rm / "config.json")
    with caplog.at_level(logging.WARNING, logger="harness.runs.cache"):
        result, _ = run_pipeline("reward_model", "threads=1", cache=cache)
    warnings = [r.getMessage() for r in caplog.records if r.name == "harness.runs.cache"]
    assert len(warnings) == 2, warnings
    assert {w.split()[1] for w in warnings} == {"preferences", "reward_model"}, warnings
    assert result["reused"] is False and result["path"] == str(rm)
    for path in (prefs, rm):
        assert len(list(path.parent.glob(f"{path.name}.damaged-*"))) == 1
        got = json.loads((path / MANIFEST).read_text())["facts"]
        assert {k: v for k, v in got.items() if "loss" not in k} == {
            k: v for k, v in facts[path].items() if "loss" not in k
        }
