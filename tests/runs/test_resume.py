"""Resume inside a job, and the numerical guards, on the tiny config.

A PPO job and a DPO job are killed with SIGKILL after their first checkpoint, while writing their second (each in a
process of its own running the command line's ``main``, both at once), then the same command runs again: the rows,
the per-prompt evidence, the per-update log and the policy's weights equal those of an uninterrupted run, digit for
digit, no line is written twice, and W&B (offline) holds one run per job. Unlikelihood, our own loop, resumes the same
way (stopped in-process), and a resumed epoch draws the data order of an uninterrupted run. (Preferred-FT resumes with
DPO's machinery, trainer checkpoints and the same callbacks; it is left out here for time.) A NaN reward stops
PPO with one line and exit status 3, its rows and its last checkpoint kept.

Damaged after the kill (issue 25 step 2), each on a copy of the killed job's folder: PPO's state.pt cut short, DPO's
newest trainer checkpoint without its weights, the last line of points.jsonl and evidence.jsonl cut mid-write. Each
rerun logs at most one warning, resumes from the previous good checkpoint or from scratch, and ends with the
uninterrupted run's rows, each once.

Time: the jobs to kill start with the module, so their imports overlap the in-process tests; all runs are tiny.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.app.jobs import run_job, swept_pipeline_keys
from harness.eval.row import MEASURED_KEYS
from harness.runs import checkpoint
from tests.conftest import compose

ROOT = Path(__file__).resolve().parents[2]
# Four updates (steps), a checkpoint after each, an evaluation every two: seconds per run.
PPO = [
    "pipeline=ppo",
    "pipeline.updates=4",
    "pipeline.batch_size=8",
    "pipeline.max_new_tokens=8",
    "pipeline.checkpoint_every=1",
    "eval.every=2",
    "threads=1",
]
DPO = ["pipeline=dpo", "pipeline.max_steps=4", "pipeline.checkpoint_every=1", "eval.every=2", "threads=1"]
TIMING = MEASURED_KEYS | {"compute/episodes_per_s"}  # seconds and memory: the only values that may differ

# `python -m harness <argv>` for several jobs at once: one process imports what each job needs (most of a tiny job's
# time), then forks a child for it, which runs the command line's `main(argv)` and is the process the test kills. Each
# child's second checkpoint never completes: it writes its pid to its `paused` file and waits there for SIGKILL.
DOOMED_JOBS = """
import importlib, json, os, sys, time, traceback
from pathlib import Path

import harness.runs.checkpoint as ck
from harness.app.cli import main

commit, seen = ck.commit, []

def pausing_commit(path, write):
    if path.name in (ck.STATE, ck.MARK):
        seen.append(path)
        if len(seen) == 2:
            paused = Path(os.environ["PAUSED"])
            paused.with_suffix(".tmp").write_text(str(os.getpid()))
            os.replace(paused.with_suffix(".tmp"), paused)
            time.sleep(600)
    commit(path, write)

ck.commit = pausing_commit
children = []
for paused, modules, argv in json.loads(sys.argv[1]):
    for module in modules:  # what this job needs and the ones before did not: the first job starts soonest
        importlib.import_module(module)
    pid = os.fork()
    if pid == 0:
        os.environ["PAUSED"] = paused
        status = 0
        try:
            main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(status)
    children.append(pid)
while children:  # reap each child as it dies, in whatever order the tests kill them
    children.remove(os.wait()[0])
"""


def overrides(base: list[str], cache: Path, wandb: str = "disabled") -> list[str]:
    return [*base, "experiment=tiny_debug", f"cache_dir={cache}", f"logger.wandb_mode={wandb}"]


def run_in_process(argv: list[str], folder: Path) -> dict:
    """What ``python -m harness <argv> hydra.run.dir=<folder>`` runs, in this process."""
    return run_job(compose(argv), folder, None, swept_pipeline_keys(argv))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def without(records: list[dict], keys: set[str]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in records]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "policy" / "model.safetensors"))


def assert_same_run(resumed: Path, clean: Path) -> None:
    """Rows, evidence, per-update log and policy weights of ``resumed`` equal ``clean``'s, digit for digit (clean ran
    in another folder with W&B off, so run ids differ; seconds always do)."""
    ignore = TIMING | {"run_id"}
    assert without(lines(resumed / "points.jsonl"), ignore) == without(lines(clean / "points.jsonl"), ignore)
    assert without(lines(resumed / "evidence.jsonl"), ignore) == without(lines(clean / "evidence.jsonl"), ignore)
    assert without(lines(resumed / "updates.jsonl"), ignore) == without(lines(clean / "updates.jsonl"), ignore)
    a, b = weights(resumed), weights(clean)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished job keeps no checkpoint, but for those set aside as damaged (never deleted)
    kept = [p for p in checkpoint.folder(resumed).rglob("*") if ".damaged-" not in str(p.relative_to(resumed))]
    assert all(p.is_dir() for p in kept), kept


@dataclass
class Doomed:
    """A ``python -m harness`` job that will be killed at its second checkpoint."""

    method: str
    argv: list[str]
    folder: Path
    paused: Path  # holds the job's pid once it has reached the point where it is to die
    log: Path  # the output of every doomed job
    proc: subprocess.Popen | None = None  # the process that forks the jobs


@pytest.fixture(scope="module", autouse=True)
def doomed(request, tmp_path_factory):
    """A PPO job (W&B offline) and a DPO job, started with the module: their process imports torch and TRL (most of
    its time) while the in-process tests below run. Killed at teardown whatever happened. Not started when no test
    that kills them was selected (``-m "not slow"``)."""
    if not any(
        item.module is request.module and "doomed" in inspect.signature(item.function).parameters
        for item in request.session.items
    ):
        yield {}
        return
    tiny_cache = request.getfixturevalue("tiny_cache")
    tmp = tmp_path_factory.mktemp("resume")
    log = tmp / "jobs.log"
    jobs = {
        method: Doomed(method, overrides(base, tiny_cache, wandb), tmp / method, tmp / f"{method}.paused", log)
        for method, base, wandb in (("ppo", PPO, "offline"), ("dpo", DPO, "disabled"))
    }
    needs = {"ppo": ["wandb", "pipelines.ppo"], "dpo": ["trl.trainer.dpo_trainer", "pipelines.dpo"]}
    spec = json.dumps(
        [[str(job.paused), needs[job.method], [*job.argv, f"hydra.run.dir={job.folder}"]] for job in jobs.values()]
    )
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the jobs
        proc = subprocess.Popen(
            [sys.executable, "-c", DOOMED_JOBS, spec],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # a process group: it and its jobs
    for job in jobs.values():
        job.proc = proc
    yield jobs
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever a failed test left running
    except ProcessLookupError:
        pass
    proc.wait()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_at_second_checkpoint(job: Doomed, timeout: float = 300.0) -> dict[str, int]:
    """Wait until ``job`` is writing its second checkpoint, SIGKILL it, and return the lines its row files held."""
    deadline = time.time() + timeout
    while not job.paused.exists():
        if job.proc.poll() is not None:
            raise AssertionError(
                f"the jobs ended (status {job.proc.returncode}) before {job.method}'s second "
                "checkpoint:\n" + job.log.read_text(errors="replace")[-3000:]
            )
        assert time.time() < deadline, f"{job.method} did not reach its second checkpoint in {timeout} s"
        time.sleep(0.05)
    pid = int(job.paused.read_text())
    os.kill(pid, signal.SIGKILL)
    while not _gone(pid):  # dead and reaped by its parent: it writes nothing more
        assert time.time() < deadline, f"{job.method} (pid {pid}) survived SIGKILL"
        time.sleep(0.02)
    return {name: len(lines(job.folder / name)) for name in ("points.jsonl", "evidence.jsonl", "updates.jsonl")}


@dataclass
class AfterKill:
    """A doomed job after its kill: its uninterrupted twin's folder, the lines its row files held when it died, and a
    copy of its folder as the kill left it (the cases that damage it take copies of their own)."""

    clean: Path
    died_with: dict[str, int]
    snapshot: Path


@pytest.fixture(scope="module")
def after_kill(doomed, tiny_cache, tmp_path_factory) -> dict[str, AfterKill]:
    """Each doomed job killed at its second checkpoint, once for the module; the uninterrupted runs go first, while
    the doomed jobs get there."""
    tmp = tmp_path_factory.mktemp("after_kill")
    out = {}
    for method, base in (("ppo", PPO), ("dpo", DPO)):
        run_in_process(overrides(base, tiny_cache), tmp / f"{method}-clean")
        died_with = kill_at_second_checkpoint(doomed[method])
        shutil.copytree(doomed[method].folder, tmp / f"{method}-killed", symlinks=True)
        out[method] = AfterKill(tmp / f"{method}-clean", died_with, tmp / f"{method}-killed")
    return out


def rerun_damaged(doomed: Doomed, killed: AfterKill, folder: Path, damage, caplog) -> list[str]:
    """Copy the killed job's folder to ``folder``, ``damage`` it, run the same command there; the warnings logged."""
    shutil.copytree(killed.snapshot, folder, symlinks=True)
    damage(folder)
    with caplog.at_level(logging.WARNING):
        run_in_process(doomed.argv, folder)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("harness")]


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ------------------------------------------------------------------------------------------ our own loop
class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing catches it, so the job stops where it is."""


def test_stopped_unlikelihood_job_resumes_to_the_uninterrupted_result(tiny_cache, tmp_path, monkeypatch):
    argv = overrides(
        ["pipeline=unlikelihood", "pipeline.max_steps=3", "pipeline.checkpoint_every=1", "eval.every=2", "threads=1"],
        tiny_cache,
    )
    run_in_process(argv, tmp_path / "clean")
    commit, seen = checkpoint.commit, []

    def dying_commit(path, write):
        if path.name in (checkpoint.STATE, checkpoint.MARK):
            seen.append(path)
            if len(seen) == 2:  # the second checkpoint never lands
                raise Killed
        commit(path, write)

    monkeypatch.setattr(checkpoint, "commit", dying_commit)
    with pytest.raises(Killed):
        run_in_process(argv, tmp_path / "job")
    assert [r["step"] for r in lines(tmp_path / "job" / "points.jsonl")] == [0, 2]  # one row past the checkpoint
    monkeypatch.setattr(checkpoint, "commit", commit)
    facts = run_in_process(argv, tmp_path / "job")
    assert facts["steps"] == 3 and [r["step"] for r in lines(tmp_path / "job" / "points.jsonl")] == [0, 2, 3]
    assert_same_run(tmp_path / "job", tmp_path / "clean")


def test_a_resumed_epoch_draws_the_order_of_an_uninterrupted_run():
    from harness.lm.batching import LengthSortedSampler

    def make():
        return LengthSortedSampler([3, 1, 4, 1, 5, 9, 2, 6], batch_size=4, seed=0)

    straight = make()
    orders = []
    for epoch in range(3):
        straight.set_epoch(epoch)
        orders.append(list(straight))
    assert orders[0] != orders[1] != orders[2]  # each epoch a new shuffle, as the sampler alone draws them
    bare = make()
    assert [list(bare) for _ in range(3)] == orders  # and the same ones
    resumed = make()  # a resumed trainer's fresh sampler, asked for epoch 2
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]


# ------------------------------------------------------------------------------------------- numerical guards
def test_a_nan_reward_stops_ppo_with_one_line_keeping_rows_and_checkpoint(tiny_cache, tmp_path, monkeypatch, capsys):
    from harness.app import cli as app
    from pipelines import scoring

    score, calls, at_failure = scoring.RewardModelScore.__call__, [], {}
    state = checkpoint.folder(tmp_path / "job") / checkpoint.STATE

    def nan_at_update_2(self, s, prompts):
        calls.append(1)
        if len(calls) == 2:  # update 2's rollout; update 1's checkpoint is on disk
            at_failure["checkpoint"] = state.read_bytes()
            return torch.full((s.response.shape[0],), float("nan"))
        return score(self, s, prompts)

    monkeypatch.setattr(scoring.RewardModelScore, "__call__", nan_at_update_2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        app.main(overrides(PPO, tiny_cache) + [f"hydra.run.dir={tmp_path / 'job'}"])
    err = capsys.readouterr().err.strip().splitlines()  # the job's progress bars, then the error
    assert e.value.code == 3 and not any("Traceback" in line for line in err)
    assert [line for line in err if line.startswith("error:")] == err[-1:], err
    assert err[-1].startswith("error: reward is nan at update 2;"), err
    assert state.read_bytes() == at_failure["checkpoint"]  # the last good checkpoint, untouched
    assert torch.load(state, weights_only=True)["ppo"]["updates_done"] == 1
    assert [r["step"] for r in lines(tmp_path / "job" / "points.jsonl")] == [0]  # the rows so far, kept
    assert [u["update"] for u in lines(tmp_path / "job" / "updates.jsonl")] == [1]
    assert not (tmp_path / "job" / "done.json").exists()


# ------------------------------------------------------------------------------------- killed with SIGKILL
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_ppo_job_resumes_to_the_uninterrupted_result(doomed, after_kill):
    job, folder = doomed["ppo"], doomed["ppo"].folder
    died_with = after_kill["ppo"].died_with
    state = torch.load(checkpoint.folder(folder) / checkpoint.STATE, weights_only=True)
    assert state["ppo"]["updates_done"] == 1 and state["progress"]["lines"]["updates.jsonl"] == 1
    # it died after writing update 2's log line and its step-2 row: lines past its checkpoint, to be written again
    assert died_with == {"points.jsonl": 2, "evidence.jsonl": 2, "updates.jsonl": 2}

    run_in_process(job.argv, folder)  # the same command again
    assert [u["update"] for u in lines(folder / "updates.jsonl")] == [1, 2, 3, 4]  # one line per update
    assert [r["step"] for r in lines(folder / "points.jsonl")] == [0, 2, 4]
    assert len({r["run_id"] for r in lines(folder / "points.jsonl")}) == 1
    assert_same_run(folder, after_kill["ppo"].clean)
    # W&B (offline) keeps a folder per attempt (one, should both start in the same second), all with the job's one
    # run id, the one its rows name: synced, they are one run
    runs = sorted(p.name for p in (folder / "wandb").glob("offline-run-*"))
    ids = {name.rsplit("-", 1)[1] for name in runs}
    assert len(runs) in (1, 2) and len(ids) == 1, runs
    assert lines(folder / "points.jsonl")[0]["run_id"].endswith("-" + ids.pop())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_dpo_job_resumes_to_the_uninterrupted_result(doomed, after_kill):
    job, folder = doomed["dpo"], doomed["dpo"].folder
    died_with = after_kill["dpo"].died_with
    marked = [p.name for p in checkpoint.trainer_dir(folder).glob("checkpoint-*") if (p / checkpoint.MARK).exists()]
    assert marked == ["checkpoint-1"]  # the second was being written when the job died: not marked, not used
    assert died_with["points.jsonl"] == 2  # steps 0 and 2, one more than its checkpoint counted

    facts = run_in_process(job.argv, folder)  # the same command again
    assert facts["steps"] == 4 and [r["step"] for r in lines(folder / "points.jsonl")] == [0, 2, 4]
    assert_same_run(folder, after_kill["dpo"].clean)


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_a_killed_ppo_job_whose_state_was_cut_starts_afresh_to_the_uninterrupted_result(
    doomed, after_kill, tmp_path, caplog
):
    folder = tmp_path / "job"
    warnings = rerun_damaged(
        doomed["ppo"], after_kill["ppo"], folder, lambda f: cut_in_half(checkpoint.folder(f) / checkpoint.STATE), caplog
    )
    assert len(warnings) == 1 and "state.pt" in warnings[0] and "is damaged" in warnings[0], warnings
    assert [r["step"] for r in lines(folder / "points.jsonl")] == [0, 2, 4]  # from scratch: each row once
    assert_same_run(folder, after_kill["ppo"].clean)
    assert len(list(checkpoint.folder(folder).glob("state.pt.damaged-*"))) == 1  # kept, not deleted


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_a_killed_dpo_job_whose_newest_checkpoint_lost_its_weights_starts_afresh_to_the_uninterrupted_result(
    doomed, after_kill, tmp_path, caplog
):
    def lose_weights(f: Path) -> None:
        marked = [p for p in checkpoint.trainer_dir(f).glob("checkpoint-*") if (p / checkpoint.MARK).exists()]
        assert [p.name for p in marked] == ["checkpoint-1"]  # the only complete one: no earlier one to fall back on
        (marked[0] / "model.safetensors").unlink()

    folder = tmp_path / "job"
    warnings = rerun_damaged(doomed["dpo"], after_kill["dpo"], folder, lose_weights, caplog)
    assert len(warnings) == 1 and "checkpoint-1" in warnings[0] and "weights are missing" in warnings[0], warnings
    assert [r["step"] for r in lines(folder / "points.jsonl")] == [0, 2, 4]
    assert_same_run(folder, after_kill["dpo"].clean)
    assert len(list(checkpoint.trainer_dir(folder).glob("checkpoint-1.damaged-*"))) == 1


def cut_last_line(path: Path, keep: float) -> None:
    """A kill while ``path``'s last line was being written: that line keeps only its first ``keep`` of bytes."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + int((len(data) - start) * keep)])


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["ppo", "dpo"])
def test_row_files_ending_in_a_cut_line_resume_with_each_row_once(doomed, after_kill, tmp_path, caplog, method):
    """The kill came while the step-2 row (past the checkpoint, which counted one row) was being written: points.jsonl
    and evidence.jsonl end in half a line. The rerun resumes from the checkpoint and writes each row once."""

    def cut(f: Path) -> None:
        for name in ("points.jsonl", "evidence.jsonl"):
            assert len(lines(f / name)) == 2
            cut_last_line(f / name, 0.5)

    folder = tmp_path / "job"
    warnings = rerun_damaged(doomed[method], after_kill[method], folder, cut, caplog)
    assert warnings == []  # resumed from its checkpoint: nothing was damaged that it needed
    assert [r["step"] for r in lines(folder / "points.jsonl")] == [0, 2, 4]
    assert_same_run(folder, after_kill[method].clean)


def test_a_run_is_named_by_its_job_not_by_a_row_file(tmp_path):
    # the row-file loop once reused the name `name`: every run of every sweep got run_id "updates.jsonl"
    from harness.config import LoggerConfig
    from harness.runs.tracking import Tracker

    t = Tracker(tmp_path, LoggerConfig(wandb_mode="disabled"), {}, method="ppo", name="ppo-kl_coef=0.05-seed0")
    assert t.run_id == "ppo-kl_coef=0.05-seed0"
