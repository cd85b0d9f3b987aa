"""``scripts/setup.sh``: the environment it makes (the README's commands run it first)."""

import importlib
import importlib.util
from pathlib import Path

import pytest


@pytest.mark.parametrize("name", ["torch", "transformers", "trl", "wandb", "matplotlib", "hydra"])
def test_the_installed_packages_are_compiled_to_bytecode(name):
    # uv installs without bytecode unless asked; every process would then compile what a job imports from source where
    # bytecode is not written (PYTHONDONTWRITEBYTECODE), or the first run would, inside the timed main job
    module = importlib.import_module(name)
    assert Path(importlib.util.cache_from_source(module.__file__)).is_file(), f"{name}: run bash scripts/setup.sh"
