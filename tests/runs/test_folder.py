"""Run folders protect finished work (harness/runs/folder.py): a folder belongs to the job that ran in it, another job
stops before anything is written there (or, with overwrite=true, moves the old run aside), and one process at a time
runs a job in a folder.

The refusals run the command line in-process on folders made by hand (a finished run of another job, folders from
before job.json); the real runs stand on the tiny stage cache (slow): the same command twice, a different one refused
with its rows byte-identical, overwrite=true, and two processes started at once into one folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.app.cli as app
from harness.fields import ConfigError
from harness.report.load import load_points
from harness.runs import folder as run_folder
from tests.preflight.test_bad_inputs import cli  # noqa: F401 - the fixture: the command line in-process

ROOT = Path(__file__).resolve().parents[2]
OTHER = "0123456789abcdef"  # the key of a job no command below runs
ROW = {"method": "dpo", "setting": "beta=0.1", "seed": 0, "step": 4, "gold": 0.5, "kl": 1.0}


def finished_run(folder: Path, *, job: bool = True, done: bool = True, key: str = OTHER) -> dict[str, bytes]:
    """A finished run of another job in ``folder`` (job.json and done.json as asked, rows always); returns every file's
    bytes, to show nothing changed."""
    folder.mkdir(parents=True, exist_ok=True)
    if job:
        (folder / run_folder.JOB).write_text(json.dumps({"key": key, "label": "dpo beta=0.1 seed 0"}))
    if done:
        (folder / "done.json").write_text(json.dumps({"key": key, "result": {}}))
    (folder / "points.jsonl").write_text(json.dumps(ROW) + "\n")
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(code, err: list[str], *names: str) -> None:
    """Exit 2, one line naming ``names``, no traceback."""
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    for name in names:
        assert name in err[0], (name, err[0])


TINY = ["experiment=tiny_debug", "pipeline=sft"]


# ----------------------------------------------------------------------------------------- what a folder holds
def test_a_folder_belongs_to_its_job_and_a_claim_without_rows_protects_nothing(tmp_path):
    assert run_folder.owner(tmp_path / "none") is None and run_folder.conflict(tmp_path / "none", "k") is None
    finished_run(tmp_path / "a")
    assert run_folder.owner(tmp_path / "a") == run_folder.Owner(OTHER, "dpo beta=0.1 seed 0")
    assert run_folder.conflict(tmp_path / "a", OTHER) is None  # the same job: reused, not refused
    assert run_folder.conflict(tmp_path / "a", "another").key == OTHER
    claimed = tmp_path / "claimed"  # a job claimed it and died before writing anything: nothing to protect
    claimed.mkdir()
    (claimed / run_folder.JOB).write_text(json.dumps({"key": OTHER, "label": "x"}))
    (claimed / "points.jsonl").write_text("")
    assert not run_folder.holds_run(claimed) and run_folder.conflict(claimed, "another") is None


@pytest.mark.battery
@pytest.mark.parametrize(
    "make, owner",
    [
        (lambda f: finished_run(f, job=False), OTHER),  # before job.json: its done.json's key
        (lambda f: finished_run(f, job=False, done=False), None),  # rows only: an unknown job, still protected
        (lambda f: _trainer_checkpoint(f, OTHER), OTHER),  # a killed run's checkpoint names its job
    ],
    ids=["done.json only", "rows only", "checkpoint only"],
)
def test_a_folder_from_before_job_json_is_protected_by_what_it_holds(cli, tmp_path, make, owner):  # noqa: F811
    run = tmp_path / "run"
    make(run)
    before = snapshot(run)
    code, err = cli([*TINY, f"hydra.run.dir={run}"])
    assert_refused(code, err, str(run), "overwrite=true", "hydra.run.dir=<another folder>")
    assert (f"key {owner}" in err[0]) == (owner is not None)
    assert snapshot(run) == before and not (tmp_path / "cache").exists()


def _trainer_checkpoint(folder: Path, key: str) -> None:
    mark = folder / "checkpoint" / "trainer" / "checkpoint-2" / "harness.json"
    mark.parent.mkdir(parents=True)
    mark.write_text(json.dumps({"key": key, "progress": {"lines": {}}}))


# ------------------------------------------------------------------------------------- the command line refuses
@pytest.mark.battery
def test_another_job_into_a_finished_run_stops_in_one_line_naming_both(cli, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    before = finished_run(run)
    code, err = cli([*TINY, "seed=3", f"hydra.run.dir={run}"])
    assert_refused(code, err, "dpo beta=0.1 seed 0", OTHER, "sft seed 3", "hydra.run.dir=", "overwrite=true")
    assert snapshot(run) == before  # not a byte written: the check ran before Hydra made .hydra/ there
    assert not (tmp_path / "cache").exists()


@pytest.mark.battery
def test_a_study_checks_every_jobs_folder_before_its_first_job(cli, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    before = finished_run(sweep / "pipeline.beta=0.1,pipeline=dpo,seed=0")  # job 2's folder, another job's run
    code, err = cli(
        [
            "-m",
            "experiment=smoke",
            'study=[["pipeline=sft"],["pipeline=dpo","pipeline.beta=0.1"]]',
            "hydra.callbacks={}",
        ]
    )
    assert_refused(code, err, "hydra.sweep.dir", "[job 2]", "dpo beta=0.1 seed 0", "overwrite=true")
    assert snapshot(sweep / "pipeline.beta=0.1,pipeline=dpo,seed=0") == before
    assert sorted(p.name for p in sweep.iterdir()) == ["pipeline.beta=0.1,pipeline=dpo,seed=0"]  # job 1 not started
    assert not (tmp_path / "cache").exists()


@pytest.mark.battery
def test_a_plain_sweep_checks_every_jobs_folder_before_its_first_job(cli, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    before = finished_run(sweep / "1_sft")
    code, err = cli(["-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert_refused(code, err, "hydra.sweep.dir", "[job 2]", str(sweep / "1_sft"))
    assert snapshot(sweep) == {f"1_sft/{k}": v for k, v in before.items()}
    assert not (tmp_path / "cache").exists()


@pytest.mark.battery
def test_overwrite_is_a_bool_and_no_part_of_the_job(cli, tmp_path):  # noqa: F811
    code, err = cli([*TINY, "overwrite=maybe"])
    assert_refused(code, err, "overwrite")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    from harness.app.jobs import job_identities
    from tests.conftest import compose

    assert job_identities(compose(TINY)) == job_identities(compose([*TINY, "overwrite=true"]))


@pytest.mark.battery
def test_a_folder_in_use_by_another_process_stops_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / run_folder.LOCK, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: flock conflicts with it as with another process
    try:
        with pytest.raises(ConfigError, match=r"is in use: another process \(pid 4242\).*hydra.run.dir=<another"):
            with run_folder.locked(run):
                pass
    finally:
        os.close(fd)
    with run_folder.locked(run):  # released with its holder
        assert (run / run_folder.LOCK).read_text() == str(os.getpid())


def test_overwrite_moves_the_old_run_aside_and_the_report_skips_it(tmp_path):
    run = tmp_path / "run"
    before = finished_run(run)
    with run_folder.locked(run):
        with pytest.raises(ConfigError):
            run_folder.claim(run, "mine", "sft seed 0", overwrite=False)
        run_folder.claim(run, "mine", "sft seed 0", overwrite=True)
    (replaced,) = run.glob(".replaced-*")
    assert snapshot(replaced) == before  # every file, moved as it was
    assert json.loads((run / run_folder.JOB).read_text()) == {"key": "mine", "label": "sft seed 0"}
    assert load_points(tmp_path) == []  # the old rows are kept, but no longer the folder's


# -------------------------------------------------------------------------------------------- real runs (slow)
def _main(argv: list[str], capsys) -> tuple[int | str | None, list[str]]:
    capsys.readouterr()
    try:
        app.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]


@pytest.mark.battery
def test_finished_work_is_reused_refused_or_moved_aside_never_lost(tiny_cache, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*TINY, f"cache_dir={tiny_cache}", "logger.wandb_mode=disabled", "threads=1", f"hydra.run.dir={run}"]
    assert _main(argv, capsys) == (0, [])
    rows = (run / "points.jsonl").read_bytes()
    assert json.loads((run / run_folder.JOB).read_text())["label"] == "sft seed 0"

    assert _main(argv, capsys) == (0, [])  # the same command again: reused
    assert (run / "points.jsonl").read_bytes() == rows

    code, err = _main([*argv, "seed=1"], capsys)  # another job: refused, the rows byte-identical
    assert_refused(code, err, "sft seed 0", "sft seed 1", "overwrite=true")
    assert (run / "points.jsonl").read_bytes() == rows

    assert _main([*argv, "seed=1", "overwrite=true"], capsys) == (0, [])
    (replaced,) = run.glob(".replaced-*")
    assert (replaced / "points.jsonl").read_bytes() == rows  # moved aside, not deleted
    assert (replaced / ".hydra").is_dir()  # Hydra's files too: moved before Hydra wrote the new job's
    assert {r["seed"] for r in load_points(run)} == {1}  # the report reads the folder's own job only
    assert json.loads((run / run_folder.JOB).read_text())["label"] == "sft seed 1"


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_two_processes_started_at_once_into_one_folder_write_each_row_once(tiny_cache, tmp_path):
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "harness",
        "experiment=tiny_debug",
        "pipeline=dpo",
        "pipeline.max_steps=4",
        "eval.every=2",
        f"cache_dir={tiny_cache}",
        "logger.wandb_mode=disabled",
        "threads=1",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    procs.append(
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    )
    results = [(p.wait(timeout=500), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # the second to reach the lock stops in one line, or (if the first had finished by then) reuses the finished job
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("error")]
            assert len(errors) == 1 and "is in use" in errors[0] and "Traceback" not in err, err
    steps = [json.loads(line)["step"] for line in (run / "points.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4]
    assert len((run / "evidence.jsonl").read_text().splitlines()) == 3
