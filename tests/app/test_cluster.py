"""Sweeps on real engines: the stage cache's lock across real OS processes (one builds, the other waits and reuses; a
builder killed mid-build leaves nothing that looks finished), and which launchers run their jobs on this machine
(so that the preflight checks the devices there, against the GPUs the launcher gives each job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.app.cli import check_launcher_gpus, jobs_run_here
from harness.fields import ConfigError
from harness.runs.cache import MANIFEST, build_or_load, key_of

ROOT = Path(__file__).resolve().parents[2]

# One process needing the stage artifact {"x": 1}. It logs "ready" just before asking for it; its build logs "start",
# then (mode "peer") waits until another process is ready too, so that process asks while this one builds, or (mode
# "hang") sleeps until killed; "end" once written. Prints whether it reused the artifact and whose build it got.
NEEDS_STAGE = r"""
import json, os, sys, time
from pathlib import Path
from harness.runs.cache import build_or_load

root, log, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def note(what):
    with log.open("a") as f:
        f.write(f"{what} {os.getpid()} {time.time()}\n")

def others_ready():
    return any(l.split()[0] == "ready" and l.split()[1] != str(os.getpid()) for l in log.read_text().splitlines())

def build(out):
    note("start")
    (out / "weights.bin").write_text("half")
    deadline = time.time() + 60
    while mode == "peer" and not others_ready() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0 if mode == "peer" else 120 if mode == "hang" else 0)
    (out / "weights.bin").write_text("whole")
    note("end")
    return {"builder": os.getpid()}

note("ready")
art = build_or_load(root, "sft", {"x": 1}, build)
print(json.dumps({"pid": os.getpid(), "reused": art.reused, "builder": art.manifest()["facts"]["builder"],
                  "weights": (art.path / "weights.bin").read_text(), "done": time.time()}))
"""


def needs_stage(root: Path, log: Path, mode: str, lock: str) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_CACHE_LOCK": lock, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", NEEDS_STAGE, str(root), str(log), mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def answer(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.splitlines()[-1])


def events(log: Path) -> list[tuple[str, int, float]]:
    return [(w, int(p), float(t)) for w, p, t in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.slow  # a child Python process
@pytest.mark.parametrize("lock", ["flock", "soft"])
def test_two_processes_needing_one_missing_stage_build_it_once(tmp_path, lock):
    log = tmp_path / "log"
    log.touch()
    procs = [needs_stage(tmp_path / "cache", log, "peer", lock) for _ in range(2)]
    a, b = sorted((answer(p) for p in procs), key=lambda r: r["reused"])
    seen = events(log)
    assert [w for w, *_ in seen].count("start") == 1 and [w for w, *_ in seen].count("end") == 1
    assert not a["reused"] and b["reused"] and a["builder"] == b["builder"] == a["pid"]
    assert b["weights"] == "whole"  # the waiter got the finished artifact, never the half
    built = next(t for w, p, t in seen if w == "end")
    asked = next(t for w, p, t in seen if w == "ready" and p == b["pid"])
    assert asked < built <= b["done"]  # it asked while the other was building, and returned only after


@pytest.mark.slow  # a child Python process
@pytest.mark.parametrize("lock", ["flock", "soft"])
def test_a_builder_killed_mid_build_leaves_nothing_finished_and_the_next_builds(tmp_path, lock):
    log, root = tmp_path / "log", tmp_path / "cache"
    log.touch()
    killed = needs_stage(root, log, "hang", lock)
    deadline = time.time() + 60
    while "start" not in log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    killed.kill()  # SIGKILL mid-build: no finally block runs, the half stays on disk
    killed.wait(timeout=30)
    stage = root / "sft"
    final = stage / key_of({"x": 1})
    assert not final.exists() and not list(stage.rglob(MANIFEST))
    assert [p for p in stage.iterdir() if p.name.startswith(".tmp-")]  # the half it left (named as no artifact)
    nxt = answer(needs_stage(root, log, "quick", lock))  # not blocked by the dead holder's lock
    assert not nxt["reused"] and nxt["builder"] == nxt["pid"] and nxt["weights"] == "whole"
    assert not [p for p in stage.iterdir() if p.name.startswith(".tmp-")]  # the dead builder's half was cleared


def test_an_unknown_lock_kind_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_LOCK", "nfs")
    with pytest.raises(ConfigError, match="^HARNESS_CACHE_LOCK: 'nfs' .*flock, soft"):
        build_or_load(tmp_path, "sft", {"x": 1}, lambda out: None)


def launcher(group: str):
    """``hydra.launcher`` as Hydra composes ``hydra/launcher=<group>`` from the installed plugin."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.app.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", [f"hydra/launcher={group}"], return_hydra_config=True).hydra.launcher


RAY = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"  # the ray extra's launcher (not in the dev set)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_goes_to_another_launcher_from_the_command_line(experiment):
    """An experiment may pick a launcher (frontier: joblib) but sets none of its keys, so that the command line's
    hydra/launcher=submitit_slurm replaces it whole (a joblib key such as n_jobs is no Slurm key)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.app.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(
            "config", [f"experiment={experiment}", "hydra/launcher=submitit_slurm"], return_hydra_config=True
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


def test_launchers_that_run_jobs_on_this_machine(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs_run_here(launcher("basic")) and jobs_run_here(launcher("joblib"))
    assert jobs_run_here(launcher("submitit_local")) and not jobs_run_here(launcher("submitit_slurm"))
    assert jobs_run_here(OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": None}, "remote": {}}}))
    assert jobs_run_here(OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": "local"}, "remote": {}}}))
    assert not jobs_run_here(OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": "auto"}, "remote": {}}}))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # ray.init() with no address joins this cluster
    assert not jobs_run_here(OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": None}, "remote": {}}}))
    assert not jobs_run_here(OmegaConf.create({"_target_": "my_plugins.Unknown"}))


def test_a_job_asking_for_a_gpu_its_launcher_does_not_give_stops(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = OmegaConf.merge(launcher("submitit_local"))  # a writable copy
    with pytest.raises(ConfigError, match=r"^hydra.launcher.gpus_per_node: device=cuda asked .*\.gpus_per_node=1$"):
        check_launcher_gpus(local, {"cuda", "cpu"})
    local.gpus_per_node = 1
    check_launcher_gpus(local, {"cuda", "cuda:0", "auto"})
    with pytest.raises(ConfigError, match="gpus_per_node=2$"):
        check_launcher_gpus(local, {"cuda:1"})
    ray = OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": None}, "remote": {}}})
    check_launcher_gpus(ray, {"cuda:1"})  # no num_gpus: Ray leaves CUDA_VISIBLE_DEVICES alone (this machine's check)
    ray.ray.remote.num_gpus = 0.5  # a share of one GPU: Ray shows the job that GPU
    check_launcher_gpus(ray, {"cuda"})
    with pytest.raises(ConfigError, match="^hydra.launcher.ray.remote.num_gpus: device=cuda:1 .*num_gpus=2$"):
        check_launcher_gpus(ray, {"cuda:1"})
    for elsewhere in (launcher("basic"), launcher("submitit_slurm")):  # all GPUs here; or a node's, checked there
        check_launcher_gpus(elsewhere, {"cuda:3"})


@pytest.mark.slow  # a child Python process
def test_cli_study_under_submitit_local_checks_this_machines_device(tmp_path):
    """submitit_local runs the jobs here, so a GPU this machine lacks (or the launcher does not give) stops the study
    before anything is made."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "-m",
            "experiment=smoke",
            "hydra/launcher=submitit_local",
            "device=cuda",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "device" in line
    assert not sweep.exists() and not (tmp_path / "cache").exists()
