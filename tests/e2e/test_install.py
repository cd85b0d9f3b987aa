"""The installable package: a wheel built from this checkout, installed outside it, runs ``python -m harness`` from
any folder with the configuration it ships (pyproject.toml maps the top-level conf/ into the wheel as harness/conf).

The wheel is built offline (no index, no build isolation: this environment's setuptools) from a copy of the checkout,
installed with ``pip install --target`` into a folder of its own, and used with that folder first on PYTHONPATH and
the working directory elsewhere, so neither the checkout nor its editable install can supply a module or a config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # pip wheel, pip install, a job: child processes
CODE = ("harness", "pipelines", "hydra_plugins")  # the packages the wheel ships
ENV = {
    **os.environ,
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}

# Run inside the installed copy: where each package was imported from; an experiment composed from the shipped config
# and validated, and so is every job of the smoke study (its entries, which name every method's config group, after
# the experiment as the study sweeper orders them). Every experiment's every job is composed from the checkout by
# tests/runs/test_job_keys.py, and the wheel holds every YAML file of conf/ (the first test here).
COMPOSE_FROM_THE_PACKAGE = r"""
import json

from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

import harness, pipelines.registry, hydra_plugins.harness_study.study_sweeper as sweeper
from harness.app.cli import CONF_DIR
from harness.app.jobs import load as validate

def job(*overrides):
    return validate(compose(config_name="config", overrides=list(overrides)))

with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    experiments = {name: job(f"experiment={name}").raw.get("experiment_name") for name in ("frontier", "smoke")}
    smoke = [job("experiment=smoke", *map(str, entry)).pipeline.name for entry in compose(
        config_name="config", overrides=["experiment=smoke"]).study]
sweepers = [f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)]  # how Hydra finds its plugins
print(json.dumps({"modules": [harness.__file__, pipelines.registry.__file__, sweeper.__file__], "conf": CONF_DIR,
                  "experiments": experiments, "smoke": smoke, "sweepers": sweepers}))
"""


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the folder it is installed in, the environment that puts that folder on the path)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    for name in (*CODE, "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    offline = ["--no-deps", "--no-index", "-q"]
    run([*pip, "wheel", str(src), *offline, "--no-build-isolation", "-w", str(tmp / "dist")], tmp)
    (wheel,) = (tmp / "dist").glob("*.whl")
    site = tmp / "site"
    run([*pip, "install", str(wheel), *offline, "--no-compile", "--target", str(site)], tmp)
    return wheel, site, {**ENV, "PYTHONPATH": str(site)}


def test_the_wheel_holds_every_module_and_config_file(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {p.relative_to(ROOT).as_posix() for name in CODE for p in (ROOT / name).rglob("*.py")}
    want |= {"harness/conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert not want - names, f"missing from the wheel (list the package in pyproject.toml): {sorted(want - names)}"


def test_the_installed_package_composes_its_shipped_config(installed, tmp_path):
    _, site, env = installed
    found = json.loads(run([sys.executable, "-c", COMPOSE_FROM_THE_PACKAGE], tmp_path, env).stdout.splitlines()[-1])
    for module in found["modules"]:
        assert Path(module).resolve().is_relative_to(site.resolve()), f"{module} is not the installed copy"
    assert Path(found["conf"]).resolve() == (site / "harness" / "conf").resolve()
    assert "hydra_plugins.harness_study.study_sweeper.StudySweeper" in found["sweepers"]  # experiment=... can sweep
    assert found["experiments"] == {"frontier": "frontier", "smoke": "smoke"}  # the experiment files were applied
    assert {"sft", "ppo", "ppo_gt", "dpo", "unlikelihood", "preferred_ft", "best_of_n"} <= set(found["smoke"])


def test_python_m_harness_runs_a_job_from_another_folder(installed, tiny_cache, tmp_path):
    """The command line itself, from a folder that is neither the checkout nor the install: a tiny SFT job, on a copy
    of the session's stage cache, whose π_SFT the installed copy finds under the same key (its identities are the
    checkout's)."""
    from tests.conftest import copy_stage_cache

    _, site, env = installed
    copy_stage_cache(tiny_cache, tmp_path / "cache")
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "pipeline=sft",
        "experiment=tiny_debug",
        f"cache_dir={tmp_path / 'cache'}",
        "threads=1",
        "hydra.run.dir=job",
        "pipeline.show_samples=0",
    ]
    run(["nice", "-n", "10", *cmd], tmp_path, env)
    record = json.loads((tmp_path / "job" / "done.json").read_text())
    assert record["result"]["reused"] and record["result"]["checkpoint"].startswith(str(tmp_path / "cache" / "sft"))
    rows = [json.loads(line) for line in (tmp_path / "job" / "points.jsonl").read_text().splitlines()]
    assert rows and rows[0]["method"] == "sft"
    assert (tmp_path / "cache" / "sft").is_dir()
    # the job ran the installed copy: its Hydra record names the shipped config folder as the primary one
    hydra_record = (tmp_path / "job" / ".hydra" / "hydra.yaml").read_text()
    assert str((site / "harness" / "conf").resolve()) in hydra_record
