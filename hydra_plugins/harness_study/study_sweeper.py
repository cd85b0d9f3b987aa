"""A Hydra sweeper for studies: a list of jobs, each its own set of overrides, crossed with seeds.

Hydra's basic sweeper takes the cartesian product of swept keys, but a study compares methods that have different
knobs (PPO's kl_coef, DPO's beta, Best-of-N's N), so it is a list, not a grid:

    study:
      - [pipeline=ppo, pipeline.kl_coef=0.05]
      - [pipeline=dpo, pipeline.beta=0.1]
    seeds: [0, 1, 2]

``python -m harness -m experiment=<study>`` runs every entry × seed (crossed with any sweep given on the command
line) as ordinary Hydra jobs; ``study=[...]`` / ``seeds=[...]`` on the command line replace the experiment's lists.
Every job's config is composed and validated before the first one starts, and a job whose folder already holds a
finished result is reused. The terminal gets one line when a job starts (jobs done, running, left; elapsed, ETA) and
one when it ends (its first and last evaluation, or why it failed); everything else a job writes goes to the job.log
in its folder (``harness.app.study_output``). A study whose jobs did not all finish names them and exits with status 1.

The jobs go to whatever Hydra launcher is configured. With the basic launcher they run one after another. Any other
launcher (``hydra/launcher=joblib``, submitit, Ray) is handed two batches: first one job per seed that builds π_SFT
and the preference set, then all the others at once, the job that builds the reward model first and the jobs that
need it last (``stage_first``), so parallel workers rarely wait on one stage's lock. A lone stage-building job runs on
every core (``threads=<cpu count>``): it has the machine to itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from harness.config import study_plan
from harness.methods import SFT
from pipelines.registry import METHODS

log = logging.getLogger("harness.study")


def _plain(cfg, key: str) -> Any:
    """``cfg[key]`` as plain data (lists resolved), None when absent."""
    node = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _value(overrides: list[str], key: str) -> str | None:
    """The last value ``key=<value>`` among ``overrides`` (None when absent)."""
    found = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]
    return found[-1] if found else None


def _depth(job: list[str]) -> int:
    """How deep into the stage cache the job reaches (its method's record; the default pipeline's when unset)."""
    method = METHODS.get(_value(job, "pipeline") or "")
    return method.stages if method is not None else SFT


def stage_first(jobs: list[list[str]]) -> tuple[list[list[str]], list[list[str]]]:
    """Split jobs into (builders, rest) so that parallel workers rarely wait on a stage another job is building.

    builders: per seed, the first job that builds π_SFT and the preference set (depth 2; depth 1 when no job of
    the seed needs more): the stages everything else stands on, built alone on every core.
    rest: per seed, first the job that builds the reward model (the seed's first depth-3 job), then every job that
    needs less than its seed's deepest stage, then the remaining deepest jobs, each group in the original order.
    While one worker trains the reward model, the others run DPO, the baselines and PPO-GT, which do not need it.
    """
    by_seed: dict[str | None, list[int]] = {}
    for i, job in enumerate(jobs):
        by_seed.setdefault(_value(job, "seed"), []).append(i)
    builders, rm_builders, deepest = [], [], set()
    for members in by_seed.values():
        top = max(_depth(jobs[i]) for i in members)
        first_of = {d: next((i for i in members if _depth(jobs[i]) == d), None) for d in (min(top, 2), top)}
        builder = first_of[min(top, 2)] if first_of[min(top, 2)] is not None else first_of[top]
        builders.append(builder)
        deepest |= {i for i in members if _depth(jobs[i]) == top}
        if _depth(jobs[builder]) < top:
            rm_builders.append(first_of[top])
    builders.sort()
    placed = set(builders) | set(rm_builders)
    shallow = [i for i in range(len(jobs)) if i not in placed and i not in deepest]
    deep = [i for i in range(len(jobs)) if i not in placed and i in deepest]
    return [jobs[i] for i in builders], [jobs[i] for i in rm_builders + shallow + deep]


def idle_cores(window_s: float = 0.5) -> int:
    """Cores no process is using right now (from /proc/stat over ``window_s``), at least 1; all of them where that
    cannot be read.

    Each of torch's OpenMP threads needs a core of its own: a second thread on a core another process holds makes
    every operation wait for it (measured here: π_SFT's steps 20x slower with 2 threads while a test run held one
    of the 2 cores), so a lone stage build takes only the idle cores.
    """
    n = os.cpu_count() or 1

    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total (jiffies over all cores)

    try:
        idle0, total0 = snapshot()
        time.sleep(window_s)
        idle1, total1 = snapshot()
    except (OSError, ValueError, IndexError):
        return n
    share = (idle1 - idle0) / max(1, total1 - total0)
    return max(1, min(n, round(share * n)))


def warm_workers(launcher, jobs: list[list[str]]) -> threading.Thread | None:
    """Under the joblib launcher, start its worker processes now and have each import what the study's jobs import
    (``harness.app.jobs.warm_up``), in a thread, while this process checks every job's config: a cold worker spends
    ~6 s on imports before its first job trains, and the first job (the stage build) is the one everything waits on.
    The workers are joblib's reusable ones, made with the launcher's own settings, so its launch gets them as they
    are, each prepared by ``prepare_worker`` (it also freezes what it imported: cheaper garbage collections in every
    job). Returns the thread (join it before the launch), or None for any other launcher."""
    if type(launcher).__name__ != "JoblibLauncher":
        return None
    from joblib import Parallel, delayed

    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    settings = {**launcher.joblib, "backend": "loky"}  # as its launch sets them
    process_joblib_cfg(settings)
    pipelines = tuple(dict.fromkeys(p for p in (_value(job, "pipeline") for job in jobs) if p))

    def warm() -> None:
        try:
            parallel = Parallel(**settings)
            parallel(delayed(prepare_worker)(pipelines) for _ in range(parallel._effective_n_jobs()))
        except Exception as e:  # only a head start: the launch makes its own workers and reports its own errors
            log.debug("warming the workers failed: %s", e)

    thread = threading.Thread(target=warm, name="warm-workers", daemon=True)
    thread.start()
    return thread


# How far a warmed worker's resident memory may grow past its size after the imports before loky replaces it. loky
# takes 300 MB of growth for a leak; a job's allocator keeps what it freed, and the main job's workers grew ~400 MB
# over ten jobs, so both were replaced near the end and each replacement paid the imports again inside a job (the
# first Unlikelihood job on one took 20 s where the others took 11 s). A study of many jobs still gets fresh workers.
WORKER_MEMORY_SLACK = 2 << 30


def prepare_worker(pipelines: tuple[str, ...]) -> None:
    """A joblib worker's state before its first job, when ``warm_workers`` started it: the pre-emption signals ignored
    (what a worker started during the launch inherits from the study's process, ``study_output.signals_for``: a worker
    between jobs is not killed by the signal meant for the job), the jobs' imports done and frozen, and room to grow
    (``WORKER_MEMORY_SLACK``) before loky replaces it."""
    import signal

    from joblib.externals.loky import process_executor

    from harness.app.jobs import warm_up
    from harness.runs import preempt

    for signum in preempt.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # read by loky's worker loop after each task (a module global: there is no setting for it)
    process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, WORKER_MEMORY_SLACK)
    warm_up(pipelines, freeze=True)


def stop_workers() -> None:
    """Kill joblib's reusable worker processes now (a study that failed its checks exits without waiting for them)."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # loky's one reusable executor (no public accessor that does not make one)
    if executor is not None:
        with contextlib.suppress(Exception):
            executor.shutdown(wait=False, kill_workers=True)


class StudySweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def job_overrides(self, arguments: list[str]) -> list[list[str]]:
        """Entries × seeds × the command line's own sweep (basic-sweeper semantics for that part)."""
        # No `seeds` (or no `study`): each entry's own seed (default 0), e.g. `[pipeline=preferred_ft, seed=1]`. A
        # study or seeds of another shape (`study=[]`, a flat list, `seeds=3`) is one line saying the shape expected.
        study, seeds = study_plan(_plain(self.config, "study"), _plain(self.config, "seeds"))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        cli = self.split_arguments(parser.parse_overrides(self._parse_config() + list(arguments)), None)[0]
        jobs = []
        for entry, seed, extra in itertools.product(study, seeds, cli or [[]]):
            # `study=[...]` / `seeds=[...]` given on the command line choose the jobs; they are no job's setting (and
            # would make every job's folder name hold the whole list).
            extra = [o for o in extra if o.split("=", 1)[0].lstrip("+~") not in ("study", "seeds")]
            overrides = [str(o) for o in entry] + ([f"seed={seed}"] if seed is not None else []) + extra
            jobs.append(overrides)
        return jobs

    def _sweep_config(self, overrides: list[str], idx: int):
        """The config the launcher composes for the job it launches as number ``idx`` (its folder may be named by it)."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def batches(self, jobs: list[list[str]]) -> list[list[list[str]]]:
        """The batches handed to the launcher, in order (a job's number is its place in them): one job at a time
        under the basic launcher, else the stage builders first (``stage_first``)."""
        if type(self.launcher).__name__ == "BasicLauncher":
            return [[job] for job in jobs]
        builders, rest = stage_first(jobs)
        if len(builders) == 1:  # a lone stage build (π_SFT, preference set) gets every idle core (explicitly: a
            builders = [builders[0] + [f"threads={idle_cores()}"]]  # joblib worker defaults to 1 thread)
        return [batch for batch in (builders, rest) if batch]

    def check(self, jobs: list[list[str]], sweep_dir: Path) -> list[Path]:
        """Compose, validate and preflight every job before any runs (a typo in job 17 must not cost the first 16,
        nor a gold classifier that cannot load cost π_SFT's training): one ConfigError line naming the key and
        the job. The devices are checked only when the jobs run on this machine (``harness.app.jobs_run_here``),
        and against the GPUs the launcher gives each job there. ``jobs``: in launch order (``batches``).

        Then every job's folder (the sweep folder / its subdir, as the launcher will name it): one that holds another
        job's run stops the study, unless ``overwrite=true``, which moves that run aside (``harness.runs.folder``)
        once every check passed, before Hydra writes a file there. Returns the job folders."""
        from harness.app.cli import check_bool_overrides, check_launcher, check_launcher_gpus, jobs_run_here
        from harness.app.jobs import load
        from harness.preflight.checks import check_jobs, check_writable
        from harness.runs import folder as run_folder
        from harness.runs.identity import job_key

        check_launcher(self.config.hydra.launcher)  # before the sweep folder: a launcher fails only once it launches
        check_writable(sweep_dir, "hydra.sweep.dir")
        devices, composed = set(), []

        def load_job(overrides: list[str]):
            cfg = self._sweep_config(overrides, len(composed))  # check_jobs loads the jobs in order, once each
            check_bool_overrides(cfg, overrides)
            folder = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            with open_dict(cfg):
                del cfg["hydra"]  # the job's own config, as its task function will see it
            devices.add(cfg.get("device"))
            hc = load(cfg)
            composed.append((folder, hc))
            return hc

        check_jobs(jobs, load_job, jobs_run_here(self.config.hydra.launcher))
        check_launcher_gpus(self.config.hydra.launcher, devices)
        run_folder.check_sweep([(f, job_key(hc), run_folder.label_of(hc), hc.overwrite) for f, hc in composed])
        return [folder for folder, _ in composed]

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.core.utils import JobStatus

        from harness.app import study_output

        jobs = self.job_overrides(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        batches = self.batches(jobs)
        warming = warm_workers(self.launcher, jobs)  # beside the checks: they take one core, the imports the other
        try:
            self.check([job for batch in batches for job in batch], sweep_dir)
        except BaseException:
            if warming is not None:  # the study stops here: its workers too, not after their imports
                stop_workers()
            raise
        sweep_dir.mkdir(parents=True, exist_ok=True)  # only now: a study that fails its checks leaves no folder
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study_output.begin(sweep_dir, len(jobs))
        # The launchers announce every job on the log; each job prints its own start and result lines instead.
        for name in ("hydra", "hydra_plugins"):
            logging.getLogger(name).setLevel(logging.WARNING)
        launcher = type(self.launcher).__name__
        print(
            f"study {self.config.get('experiment_name') or sweep_dir.name}: {len(jobs)} jobs -> {sweep_dir} "
            f"({launcher}); each job's whole output goes to job.log in its folder",
            flush=True,
        )
        if warming is not None:
            warming.join()
        returns = []
        start = time.time()
        # pre-empted (SIGTERM / SIGUSR1 / SIGUSR2), a running job saves itself and the study stops after its launch
        with study_output.signals_for(launcher):
            if launcher == "BasicLauncher":  # one at a time anyway
                for i, (overrides,) in enumerate(batches):
                    returns.append(self.launcher.launch([overrides], initial_job_idx=i))
                    study_output.stop_if_stopped(returns[-1])
            else:
                done = 0
                for batch in batches:  # the stages everything stands on first, then all the others at once
                    returns.append(self.launcher.launch(batch, initial_job_idx=done))
                    study_output.stop_if_stopped(returns[-1])
                    done += len(batch)
        for ret in (r for batch in returns for r in batch):
            if ret.status == JobStatus.FAILED:
                num = int(OmegaConf.select(ret.hydra_cfg, "hydra.job.num", default=-1)) if ret.hydra_cfg else -1
                study_output.FAILED.append((num, study_output.job_label(ret.overrides or []), str(ret._return_value)))
        failed = f", {len(study_output.FAILED)} FAILED" if study_output.FAILED else ""
        print(f"study finished: {len(jobs)} jobs in {(time.time() - start) / 60:.1f} min{failed}", flush=True)
        for _, _, why in study_output.FAILED:
            print(f"  failed: {why}", flush=True)
        return returns
