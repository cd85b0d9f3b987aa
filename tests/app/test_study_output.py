"""A study a person can read (harness/app/study_output.py): the progress a job reads from the sweep folder, its two
terminal lines, its output in job.log, and a failed job named with the study's exit status non-zero."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import harness.app.cli as app
from harness.app import study_output as so

SECRET = "hf_studyOutputNotReal0123456789"


def test_eta_spreads_the_jobs_left_over_the_running_slots():
    assert so.eta([], [5.0], 3) is None  # nothing has ended yet: no estimate
    # two jobs of 60 s ended; two run (for 10 s and 50 s); four are left: 50 s to free the first slot's job, then
    # 4 jobs x 60 s over 2 slots
    assert so.eta([60.0, 60.0], [10.0, 50.0], 4) == pytest.approx(50.0 + 120.0)
    assert so.eta([30.0], [], 0) == 0.0


def test_progress_counts_the_job_states_in_the_sweep_folder(tmp_path):
    assert so.progress(tmp_path) is None  # a plain sweep: no study file
    so.begin(tmp_path, 5)
    study = json.loads((tmp_path / so.STUDY).read_text())
    states = {0: ("done", 100.0, 160.0), 1: ("reused", 100.0, 101.0), 2: ("running", 150.0, None)}
    for num, (state, started, ended) in states.items():
        so._write_json(tmp_path / so.STATUS / f"{num}.json", {"state": state, "started": started, "ended": ended})
    p = so.progress(tmp_path, now=study["started"] + 90)
    assert (p.jobs, p.done, p.running, p.left) == (5, 2, 1, 2)
    assert p.elapsed_s == pytest.approx(90)
    # only the job that ran counts for the estimate (60 s), the reused one does not
    assert p.eta_s == pytest.approx(so.eta([60.0], [study["started"] + 90 - 150.0], 2))
    so.begin(tmp_path, 3)  # a rerun starts afresh
    assert so.progress(tmp_path).done == 0


def test_a_job_label_is_short_without_how_it_runs_and_without_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    overrides = ["pipeline.beta=0.1", "pipeline=dpo", "seed=1", "threads=2", f"logger.entity={SECRET}"]
    overrides += ["+hub.api_key=abc", "cache_dir=/tmp/c", "hydra.run.dir=/tmp/r"]
    label = so.job_label(overrides, hidden=["threads"])
    assert label == "dpo beta=0.1 seed=1 logger.entity=<HF_TOKEN> hub.api_key=<redacted>"


def test_result_lines_give_the_first_and_last_evaluation_or_the_failure():
    rows = [{"gold_reward": 0.5, "kl": 0.0}, {"gold_reward": 0.81234, "kl": 5.4321}]
    line = so.result_line(2, 19, "dpo beta=0.1", "done", 75.0, rows)
    assert line == "[ 3/19] done   dpo beta=0.1: gold 0.500 -> 0.812 at KL 5.43 nats (2 evaluations), 1.2 min"
    assert "reused" in so.result_line(0, 2, "sft", "reused", 0.1, rows[:1])
    assert "(1 evaluation)" in so.result_line(0, 2, "sft", "reused", 0.1, rows[:1])
    failed = so.result_line(0, 2, "ppo", "failed", 3.0, [], "RuntimeError: boom")
    assert failed == "[1/2] FAILED ppo after 3 s: RuntimeError: boom"


def test_to_file_takes_what_c_code_and_child_processes_write(tmp_path, capfd):
    log = tmp_path / "job" / so.JOB_LOG
    with so.to_file(log) as terminal:
        print("from python")
        print("a warning", file=sys.stderr)
        subprocess.run(["echo", "from a child"], check=True)
        so.say(terminal, "[1/1] start  sft")
    out, err = capfd.readouterr()
    assert out == "[1/1] start  sft\n" and err == ""  # the terminal got the status line only
    assert log.read_text().splitlines() == ["from python", "a warning", "from a child", "[1/1] start  sft"]


def _fake_run_job(fail: str):
    """A stand-in for run_job that trains nothing: it prints like a job, and raises for the method ``fail``."""

    def run_job(cfg, folder, sweep_name=None, swept=()):
        print(f"training {cfg.pipeline.name}: lots of progress output")
        print("a library warning", file=sys.stderr)
        if cfg.pipeline.name == fail:
            raise RuntimeError(f"{fail} broke")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.json").write_text("{}")
        return {}

    return run_job


def test_a_study_prints_two_lines_per_job_names_the_failed_one_and_exits_1(tmp_path, monkeypatch, capfd):
    """The basic launcher in this process: every job runs, the failing one is named in its result line and at the
    end, its traceback is in its job.log, the other jobs' output is in theirs, and the study's status is 1."""
    monkeypatch.setattr(app, "run_job", _fake_run_job("dpo"))
    monkeypatch.setattr(so, "FAILED", [])
    sweep = tmp_path / "sweep"
    argv = [
        "experiment=smoke",
        'study=[["pipeline=sft"],["pipeline=dpo"],["pipeline=unlikelihood"]]',
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        "logger.wandb_mode=disabled",
    ]
    with pytest.raises(SystemExit) as stop:
        app.main(argv)
    assert stop.value.code == so.FAILED_STATUS
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("study smoke: 3 jobs ->") and "job.log" in lines[0]
    assert [line.split()[:2] for line in lines[1:7]] == [
        ["[1/3]", "start"],
        ["[1/3]", "done"],
        ["[2/3]", "start"],
        ["[2/3]", "FAILED"],
        ["[3/3]", "start"],
        ["[3/3]", "done"],
    ]
    assert "RuntimeError: dpo broke" in lines[4] and "job.log" in lines[4]
    assert re.fullmatch(r"study finished: 3 jobs in \d+\.\d min, 1 FAILED", lines[7]), lines[7]  # any duration
    assert lines[8] == "  failed: job 2 (dpo seed=0): RuntimeError: dpo broke"
    assert "progress output" not in out and "library warning" not in out + err
    dpo_log = next(sweep.glob("*dpo*")) / so.JOB_LOG
    assert "Traceback" in dpo_log.read_text() and "a library warning" in dpo_log.read_text()
    sft_log = next(sweep.glob("*sft*")) / so.JOB_LOG
    assert "training sft: lots of progress output" in sft_log.read_text()


@pytest.mark.battery
def test_a_preempted_job_stops_the_study_with_128_plus_the_signal(tmp_path, monkeypatch, capfd):
    """A real SIGTERM during the second of three jobs (the basic launcher, in this process): the job saves at its safe
    point, its one line says it stopped and how to go on, the third job never starts, the study is no failed job and
    exits 128 + 15 (what a scheduler requeues on)."""
    import os
    import signal

    from harness.runs import preempt

    saved = []

    def run_job(cfg, folder, sweep_name=None, swept=()):
        preempt.install()
        folder.mkdir(parents=True, exist_ok=True)
        if cfg.pipeline.name == "dpo":
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's warning, mid-job
            preempt.stop_if_requested(lambda: saved.append(cfg.pipeline.name))  # the job's next safe point
        (folder / "done.json").write_text("{}")
        return {}

    monkeypatch.setattr(app, "run_job", run_job)
    monkeypatch.setattr(so, "FAILED", [])
    argv = [
        "experiment=smoke",
        'study=[["pipeline=sft"],["pipeline=dpo"],["pipeline=unlikelihood"]]',
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "logger.wandb_mode=disabled",
    ]
    with pytest.raises(SystemExit) as stop:
        app.main(argv)
    assert stop.value.code == 128 + signal.SIGTERM and saved == ["dpo"] and so.FAILED == []
    out, err = capfd.readouterr()
    # the study's lines (under pytest, Hydra's log handler writes to pytest's capture, not to the job's job.log)
    lines = [line for line in out.splitlines() if line.startswith("[") and line[2:4] == "/3"]
    assert [line.split()[:2] for line in lines] == [["[1/3]", "start"], ["[1/3]", "done"], ["[2/3]", "start"]] + [
        ["[2/3]", "stopped"]
    ]
    assert "study finished" not in out  # the study stopped there: no verdict, no report
    assert lines[-1] == "[2/3] stopped dpo seed=0: stopped by SIGTERM; rerun the same command to resume"
    assert err == "" and not list((tmp_path / "sweep").glob("*unlikelihood*"))


@pytest.mark.slow
@pytest.mark.battery
@pytest.mark.timeout(600)
def test_a_joblib_study_signalled_like_slurm_saves_its_running_job_and_the_rerun_resumes_it(tiny_cache_copy, tmp_path):
    """SIGTERM to the study's whole process group (what Slurm sends) while a PPO job runs in a joblib worker, next to
    an idle one: the job saves at its next safe point, the idle worker lives, and the study exits 128 + 15; the same
    command resumes the job from that checkpoint (each update logged once) and finishes."""
    import os
    import signal
    import time

    import torch

    from harness.runs import checkpoint

    sweep = tmp_path / "sweep"
    ppo = '["pipeline=ppo","pipeline.updates=8","pipeline.batch_size=8","pipeline.checkpoint_every=0","threads=1"]'
    cmd = [sys.executable, "-m", "harness", "experiment=smoke", f"study=[{ppo}]", f"cache_dir={tiny_cache_copy}"]
    cmd += [f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=app.CONF_DIR + "/..", env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 400
        while not any(p.read_text().strip() for p in sweep.glob("*/updates.jsonl")):  # the job is past update 1
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in err and out.splitlines()[-1] == (
        "[1/1] stopped ppo updates=8 batch_size=8 checkpoint_every=0 seed=0: "
        "stopped by SIGTERM; rerun the same command to resume"
    )
    (job,) = (p.parent for p in sweep.glob("*/updates.jsonl"))
    saved = torch.load(checkpoint.folder(job) / checkpoint.STATE, weights_only=True)["ppo"]["updates_done"]
    assert 1 <= saved < 8 and not (job / "done.json").exists()

    again = subprocess.run(cmd, cwd=app.CONF_DIR + "/..", env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in (job / so.JOB_LOG).read_text()
    updates = [json.loads(line)["update"] for line in (job / "updates.jsonl").read_text().splitlines()]
    assert updates == list(range(1, 9)) and (job / "done.json").exists()
