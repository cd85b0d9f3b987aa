"""A study a person can read: one status line when a job starts, one result line when it ends, each job's whole
output in its own ``job.log``, the failed jobs named at the end.

A study's jobs run in the sweeper's process (Hydra's basic launcher) or in worker processes (joblib, submitit), so
the jobs themselves print their lines, straight to the terminal they were started from, while everything else they
write (trainer progress bars, weight-loading bars, library warnings, W&B banners, our own logs) goes to their
``job.log``: the redirection is of the file descriptors, so output from C code and child processes goes there too.

What a job needs to say where the study stands (jobs done, running, left, ETA) lives in the sweep folder: the sweeper
writes ``study.json`` (how many jobs, when it started) and every job keeps one small file under ``.status/`` (its
state and times), each written by one process only and renamed into place, so no lock is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.runs import preempt

STUDY = "study.json"  # in the sweep folder: {"jobs": n, "started": unix time}
STATUS = ".status"  # in the sweep folder: <job number>.json per job
JOB_LOG = "job.log"  # in each job's folder: everything the job wrote

# Jobs of this process's study that failed, (number, label, line): the sweeper records them, ``harness.app.cli.main``
# ends with a non-zero status when there are any (Hydra itself keeps a failed job's exception and carries on).
FAILED: list[tuple[int, str, str]] = []
FAILED_STATUS = 1


# ------------------------------------------------------------------------------------------ the study's state
def begin(sweep_dir: Path, n_jobs: int) -> None:
    """The sweeper, before the first job: the study's size and clock (a rerun starts a new clock and new states)."""
    sweep_dir = Path(sweep_dir)
    _write_json(sweep_dir / STUDY, {"jobs": n_jobs, "started": time.time()})
    for stale in (sweep_dir / STATUS).glob("*.json"):
        stale.unlink(missing_ok=True)
    FAILED.clear()


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # a reader in another process sees the old state or the new one, never half of it


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class Progress:
    """Where a study stands, from its sweep folder."""

    jobs: int
    done: int  # finished, reused or failed
    running: int
    elapsed_s: float
    eta_s: float | None  # None until a job has run to its end

    @property
    def left(self) -> int:
        return max(0, self.jobs - self.done - self.running)


def progress(sweep_dir: Path, now: float | None = None) -> Progress | None:
    """The study's progress, or None when ``sweep_dir`` holds no study (a plain ``-m`` sweep)."""
    study = _read_json(Path(sweep_dir) / STUDY)
    if study is None:
        return None
    now = time.time() if now is None else now
    states = [s for s in map(_read_json, sorted((Path(sweep_dir) / STATUS).glob("*.json"))) if s]
    running = [s for s in states if s.get("state") == "running"]
    ended = [s for s in states if s.get("state") != "running"]
    return Progress(
        jobs=int(study["jobs"]),
        done=len(ended),
        running=len(running),
        elapsed_s=now - float(study["started"]),
        eta_s=eta(
            [s["ended"] - s["started"] for s in ended if s.get("state") == "done"],
            [now - s["started"] for s in running],
            max(0, int(study["jobs"]) - len(states)),
        ),
    )


def eta(durations: Sequence[float], running_for: Sequence[float], left: int) -> float | None:
    """Seconds until the study ends, if the jobs left take as long as those that ran (reused ones excluded) and run as
    many at a time as run now: the running jobs' remaining time plus the jobs left, spread over the running slots."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    slots = max(1, len(running_for))
    remaining = max((max(0.0, mean - t) for t in running_for), default=0.0)
    return remaining + mean * left / slots


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def status_line(num: int, p: Progress, label: str) -> str:
    """``[ 3/19] start  dpo beta=0.1 seed=0 | 2 done, 2 running, 15 left | 1.2 min, ETA 14.0 min``."""
    return (
        f"{_tag(num, p.jobs)} start  {label} | {p.done} done, {p.running} running, {p.left} left | "
        f"{_minutes(p.elapsed_s)}, ETA {_minutes(p.eta_s)}"
    )


def _tag(num: int, jobs: int) -> str:
    width = len(str(jobs))
    return f"[{num + 1:>{width}}/{jobs}]"


def result_line(
    num: int, jobs: int, label: str, state: str, seconds: float, rows: Sequence[dict], why: str = ""
) -> str:
    """One line for a job that ended: its first and last evaluation (gold reward, KL), or why it failed."""
    if state == "failed":
        return f"{_tag(num, jobs)} FAILED {label} after {_minutes(seconds)}: {why}"
    what = "reused" if state == "reused" else "done  "
    if rows:
        first, last = rows[0], rows[-1]
        facts = (
            f"gold {first['gold_reward']:.3f} -> {last['gold_reward']:.3f} at KL {last['kl']:.2f} nats "
            f"({len(rows)} evaluation{'s' if len(rows) != 1 else ''})"
        )
    else:
        facts = "no evaluations"
    return f"{_tag(num, jobs)} {what} {label}: {facts}" + ("" if state == "reused" else f", {_minutes(seconds)}")


def stopped_line(num: int, jobs: int, label: str, signum: int) -> str:
    """The last line of a pre-empted study: the job that saved itself, and how to go on."""
    name = signal.Signals(signum).name
    return f"{_tag(num, jobs)} stopped {label}: stopped by {name}; rerun the same command to resume"


def job_rows(job_dir: Path) -> list[dict]:
    """The job's result rows (its own points.jsonl; a cut last line is skipped)."""
    rows = []
    with contextlib.suppress(OSError):
        for line in (Path(job_dir) / "points.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and "gold_reward" in row and "kl" in row:
                    rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ in the job
@contextlib.contextmanager
def to_file(path: Path) -> Iterator[int]:
    """Send this process's stdout and stderr (the file descriptors, so C code and child processes too, and Python's
    ``sys.stdout``/``sys.stderr`` where something had replaced them, e.g. a notebook or pytest) to ``path``
    (appended) while the block runs; yields a descriptor of the terminal they had."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    saved_py = sys.stdout, sys.stderr
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stream = open(log, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = sys.stderr = stream
        yield saved_out
    finally:
        sys.stdout, sys.stderr = saved_py
        with contextlib.suppress(Exception):
            stream.close()
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (log, saved_out, saved_err):
            os.close(fd)


def say(fd: int, line: str) -> None:
    """One line on the terminal in one write (two jobs' lines never interleave within a line), and in the job's log."""
    os.write(fd, (line + "\n").encode())
    print(line, flush=True)


class JobFailed(RuntimeError):
    """A study's job that ended in an error: Hydra keeps it as the job's result and runs the other jobs."""


class JobStopped(Exception):
    """A study's job pre-empted (it saved itself on SIGTERM / SIGUSR1 / SIGUSR2): Hydra keeps it as the job's result
    and the sweeper stops the study with exit status 128 + the signal (``stop_if_stopped``). An Exception, not the
    job's SystemExit: raised in a joblib worker, a SystemExit makes joblib end the other workers, whose jobs may be
    saving their own checkpoints right then."""

    def __init__(self, signum: int, job: str = "") -> None:
        super().__init__(signum, job)  # the arguments pickle it back from a worker
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_for(launcher: str) -> Iterator[None]:
    """The study's own process while its jobs run under ``launcher`` (a Hydra launcher's class name).

    The basic launcher runs the jobs in this process: the pre-emption handler records a signal from the start, so a
    signal between two jobs stops the next one before it trains. Joblib runs them in worker processes that Slurm
    signals too (the whole process group): this process ignores the signals while they run, so it lives on to collect
    the jobs' ends and exits with 128 + n; its workers, started by loky now, inherit the ignoring (a handler would not
    survive their exec; workers started earlier, to import ahead of the launch, set it themselves:
    ``study_sweeper.prepare_worker``), so a worker between jobs is not killed with the job it would run next, and a
    job's own ``run_job`` installs the recording handler for itself."""
    if launcher == "JoblibLauncher":
        saved = {s: signal.getsignal(s) for s in preempt.SIGNALS}
        for s in preempt.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        try:
            yield
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
        return
    if launcher == "BasicLauncher":
        preempt.install()
    yield


def stop_if_stopped(returns: Sequence) -> None:
    """After a launch: a job of it pre-empted (:class:`JobStopped` as its result) ends the study, no other job
    started, with the job's 128 + n (what a scheduler requeues)."""
    for ret in returns:
        if isinstance(getattr(ret, "_return_value", None), JobStopped):
            raise SystemExit(ret._return_value.exit_status)


def run_in_study(sweep_dir: Path, job_dir: Path, num: int, label: str, run) -> object:
    """``run()``, a study's job number ``num``: its start and result lines on the terminal, its output in
    ``job_dir/job.log``, its state under ``sweep_dir/.status``. A job that ends in an error (a bug, a non-finite
    loss, a ``sys.exit``) is named in one line and raised as :class:`JobFailed`, so the study goes on with the others
    and ends with a non-zero status. A job pre-empted (``harness.runs.preempt``: it saved itself on SIGTERM / SIGUSR1
    / SIGUSR2) is no failure: its one line says so, and :class:`JobStopped` stops the study."""
    from harness.preflight.errors import user_error
    from harness.runs.secrets import redact_text

    sweep_dir, job_dir = Path(sweep_dir), Path(job_dir)
    state_file = sweep_dir / STATUS / f"{num}.json"
    done = job_dir / "done.json"
    before = done.stat().st_mtime_ns if done.exists() else None  # a finished job's record: the job is reused
    started = time.time()
    _write_json(state_file, {"state": "running", "started": started, "label": label})
    p = progress(sweep_dir) or Progress(jobs=num + 1, done=0, running=1, elapsed_s=0.0, eta_s=None)
    state, why, result, stop = "done", "", None, None
    with to_file(job_dir / JOB_LOG) as terminal:
        say(terminal, status_line(num, p, label))
        try:
            result = run()
            if before is not None and done.exists() and done.stat().st_mtime_ns == before:
                state = "reused"
        except preempt.Preempted as e:  # not wrapped into its exit status (a job run without stop_on_user_error)
            state, stop = "stopped", JobStopped(e.signum, label)
        except SystemExit as e:
            if preempt.signal_of(e.code) is not None:  # pre-empted: the job saved itself, the whole study stops
                state, stop = "stopped", JobStopped(preempt.signal_of(e.code), label)
            else:  # the job's own one-line stop (exit 2 or 3): its line is in job.log
                state, why = "failed", f"stopped with exit status {e.code}"
        except Exception as e:  # noqa: BLE001 - any error ends this job, not the study; its traceback is in job.log
            import traceback

            traceback.print_exc()
            first = next(iter(str(e).strip().splitlines()), "")
            state, why = "failed", redact_text(user_error(e) or f"{type(e).__name__}: {first}")
        ended = time.time()
        _write_json(state_file, {"state": state, "started": started, "ended": ended, "label": label})
        if stop is not None:
            line = stopped_line(num, p.jobs, label, stop.signum)
        else:
            line = result_line(num, p.jobs, label, state, ended - started, job_rows(job_dir), why)
        if state == "failed":
            line += f" (its output: {job_dir / JOB_LOG})"
        say(terminal, line)
    if stop is not None:
        # Not a failed job: the scheduler wants the machine back. The study's process ends with the job's 128 + n
        # (stop_if_stopped), so the scheduler requeues it; no other job is started, and the same command resumes
        # this one from its checkpoint and reuses those that finished.
        raise stop
    if state == "failed":
        raise JobFailed(f"job {num + 1} ({label}): {why}")
    return result


def job_label(overrides: Sequence[str], hidden: Sequence[str] = ()) -> str:
    """A job's name on the terminal, its overrides in short: ``dpo beta=0.1 seed=0`` for ``pipeline=dpo
    pipeline.beta=0.1 seed=0``; the keys that say how it runs (``hidden``, ``hydra.*``, ``cache_dir``) left out,
    secrets redacted (``harness.runs.secrets.redact_overrides``, as everywhere overrides are shown)."""
    from harness.runs.secrets import redact_overrides

    method, rest = [], []
    for o in redact_overrides(list(overrides)):
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in hidden:
            continue
        if key == "pipeline":
            method = [value]
        else:
            rest.append(f"{key.removeprefix('pipeline.')}={value}")
    return " ".join(method + rest) or "(defaults)"
