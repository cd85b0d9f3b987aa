"""The smoke study end to end through the CLI: every method as one Hydra multirun, the report, W&B offline, and a
rerun that reuses every finished job (the notebook runs on a sweep in tests/report/test_report.py)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"sft", "ppo", "ppo_gt", "dpo", "unlikelihood", "preferred_ft", "best_of_n"}
# Secrets in the study's environment, as on a user's machine: none may reach a file the study writes.
SECRETS = {"WANDB_API_KEY": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c", "HF_TOKEN": "hf_studyTokenNotReal0123456789"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **SECRETS}
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "experiment=smoke",
        f"cache_dir={tmp / 'cache'}",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        "logger.wandb_mode=offline",
    ]
    # The first run on two joblib workers (the launcher the frontier studies use); the rerun on the basic launcher.
    first = subprocess.run(
        cmd + ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp / "sweep", first, cmd, env


@pytest.mark.slow
@pytest.mark.timeout(900)  # the smoke study's first run (its fixture) may take 600 s
def test_smoke_study_writes_the_report(smoke):
    sweep, first, _, _ = smoke
    # a readable terminal: a header, one start and one result line per job, the end, the verdict and the paths; each
    # job's own output (trainer bars, weight loading, W&B) in its job.log
    lines = first.stdout.splitlines()
    assert lines[0].startswith("study smoke: 9 jobs") and "JoblibLauncher" in lines[0]
    for k in range(1, 10):
        assert sum(line.startswith(f"[{k}/9] start ") for line in lines) == 1, first.stdout
        assert sum(line.startswith(f"[{k}/9] done ") for line in lines) == 1, first.stdout
    assert len(lines) <= 30 and not first.stderr.strip(), first.stdout + first.stderr
    assert not any(noise in first.stdout for noise in ("Loading weights", "wandb", "it/s", "Warning"))
    for job in (p.parent for p in sweep.glob("*/done.json")):
        assert "gold" in (job / "job.log").read_text()
    assert f"frontier plot: {sweep / 'frontier.png'}" in first.stdout
    assert (sweep / "frontier.png").stat().st_size > 10_000
    rows = list(csv.DictReader((sweep / "points.csv").open()))
    assert {r["method"] for r in rows} == METHODS
    for method in METHODS - {"sft", "best_of_n"}:
        steps = {int(r["step"]) for r in rows if r["method"] == method}
        assert len(steps) >= 2 and 0 in steps  # step 0 and at least one later evaluation
    assert {r["setting"] for r in rows if r["method"] == "best_of_n"} == {"N=1", "N=2", "N=4"}
    summary = (sweep / "summary.md").read_text()
    for label in ("PPO (learned RM)", "DPO", "Best of N", "Unlikelihood", "Preferred-FT"):
        assert label in summary
    assert "DPO vs PPO" in summary  # the plain sentence on the paper's claim (whatever this tiny run says)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the smoke study's first run (its fixture) may take 600 s
def test_wandb_offline_runs_hold_the_frontier_table(smoke):
    sweep, *_ = smoke
    tables = list(sweep.glob("wandb/offline-run-*/files/media/table/frontier/points*.table.json"))
    assert tables, "the report run logged no frontier table"
    table = json.loads(tables[0].read_text())
    assert "kl" in table["columns"] and "gold_reward" in table["columns"] and len(table["data"]) > 10
    job_runs = list(sweep.glob("*/wandb/offline-run-*"))
    assert len(job_runs) >= 8  # one W&B run per job, in the job's folder


@pytest.mark.slow
@pytest.mark.timeout(900)  # the smoke study's first run (its fixture) may take 600 s
def test_no_secret_reaches_a_saved_config_or_log(smoke):
    """The W&B key and the hub token were in the study's environment; no config, log or W&B file holds either."""
    sweep, first, *_ = smoke
    files = [p for p in sweep.parent.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(".wandb" in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(v.encode() in data for v in SECRETS.values()), f"a secret reached {path}"
    assert not any(v in first.stdout + first.stderr for v in SECRETS.values())


@pytest.mark.slow
@pytest.mark.timeout(900)  # the smoke study's first run (its fixture) may take 600 s
def test_rerun_under_another_launcher_reuses_every_finished_job(smoke):
    """The same study again on the basic launcher: one job at a time, each with its status line, and every job the
    first (joblib) run finished is reused."""
    sweep, first, cmd, env = smoke
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[1/9] start " in again.stdout and "[9/9] start " in again.stdout  # progress: which job, how many
    assert again.stdout.count("] reused ") == 9
    assert (sweep / "summary.md").exists()


def test_stage_building_jobs_go_first_one_per_seed():
    from hydra_plugins.harness_study.study_sweeper import stage_first

    jobs = [
        ["pipeline=sft", "seed=0"],
        ["pipeline=ppo_gt", "seed=0"],
        ["pipeline=dpo", "seed=0"],
        ["pipeline=ppo", "pipeline.kl_coef=0.1", "seed=0"],
        ["pipeline=ppo", "seed=0"],
        ["pipeline=sft", "seed=1"],
        ["pipeline=dpo", "seed=1"],
    ]
    builders, rest = stage_first(jobs)
    # first batch, per seed: the first job that builds π_SFT and the preference set (seed 1 needs nothing deeper)
    assert builders == [jobs[2], jobs[6]]
    # then seed 0's reward-model builder, the jobs that do not need a reward model, and last the ones that do
    assert rest == [jobs[i] for i in (3, 0, 1, 5, 4)]
    only_sft = [["pipeline=sft", "seed=0"], ["pipeline=ppo_gt", "seed=0"]]
    assert stage_first(only_sft) == ([only_sft[0]], [only_sft[1]])


@pytest.mark.parametrize("busy_jiffies, expected", [(0, 2), (100, 1), (200, 1)])
def test_a_lone_stage_build_takes_only_the_idle_cores(busy_jiffies, expected, monkeypatch):
    import io

    from hydra_plugins.harness_study import study_sweeper

    # two /proc/stat snapshots 200 jiffies apart on 2 cores: `busy_jiffies` of them spent working
    lines = iter(
        [
            "cpu 1000 0 500 8000 0 0 0 0 0 0\n",
            f"cpu {1000 + busy_jiffies} 0 500 {8000 + 200 - busy_jiffies} 0 0 0 0 0 0\n",
        ]
    )
    monkeypatch.setattr(study_sweeper, "open", lambda *a, **k: io.StringIO(next(lines)), raising=False)
    monkeypatch.setattr(study_sweeper.time, "sleep", lambda s: None)
    monkeypatch.setattr(study_sweeper.os, "cpu_count", lambda: 2)
    assert study_sweeper.idle_cores() == expected


def _worker_state() -> tuple[int, bool, int, int, bool]:
    """(pid, whether the study's runner is imported, objects frozen, models the models count finds once a job has
    built one, whether SIGTERM is ignored between jobs)."""
    import gc
    import os
    import signal
    import sys

    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.lm.memory import models_held

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    held = len(models_held())
    del model
    ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    return os.getpid(), "pipelines.dpo" in sys.modules, gc.get_freeze_count(), held, ignored


_HELD: list[bytearray] = []


def _hold_memory(mb: int) -> int:
    """Keep ``mb`` MiB written (so resident) in this worker, as a job's allocator keeps what it freed; its pid."""
    import time

    _HELD.append(bytearray(b"\x01") * (mb << 20))
    time.sleep(1.2)  # loky checks a worker's memory after a task at most once a second
    return os.getpid()


@pytest.mark.slow  # two worker processes import torch, transformers and TRL
def test_the_launch_runs_on_the_workers_warmed_during_the_checks_and_a_failed_check_stops_them():
    import time

    from joblib import Parallel, delayed

    from hydra_plugins.harness_study import study_sweeper

    class JoblibLauncher:  # the type name is what the sweeper knows the launcher by; the settings are Hydra's defaults
        joblib = {
            "n_jobs": 2,
            "backend": None,
            "prefer": "processes",
            "require": None,
            "verbose": 0,
            "timeout": None,
            "pre_dispatch": "2*n_jobs",
            "batch_size": "auto",
            "temp_folder": None,
            "max_nbytes": None,
            "mmap_mode": "r",
        }

    class BasicLauncher:
        pass

    assert study_sweeper.warm_workers(BasicLauncher(), [["pipeline=dpo"]]) is None
    thread = study_sweeper.warm_workers(JoblibLauncher(), [["pipeline=dpo", "seed=0"]])
    thread.join(timeout=300)
    assert not thread.is_alive()
    # the launch (hydra_joblib_launcher: Parallel with its settings, backend loky) gets the same processes, each of
    # which imported the study's runner before any job reached it and froze what it imported (cheaper collections),
    # in which the models count still finds the models a job builds, and which ignores the pre-emption signals as a
    # worker the launch starts would (study_output.signals_for)
    seen = Parallel(**{**JoblibLauncher.joblib, "backend": "loky"})(delayed(_worker_state)() for _ in range(4))
    assert all(loaded and frozen > 100_000 and held == 1 and ignored for _, loaded, frozen, held, ignored in seen), seen
    pids = {pid for pid, *_ in seen}
    # a job that leaves 500 MB resident (loky takes 300 MB of growth for a leak and replaces the worker, whose next
    # job would pay the imports again) does not cost the study its warmed workers
    parallel = Parallel(**{**JoblibLauncher.joblib, "backend": "loky"})
    assert set(parallel(delayed(_hold_memory)(500) for _ in range(2))) <= pids
    assert set(parallel(delayed(_hold_memory)(0) for _ in range(4))) <= pids

    study_sweeper.stop_workers()  # what a study whose checks failed does: the workers end now

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.time() + 30
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
