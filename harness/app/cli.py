"""The Hydra application behind ``python -m harness``.

``main(argv)`` checks a command before Hydra runs it: the config composes, every value validates, and the job's
model, data, device and folders pass ``harness.preflight.checks.preflight`` (for a sweep, every job: the study sweeper does it
for ``experiment=`` studies, ``main`` for plain ``-m`` sweeps). Any user error, Hydra's own included, ends as one
line on stderr and exit status 2, before a folder is made or a stage trains.

A job that was killed continues from its last checkpoint when the same command runs again (``harness.runs.checkpoint``);
one that has finished is reused. A training quantity that turns NaN or infinite stops the job with one line on stderr
and exit status 3 (``harness.runs.guards``), keeping its rows and its last checkpoint.

Exit status: 0 done; 2 a user error, nothing trained; 3 a non-finite loss, reward, advantage, value or KL; 1 a study
whose jobs did not all finish (each named; the others ran, and the report was made from them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.app.jobs import checked, load, run_job, swept_pipeline_keys
from harness.config import register_configs
from harness.fields import ConfigError
from harness.runs import folder as run_folder
from harness.runs.guards import EXIT_STATUS as NON_FINITE_STATUS
from harness.runs.guards import NonFiniteError
from harness.runs.identity import job_key
from harness.runs.preempt import Preempted
from pipelines.registry import METHODS

log = logging.getLogger("harness")


def conf_dir() -> str:
    """The Hydra config folder: ``harness/conf`` in an installed wheel (pyproject.toml ships the checkout's top-level
    conf/ there), else conf/ beside the packages (a checkout, or an editable install of one). An absolute path keeps
    Hydra from reading it as a Python module name."""
    package = Path(__file__).resolve().parent.parent  # harness/, two up from harness/app/cli.py
    installed = package / "conf"
    return str(installed if (installed / "config.yaml").is_file() else package.parent / "conf")


CONF_DIR = conf_dir()


register_configs(METHODS)


def _register_resolvers() -> None:
    """``${harness_fit:...}``: a study job's folder name that fits the filesystem (conf/shared/study.yaml); registered
    on import, so a launcher's worker process that imports the task function has it too."""
    from omegaconf import OmegaConf

    from harness.runs.identity import fitting_name

    if not OmegaConf.has_resolver("harness_fit"):
        OmegaConf.register_new_resolver("harness_fit", lambda name: fitting_name(str(name)))


_register_resolvers()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> dict | None:
    from harness.app import study_output

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    sweep = Path(hydra_cfg.sweep.dir).name if multirun else None
    overrides = list(hydra_cfg.overrides.task)

    def job():
        # One line, naming the key and the fix (also in a launcher's worker process, which main's handler does not
        # reach); nothing has been trained yet: validation and every check come first.
        return stop_on_user_error(run_job, cfg, folder, sweep, swept_pipeline_keys(overrides))

    if multirun and study_output.progress(Path(hydra_cfg.sweep.dir)) is not None:
        # a study's job: two lines on the terminal (start, result), the rest in its job.log
        hidden = list(OmegaConf.select(hydra_cfg, "job.config.override_dirname.exclude_keys") or [])
        label = study_output.job_label(overrides, hidden)
        return study_output.run_in_study(Path(hydra_cfg.sweep.dir), folder, hydra_cfg.job.num, label, job)
    return job()


# ------------------------------------------------------------------------------------------------ the command line
# Flags under which Hydra does something other than run jobs (help, print the config, ...), or reads a config that is
# not ours (another config path or name): these go to Hydra unchecked; their errors still end in one line.
# --config-dir (a folder searched before conf/) and --config-name (another primary config) are composed as Hydra will
# compose them and checked like any run; --config-path replaces the primary folder, relative to a caller's file.
_NOT_A_RUN = (
    "help",
    "hydra_help",
    "cfg",
    "info",
    "shell_completion",
    "config_path",
    "experimental_rerun",
)


def _parse_args(argv: list[str]):
    """Hydra's own argument parser, whose usage errors become one ConfigError line instead of argparse's two."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str):
        flag = misplaced_flag(argv, parser._option_string_actions) if "unrecognized arguments" in message else None
        if flag is not None:  # argparse reads flags only before the overrides: after one, a flag is "unrecognized"
            action = parser._option_string_actions[flag]
            names = flag + "".join(f" (or {f})" for f in action.option_strings if f != flag)
            example = f": python -m harness {flag} key=value ..." if action.nargs == 0 else ""
            raise ConfigError(
                f"command line: {flag} comes after an override, where it is not read; put {names} before the "
                f"overrides{example}"
            )
        raise ConfigError(f"command line: {message}; see python -m harness --help")

    parser.error = error
    return parser.parse_args(argv)


def misplaced_flag(argv: list[str], flags) -> str | None:
    """The first of Hydra's ``flags`` (``-m``, ``--cfg``, ...) that ``argv`` gives after an override (key=value), as
    it was written; None when every flag comes before them."""
    seen_override = False
    for arg in argv:
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if arg.startswith("-") and name in flags:
            if seen_override:
                return name
        elif "=" in arg:
            seen_override = True
    return None


# Values a boolean key takes from the command line: OmegaConf would also turn 2 or "yes" into true, silently.
BOOL_WORDS = ("true", "false")


def check_bool_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Every override of a boolean key (a ``bool`` field of any schema: a switch such as ``stages_per_seed``) gives
    true or false (or 0 / 1); ``cfg``: the config composed from them, whose nodes carry the schema's types. A sweep
    override is checked per job (each job's overrides hold one value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.nodes import BooleanNode

    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_delete() or o.is_sweep_override():
            continue
        node = cfg
        for part in o.key_or_group.split("."):
            try:
                node = node._get_node(part) if isinstance(node, DictConfig) else None
            except Exception:  # noqa: BLE001 - an unknown key: composition said so already, or the key is not typed
                node = None
            if node is None:
                break
        if not isinstance(node, BooleanNode):
            continue
        value = o.value()
        ok = (
            value is None
            or isinstance(value, bool)
            or (isinstance(value, int) and value in (0, 1))
            or (isinstance(value, str) and value.lower() in BOOL_WORDS)
        )
        if not ok:
            key = o.key_or_group
            raise ConfigError(
                f"{key}: '{o.get_value_element_as_str()}' is not true or false ({key} is a switch); set {key}=true "
                f"or {key}=false"
            )


# ----------------------------------------------------------------------------------------------------- launchers
# Launchers that run a sweep's jobs on this machine, so that its devices are theirs to check: Hydra's basic launcher
# (in this process), joblib (worker processes), submitit's local executor (a process per job) and Ray started here
# (ray.init with no address). Slurm, a Ray cluster or any other launcher runs jobs elsewhere: each job checks its own
# device there. Two of them narrow the GPUs a job sees to those it was given, the key below: submitit's local executor
# sets CUDA_VISIBLE_DEVICES from gpus_per_node (unset: none), Ray from num_gpus (unset: Ray leaves it alone).
_ALL_GPUS = ("BasicLauncher", "JoblibLauncher")


_GIVEN_GPUS = {
    "hydra_submitit_launcher.submitit_launcher.LocalLauncher": ("gpus_per_node", 0),
    "hydra_ray_launcher.ray_launcher.RayLauncher": ("ray.remote.num_gpus", None),
}


def _given_gpus(launcher: DictConfig | None) -> tuple[str, int | None] | None:
    """(key, GPUs each job is given; None: all) for a launcher that runs jobs here and narrows them; None otherwise."""
    target = str(OmegaConf.select(launcher, "_target_") or "") if launcher is not None else ""
    key, default = next((v for t, v in _GIVEN_GPUS.items() if target.endswith(t)), (None, None))
    if key is None:
        return None
    if (
        key.startswith("ray.")
        and (OmegaConf.select(launcher, "ray.init.address") or os.environ.get("RAY_ADDRESS") or "local") != "local"
    ):
        return None  # ray.init joins an existing cluster (its address, or RAY_ADDRESS's): its nodes run the jobs
    given = OmegaConf.select(launcher, key)
    return key, default if not given else math.ceil(float(given))  # Ray shows a job given 0.5 GPU that GPU


def jobs_run_here(launcher: DictConfig | None) -> bool:
    """Whether ``hydra.launcher`` runs a sweep's jobs on this machine (see above)."""
    target = str(OmegaConf.select(launcher, "_target_") or "") if launcher is not None else ""
    return target.endswith(_ALL_GPUS) or _given_gpus(launcher) is not None


def check_launcher_gpus(launcher: DictConfig | None, devices) -> None:
    """A job asking for ``cuda[:i]`` under a launcher that runs it here but shows it fewer GPUs would find none once
    started; stop now, naming the launcher key that gives them. ``devices``: the jobs' ``device`` values."""
    key, given = _given_gpus(launcher) or (None, None)
    for device in map(str, devices):
        need = int(device.split(":")[1]) + 1 if device.startswith("cuda:") else 1
        if device.startswith("cuda") and given is not None and given < need:
            raise ConfigError(
                f"hydra.launcher.{key}: device={device} asked for, but this launcher shows each job "
                f"{given} GPU(s) of this machine; set hydra.launcher.{key}={need}"
            )


def check_launcher(launcher: DictConfig | None) -> None:
    """Launcher settings that would fail inside the launcher, after the sweep folder was written: Slurm's submitit
    launcher where ``sbatch`` is not on PATH (no Slurm here), joblib with ``n_jobs`` that names no worker (joblib:
    n_jobs >= 1 workers, -1 every core, -k all but k - 1; 0 is none)."""
    import shutil

    target = str(OmegaConf.select(launcher, "_target_") or "") if launcher is not None else ""
    if target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise ConfigError(
            "hydra/launcher: submitit_slurm submits each job with Slurm's sbatch, which is not on this machine's PATH; "
            "run the command on a Slurm login node, or use hydra/launcher=submitit_local or hydra/launcher=joblib here"
        )
    if target.endswith("JoblibLauncher"):
        n = OmegaConf.select(launcher, "n_jobs")
        cores = os.cpu_count() or 1
        if n is not None and (n == 0 or n < -cores):
            raise ConfigError(
                f"hydra.launcher.n_jobs: {n} names no worker (this machine has {cores} cores); set "
                "hydra.launcher.n_jobs to a number of workers >= 1, or -1 for one per core"
            )


def check_study_keys(cfg: DictConfig, multirun: bool) -> None:
    """``study`` and ``seeds`` are read by the study sweeper alone: outside a study they would be ignored without a
    word, so they stop here; inside one their shape is checked now (``harness.config.study_plan``), before any
    folder."""
    from harness.config import study_plan

    study_sweeper = str(OmegaConf.select(cfg, "hydra.sweeper._target_") or "").endswith("StudySweeper")
    given = [k for k in ("study", "seeds") if OmegaConf.select(cfg, k, default=None) is not None]
    if given and not (multirun and study_sweeper):
        raise ConfigError(
            f"{given[0]}: is read by the study sweeper only, which this command does not run; add -m and "
            "experiment=<a study> (or hydra/sweeper=study), or drop study= / seeds="
        )
    if study_sweeper and multirun:

        def plain(key):
            node = OmegaConf.select(cfg, key, default=None)
            return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

        study_plan(plain("study"), plain("seeds"))


def _folder(cfg: DictConfig, key: str) -> str | None:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` as Hydra will make it, or None when it depends on the job (Hydra
    makes it then; a failure there is still one line)."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:job.num}: known only once Hydra runs the job
        return None
    return str(value) if value else None


def _job_config(cfg: DictConfig) -> DictConfig:
    """The config a job's task function sees: the composed tree without its ``hydra`` node."""
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return job


def _check_run(cfg: DictConfig, parsed: list) -> None:
    """One job: no sweep syntax, a writable run folder, and the job's own checks."""
    from harness.preflight.checks import check_input_paths, check_writable

    sweep = next((o for o in parsed if o.is_sweep_override()), None)
    if sweep is not None:
        from harness.preflight.errors import quote_hint

        hint = quote_hint(sweep.input_line or "")
        raise ConfigError(
            f"{sweep.get_key_element()}: '{sweep.input_line}' lists several values, but this is one run; "
            + "add -m to sweep over them, or write a list as key=[a,b]"
            + hint
        )
    check_bool_overrides(cfg, [o.input_line for o in parsed])
    out = _folder(cfg, "hydra.run.dir")
    if out:
        check_writable(out, "hydra.run.dir")
    hc = load(_job_config(cfg))
    check_input_paths(hc)  # before the job key, which hashes a preference file: a link to nowhere is said as one
    key = job_key(hc)
    # Before Hydra writes its .hydra/ and log into the folder: another job's finished run there stays as it is.
    # (under torchrun / accelerate launch every process runs this command: the main one, RANK 0, looks after the folder)
    mine = bool(out) and os.environ.get("RANK", "0") == "0"
    if mine:
        run_folder.check(Path(out), key, run_folder.label_of(hc), hc.overwrite)
    # one run is no sweep: Hydra runs it next, in this process, which takes this preflight's data (checked once)
    checked(hc, here=True, keep=True, key=key)
    if mine and hc.overwrite:
        # every check passed: move the other job's run aside now, before Hydra writes over its .hydra/ and log
        run_folder.move_other_run(Path(out), key)


def _check_sweep(loader, cfg: DictConfig, parsed: list, config_name: str = "config") -> None:
    """A sweep: a writable sweep folder and, under Hydra's basic sweeper, every job as that sweeper will make it
    (the study sweeper checks its own jobs; another sweeper, e.g. an optimiser, picks its jobs as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from harness.preflight.checks import check_jobs, check_writable

    check_launcher(cfg.hydra.launcher)
    out = _folder(cfg, "hydra.sweep.dir")
    if out:
        check_writable(out, "hydra.sweep.dir")
    if not str(OmegaConf.select(cfg, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
        return
    params = [f"{k}={v}" for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params) + parsed, None)

    devices, folders = set(), []

    def load_job(overrides: list[str]):
        full = loader.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
        with open_dict(full):
            full.hydra.job.num = full.hydra.job.id = len(folders)  # the basic sweeper numbers jobs in this order
        check_bool_overrides(full, overrides)
        base, sub = _folder(full, "hydra.sweep.dir"), _folder(full, "hydra.sweep.subdir")
        job = _job_config(full)
        devices.add(job.get("device"))
        hc = load(job)
        folders.append((Path(base) / sub if base and sub else None, hc))
        return hc

    check_jobs([job for batch in batches for job in batch], load_job, jobs_run_here(cfg.hydra.launcher))
    check_launcher_gpus(cfg.hydra.launcher, devices)
    # every job's folder: another job's finished run there stays (or, overwrite=true, is moved aside before Hydra
    # writes there); a folder named by the clock (${now:...}) is the command's own
    if os.environ.get("RANK", "0") == "0":
        run_folder.check_sweep([(f, job_key(hc), run_folder.label_of(hc), hc.overwrite) for f, hc in folders])


def preflight_command(argv: list[str]) -> None:
    """Compose and check what ``argv`` will run, before Hydra makes a folder: one job, or every job of a plain
    ``-m`` sweep. Raises ConfigError (or Hydra's composition error)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    args = _parse_args(argv)
    if any(getattr(args, name, None) for name in _NOT_A_RUN):
        return
    config_name = args.config_name or "config"
    with _hydra(args.config_dir) as loader:
        # Composed as Hydra does to learn the mode (sweep values left out); it raises Hydra's composition errors.
        cfg = loader.compose_config(
            config_name,
            args.overrides,
            run_mode=RunMode.MULTIRUN,
            with_log_configuration=False,
            validate_sweep_overrides=False,
        )
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        multirun = bool(args.multirun or cfg.hydra.mode == RunMode.MULTIRUN)
        check_study_keys(cfg, multirun)
        if multirun:
            _check_sweep(loader, cfg, parsed, config_name)
        else:
            _check_run(cfg, parsed)


@contextlib.contextmanager
def _hydra(config_dir: str | None):
    """A Hydra instance over the search path ``hydra_main`` will use: conf/, and ``--config-dir`` before it (as
    Hydra adds it: ahead of the schemas)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    search = create_config_search_path(CONF_DIR)
    if config_dir is not None:
        folder = os.path.abspath(config_dir)
        if not os.path.isdir(folder):
            raise ConfigError(f"--config-dir: '{config_dir}' is not a folder; give the folder of your extra configs")
        search.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    backup = get_gh_backup()  # as hydra.initialize_config_dir: whatever Hydra state was there comes back after
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name="harness", config_search_path=search)
    finally:
        restore_gh_from_backup(backup)


def stop_on_user_error(fn, *args, full_traces: bool = False):
    """``fn(*args)``; a user error (see ``harness.preflight.errors.user_error``) becomes one line on stderr and exit status 2,
    a non-finite training quantity (``harness.runs.guards``) one line and exit status 3. Anything else, a bug, propagates
    with its traceback; so does everything when ``full_traces``."""
    from harness.preflight.errors import user_error
    from harness.runs.secrets import redact_text

    try:
        return fn(*args)
    except (
        Preempted
    ) as e:  # the job saved itself on SIGTERM / SIGUSR1 / SIGUSR2: 128 + the signal, as schedulers expect
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except NonFiniteError as e:
        if full_traces:
            raise
        print(f"error: {redact_text(str(e).splitlines()[0])}", file=sys.stderr)
        sys.exit(NON_FINITE_STATUS)
    except Exception as e:
        line = None if full_traces else user_error(e)
        if line is None:
            raise
        print(f"error: {redact_text(line)}", file=sys.stderr)  # the same redaction on every path
        sys.exit(2)


def _check_then_run(argv: list[str]) -> None:
    from harness.app import study_output

    preflight_command(argv)
    sys.argv = [sys.argv[0], *argv]  # Hydra reads the command line itself
    hydra_main()
    if study_output.FAILED:  # a study's failed jobs were named as they ended and again at its end
        sys.exit(study_output.FAILED_STATUS)


def main(argv: list[str] | None = None) -> None:
    """``python -m harness [overrides]``: check, then hand the command to Hydra. A user error is one line on stderr
    and exit status 2; anything else (a bug) keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Hydra prints its own errors over several lines, ending in "Set the environment variable HYDRA_FULL_ERROR=1";
    # with that variable set it raises them instead, and they reach stop_on_user_error. A user who set it keeps it.
    previous, saved_argv = os.environ.get("HYDRA_FULL_ERROR"), sys.argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        stop_on_user_error(_check_then_run, argv, full_traces=previous == "1")
    finally:
        sys.argv = saved_argv
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
