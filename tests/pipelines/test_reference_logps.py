"""π_ref's log-probs of the pairs, computed once and shared by the DPO-family jobs (pipelines/stages/reference_logps.py):
they are TRL's per-batch values, a second trainer runs no reference forward, the key follows what the numbers depend
on, a damaged artifact is rebuilt, and end to end a job that loads them writes what the job that computed them wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.pipelines.test_dpo import CORPUS, PAIRS, _tiny_lm

STANDS_ON = {"sft": "sft-key", "preferences": "preferences-key"}


@pytest.fixture(scope="module")
def tok():
    from harness.lm.models import train_tokenizer

    return train_tokenizer(CORPUS * 4, 300)


def counting_reference(model, calls: list | None = None) -> list:
    """Count ``model``'s forwards that compute reference log-probs, into ``calls`` (TRL passes ``fused_lm_head``; the
    evaluator's KL forwards do not)."""
    calls = [] if calls is None else calls

    def hook(module, args, kwargs):
        if kwargs.get("fused_lm_head"):
            calls.append(module)

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def trainer(tok, tmp_path, shared, reference=None, **cfg):
    """A DPO trainer on 16 pairs; by default 2 steps of 4 pairs (micro-batches of 2): 8 of the 16 pairs are read."""
    from datasets import Dataset

    from pipelines.dpo import build_trainer
    from pipelines.schemas import DPOPipeline

    cfg = DPOPipeline(name="dpo", **{"batch_size": 4, "micro_batch_size": 2, "max_steps": 2, "max_length": 48, **cfg})
    data = Dataset.from_dict({k: v * 4 for k, v in PAIRS.items()})
    reference = reference if reference is not None else _tiny_lm(tok, 1)
    return build_trainer(
        _tiny_lm(tok, 0), reference, tok, data, cfg, str(tmp_path / "out"), seed=0, shared_reference=shared
    )


def artifacts(cache: Path) -> list[Path]:
    """The whole artifacts of the stage (not those set aside as damaged, nor builds under way)."""
    from harness.runs.cache import DAMAGED

    folders = (cache / "reference_logps").iterdir()
    return sorted(p for p in folders if p.is_dir() and not p.name.startswith(".") and DAMAGED not in p.name)


def test_shared_logps_are_trls_per_batch_ones_and_a_second_trainer_runs_no_reference(tok, tmp_path):
    from pipelines.stages.reference_logps import SharedReference

    torch.set_num_threads(1)
    shared = SharedReference(tmp_path / "cache", STANDS_ON)
    first_ref = _tiny_lm(tok, 1)
    first_calls = counting_reference(first_ref)
    first = trainer(tok, tmp_path, shared, first_ref)
    rows = first.rows_read_in_training(first.train_dataset)
    assert len(rows) == 8 and len(first_calls) == 2  # the pairs the 2 steps read, in batches of 4
    (art,) = artifacts(tmp_path / "cache")
    assert sorted(p.name for p in art.iterdir()) == ["artifact.json", "logps.safetensors"]  # no datasets cache files
    assert not list((tmp_path / "cache").rglob("cache-*.arrow"))

    # every training batch holds TRL's own reference log-probs of its pairs, computed in that very batch
    accumulate = first.args.gradient_accumulation_steps
    for _, batch in zip(range(first.args.max_steps * accumulate), first.get_train_dataloader()):
        chosen, rejected = first.compute_ref_log_probs(first.ref_model, batch)
        torch.testing.assert_close(batch["ref_chosen_logps"], chosen, rtol=1e-5, atol=0)
        torch.testing.assert_close(batch["ref_rejected_logps"], rejected, rtol=1e-5, atol=0)

    second_ref = _tiny_lm(tok, 1)
    second_calls = counting_reference(second_ref)
    second = trainer(tok, tmp_path, shared, second_ref, beta=0.5)  # another β: the same pairs, the same artifact
    second.train()
    assert second_calls == [] and len(artifacts(tmp_path / "cache")) == 1  # loaded: π_ref never ran
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert torch.equal(
            torch.tensor(first.train_dataset[column]).nan_to_num(1.0),
            torch.tensor(second.train_dataset[column]).nan_to_num(1.0),
        )


def test_a_job_that_reads_a_whole_pass_takes_every_pair_and_per_batch_takes_none(tok, tmp_path):
    from pipelines.stages.reference_logps import SharedReference

    shared = SharedReference(tmp_path / "cache", STANDS_ON)
    whole = trainer(tok, tmp_path, shared, max_steps=4)  # 16 pairs: one pass
    assert whole.rows_read_in_training(whole.train_dataset) == list(range(16))
    assert not any(torch.tensor(whole.train_dataset["ref_chosen_logps"]).isnan())
    per_batch = trainer(tok, tmp_path, None)
    assert not per_batch.precompute_ref_logps and "ref_chosen_logps" not in per_batch.train_dataset.column_names


def test_the_key_follows_the_weights_the_data_and_the_settings(tok, tmp_path):
    from pipelines.stages.reference_logps import SharedReference

    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    shared = SharedReference(cache, STANDS_ON)
    trainer(tok, tmp_path, shared)
    trainer(tok, tmp_path, shared, beta=1.0, loss_type="robust", label_smoothing=0.1)  # the loss: the same artifact
    assert len(artifacts(cache)) == 1
    trainer(tok, tmp_path, shared, max_length=40)
    trainer(tok, tmp_path, shared, reference=_tiny_lm(tok, 2))  # other π_SFT weights
    trainer(tok, tmp_path, SharedReference(cache, {**STANDS_ON, "sft": "another"}))
    trainer(tok, tmp_path, SharedReference(cache, {**STANDS_ON, "preferences": "another"}))
    trainer(tok, tmp_path, shared, max_steps=1)  # other pairs read
    torch.set_num_threads(2)
    try:
        trainer(tok, tmp_path, shared)
    finally:
        torch.set_num_threads(1)
    assert len(artifacts(cache)) == 7


def test_the_stages_it_stands_on_follow_the_config(tmp_path, monkeypatch):
    from harness.app.jobs import load as validate
    from harness.lm import distributed
    from harness.runs.context import RunContext
    from pipelines.stages.reference_logps import shared_reference
    from tests.conftest import compose
    from tests.data.test_preference_file import _jsonl, _standard

    def stands_on(*overrides):
        hc = validate(compose(["pipeline=dpo", f"cache_dir={tmp_path / 'cache'}", *overrides]))
        shared = shared_reference(RunContext(hc, tmp_path / "job"))
        return shared.stands_on if shared else None

    base = stands_on()
    assert base == stands_on("pipeline.beta=5") == stands_on("pipeline=ipo")
    assert stands_on("sft.epochs=3")["sft"] != base["sft"]
    assert stands_on("preferences.min_margin=0.1")["preferences"] != base["preferences"]
    # a preference file: keyed on its content, not its name
    path = _jsonl(tmp_path / "pairs.jsonl", _standard())
    on_file = stands_on("preferences.source=file", f"preferences.path={path}")
    _jsonl(path, _standard()[:-1])
    assert stands_on("preferences.source=file", f"preferences.path={path}")["preferences"] != on_file["preferences"]
    assert stands_on("pipeline.reference_logps=per_batch") is None
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert stands_on() is None  # several processes: π_ref on every batch, as before


def test_a_damaged_artifact_is_rebuilt(tok, tmp_path, caplog):
    from pipelines.stages.reference_logps import FILE, SharedReference

    torch.set_num_threads(1)
    shared = SharedReference(tmp_path / "cache", STANDS_ON)
    before = torch.tensor(trainer(tok, tmp_path, shared).train_dataset["ref_chosen_logps"])
    (art,) = artifacts(tmp_path / "cache")
    stored = art / FILE
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    reference = _tiny_lm(tok, 1)
    calls = counting_reference(reference)
    after = torch.tensor(trainer(tok, tmp_path, shared, reference).train_dataset["ref_chosen_logps"])
    assert calls and "is damaged" in caplog.text
    assert [p.name for p in artifacts(tmp_path / "cache")] == [art.name]
    assert len(list(art.parent.glob(f"{art.name}.damaged-*"))) == 1  # set aside, not deleted
    assert torch.equal(before.nan_to_num(1.0), after.nan_to_num(1.0))


def test_a_retired_precompute_switch_is_refused():
    from harness.fields import ConfigError
    from pipelines.schemas import DPOPipeline

    with pytest.raises(ConfigError, match="pipeline.precompute_ref_log_probs"):
        DPOPipeline(name="dpo", precompute_ref_log_probs=True)
    with pytest.raises(ConfigError, match="pipeline.reference_logps"):
        DPOPipeline(name="dpo", reference_logps="sometimes")


# ----------------------------------------------------------------------------------------------------------------
# end to end: the jobs of a β sweep
# ----------------------------------------------------------------------------------------------------------------

# 4 steps of 16 pairs: 64 of the tiny set's pairs, so the jobs share the pairs they read, not the whole set
SWEEP = ["pipeline.max_steps=4", "pipeline.batch_size=16", "pipeline.micro_batch_size=8", "eval.every=2", "threads=1"]


def _rows(folder: Path) -> list[dict]:
    from harness.eval.row import MEASURED_KEYS

    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in MEASURED_KEYS | {"run_id"}} for r in rows]


def test_a_job_that_loads_them_writes_what_the_job_that_computed_them_wrote(run_pipeline, tiny_cache_copy, monkeypatch):
    import pipelines.trainer_run

    load = pipelines.trainer_run.load_frozen_reference
    calls: list = []

    def counted(*args, **kwargs):
        reference = load(*args, **kwargs)
        counting_reference(reference, calls)
        return reference

    monkeypatch.setattr(pipelines.trainer_run, "load_frozen_reference", counted)
    # the session's cache may hold them already (another test's DPO job on the same π_SFT and pairs): start without
    shutil.rmtree(tiny_cache_copy / "reference_logps", ignore_errors=True)
    preferences = sorted((tiny_cache_copy / "preferences").rglob("*"))
    computed, first = run_pipeline("dpo", *SWEEP, cache=tiny_cache_copy, folder="first")
    assert calls  # the first job computed them
    calls.clear()
    loaded, again = run_pipeline("dpo", *SWEEP, cache=tiny_cache_copy, folder="again")
    run_pipeline("ipo", *SWEEP, cache=tiny_cache_copy, folder="ipo")
    assert calls == [] and len(artifacts(tiny_cache_copy)) == 1  # the later jobs loaded them: π_ref never ran
    assert loaded["train_loss"] == pytest.approx(computed["train_loss"], rel=1e-6)
    assert _rows(again) == _rows(first)
    assert sorted((tiny_cache_copy / "preferences").rglob("*")) == preferences  # no datasets cache files written there
