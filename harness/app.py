"""The Hydra application behind ``python -m harness``."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.cache import key_of
from harness.config import ConfigError, HarnessConfig, register_configs, validate

log = logging.getLogger("harness")
DONE = "done.json"  # written when a job finished; holds its config key and result
# conf/ sits beside the packages (installed editable, as the README does); an absolute path keeps Hydra from
# reading it as a Python module name.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()


def resolved(hc: HarnessConfig) -> dict:
    """The full config as run: YAML values plus every schema default, so a run folder says everything."""
    out = {k: dataclasses.asdict(getattr(hc, k)) for k in
           ("task", "model", "gold", "sft", "preferences", "reward_model", "eval", "logger", "pipeline")}
    out.update(seed=hc.seed, cache_dir=hc.cache_dir, device=hc.device, threads=hc.threads, stages_per_seed=hc.stages_per_seed)
    out["experiment_name"] = hc.raw.get("experiment_name")
    # (the study's job list and seed list are the sweep's, not the job's: a job stays "finished" when the study grows)
    return out


def swept_pipeline_keys(overrides: list[str]) -> tuple[str, ...]:
    """``pipeline.cliprange=0.2`` -> ``cliprange``: the pipeline knobs a job's overrides set."""
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("pipeline.") and key.count(".") == 1:
            keys.append(key.split(".", 1)[1])
    return tuple(dict.fromkeys(keys))


def run_job(cfg: DictConfig, folder: Path, sweep_name: str | None = None, swept: tuple[str, ...] = ()) -> dict:
    """Validate, then run the pipeline ``cfg.pipeline.name``. Everything a job does starts here."""
    import torch

    from harness.run import RunContext
    from pipelines.registry import runner

    hc = validate(cfg)
    hc.raw = resolved(hc)
    done = folder / DONE
    # The job's identity is what it computes: the thread count only says how fast, so a rerun under another launcher
    # (two single-thread workers instead of one process) still reuses the finished job.
    key = key_of({k: v for k, v in hc.raw.items() if k != "threads"})
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        # A rerun of a finished sweep reuses this job (same resolved config) and only remakes the report.
        print(f"reusing finished job {folder}")
        return json.loads(done.read_text())["result"]
    if hc.threads > 0:
        torch.set_num_threads(hc.threads)
    torch.manual_seed(hc.seed)
    ctx = RunContext(cfg=hc, folder=folder, sweep_name=sweep_name, swept=swept)
    result = runner(hc.pipeline.name)(ctx)
    folder.mkdir(parents=True, exist_ok=True)  # not before: a job that fails its checks leaves no folder behind
    done.write_text(json.dumps({"key": key, "result": result}, default=str, indent=2))
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    sweep = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode.name == "MULTIRUN" else None
    try:
        return run_job(cfg, folder, sweep, swept_pipeline_keys(list(hydra_cfg.overrides.task)))
    except ConfigError as e:
        # One line, naming the key and the fix; nothing has been trained yet (validation and data checks come first).
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
