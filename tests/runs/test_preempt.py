"""Pre-emption (harness/runs/preempt.py): SIGTERM / SIGUSR1 / SIGUSR2 make a job save at its next safe point, hand
the signal to the handler installed before ours, and exit with 128 + the signal; the same command again gives the
uninterrupted run's rows and weights.

The real cases run ``python -m harness`` in a child process that sends itself SIGTERM at a fixed point of the run (a
real signal, delivered where the test chooses, so the case never races the job), with no periodic checkpoint: what
the rerun resumes from is the checkpoint the signal made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.runs import checkpoint, preempt
from tests.runs.test_resume import (
    DPO,
    PPO,
    TIMING,
    assert_same_run,
    lines,
    overrides,
    run_in_process,
    without,
)

ROOT = Path(__file__).resolve().parents[2]

# `python -m harness <argv>` that sends itself SIGTERM once the run folder's row file NAME gets its line number AT
SIGNAL_AT = """
import os, signal, sys
import harness.runs.tracking as tracking
from harness.app.cli import main

name, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
append, seen = tracking.Tracker.append, []

def signalling_append(self, file, record):
    append(self, file, record)
    if file == name:
        seen.append(1)
        if len(seen) == at:
            os.kill(os.getpid(), signal.SIGTERM)

tracking.Tracker.append = signalling_append
main(argv)
"""


# `python -m harness <argv>` that sends itself SIGTERM at the end of a stage trainer's optimizer step AT
SIGNAL_AT_STAGE_STEP = """
import os, signal, sys
from pipelines.stages.resume import StageCheckpoints
from harness.app.cli import main

at, argv = int(sys.argv[2]), sys.argv[3:]
on_step_end = StageCheckpoints.on_step_end

def signalling_step_end(self, args, state, control, **kwargs):
    if state.global_step == at:
        os.kill(os.getpid(), signal.SIGTERM)
    return on_step_end(self, args, state, control, **kwargs)

StageCheckpoints.on_step_end = signalling_step_end
main(argv)
"""


def signalled(
    argv: list[str], folder: Path, name: str, at: int, script: str = SIGNAL_AT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, name, str(at), *argv, f"hydra.run.dir={folder}"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )


@pytest.mark.battery
def test_a_signal_is_recorded_saved_at_the_safe_point_and_handed_on():
    handed = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: handed.append(signum))  # e.g. submitit's requeue handler
    preempt.install()
    preempt.stop_if_requested(lambda: pytest.fail("nothing received: nothing to save"))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert preempt.requested() == signal.SIGUSR1 and handed == []  # recorded only: the loop decides when
    saved = []
    with pytest.raises(preempt.Preempted) as e:
        preempt.stop_if_requested(lambda: saved.append(1))
    assert saved == [1] and handed == [signal.SIGUSR1]
    assert e.value.exit_status == 128 + signal.SIGUSR1


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_sigterm_mid_ppo_saves_then_the_rerun_gives_the_uninterrupted_run(tiny_cache, tmp_path):
    argv = overrides([*PPO, "pipeline.checkpoint_every=0"], tiny_cache)
    r = signalled(argv, tmp_path / "job", "updates.jsonl", 2)  # after update 2
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "stopped: stopped by SIGTERM" in r.stderr
    state = checkpoint.folder(tmp_path / "job") / checkpoint.STATE
    assert torch.load(state, weights_only=True)["ppo"]["updates_done"] == 2  # saved at the safe point it reached
    assert not (tmp_path / "job" / "done.json").exists()
    run_in_process(argv, tmp_path / "clean")
    run_in_process(argv, tmp_path / "job")  # the same command again
    assert [u["update"] for u in lines(tmp_path / "job" / "updates.jsonl")] == [1, 2, 3, 4]
    assert_same_run(tmp_path / "job", tmp_path / "clean")


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_sigterm_mid_dpo_saves_a_trainer_checkpoint_then_the_rerun_gives_the_uninterrupted_run(tiny_cache, tmp_path):
    argv = overrides([*DPO, "pipeline.checkpoint_every=0"], tiny_cache)
    r = signalled(argv, tmp_path / "job", "points.jsonl", 2)  # at the step-2 row
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    marked = [
        p.name for p in checkpoint.trainer_dir(tmp_path / "job").glob("checkpoint-*") if (p / "harness.json").exists()
    ]
    assert marked == ["checkpoint-2"]
    assert [row["step"] for row in lines(tmp_path / "job" / "points.jsonl")] == [0, 2]
    run_in_process(argv, tmp_path / "clean")
    facts = run_in_process(argv, tmp_path / "job")
    assert facts["steps"] == 4 and [row["step"] for row in lines(tmp_path / "job" / "points.jsonl")] == [0, 2, 4]
    assert_same_run(tmp_path / "job", tmp_path / "clean")
    assert json.loads((tmp_path / "job" / "done.json").read_text())["result"]["steps"] == 4


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_sigterm_mid_sft_build_keeps_its_trainer_checkpoint_in_the_cache_and_the_rerun_resumes_it(tmp_path, caplog):
    """π_SFT's build (13 steps on tiny_debug) signalled at step 2: its trainer checkpoint is kept in the stage cache,
    no artifact is committed, and the same command resumes from that checkpoint (not from zero) to the π_SFT and the
    rows of an uninterrupted build."""
    from safetensors.torch import load_file

    argv = overrides(["pipeline=sft", "threads=1"], tmp_path / "cache")
    r = signalled(argv, tmp_path / "job", "", 2, SIGNAL_AT_STAGE_STEP)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "stopped: stopped by SIGTERM" in r.stderr
    stage = tmp_path / "cache" / "sft"
    (resume,) = stage.glob(".resume-*")
    assert [p.name for p in resume.glob("checkpoint-*") if (p / checkpoint.MARK).exists()] == ["checkpoint-2"]
    assert not list(stage.glob("*/artifact.json")) and not list(stage.glob(".tmp-*"))  # nothing half-built kept

    caplog.set_level("INFO", logger="harness.runs.checkpoint")
    run_in_process(argv, tmp_path / "job")  # the same command again
    assert f"from {resume / 'checkpoint-2'}" in caplog.text  # resumed, not rebuilt from zero
    run_in_process(overrides(["pipeline=sft", "threads=1"], tmp_path / "clean_cache"), tmp_path / "clean")
    (built,) = stage.glob("*/artifact.json")
    (clean,) = (tmp_path / "clean_cache" / "sft").glob("*/artifact.json")
    assert built.parent.name == clean.parent.name and not resume.exists()  # committed: the checkpoint is gone
    a, b = load_file(str(built.parent / "model.safetensors")), load_file(str(clean.parent / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ignore = TIMING | {"run_id"}
    rows = without(lines(tmp_path / "job" / "points.jsonl"), ignore)
    assert rows and rows == without(lines(tmp_path / "clean" / "points.jsonl"), ignore)
    facts = [json.loads(p.read_text())["facts"] for p in (built, clean)]
    assert facts[0]["heldout_perplexity"] == facts[1]["heldout_perplexity"]
    assert facts[0]["train_loss"] == pytest.approx(facts[1]["train_loss"], rel=1e-5)  # the whole build's mean
