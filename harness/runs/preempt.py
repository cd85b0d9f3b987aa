"""Pre-emption: a scheduler's warning signal (Slurm's SIGTERM, submitit's SIGUSR1 / SIGUSR2) saves the job at its next
safe point, hands the signal on and ends the process with exit status 128 + the signal's number.

The handler only records the signal: a loop is never interrupted half-way through an update or a checkpoint write.
Each loop asks ``requested()`` at its safe point (after an update and its rows), writes its checkpoint then, and
raises :class:`Preempted`; the command line turns that into the exit status (``harness.app.cli``). A rerun of the
same command resumes from that checkpoint (``harness.runs.checkpoint``).

A handler installed before ours (submitit's, which requeues the job) is called with the signal once the checkpoint is
written: requeued, the job restarts where it stopped. What it exits with is replaced by 128 + the signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("harness.preempt")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_received: list[int] = []  # the signals received, first first
_previous: dict[int, object] = {}  # the handlers ours replaced


class Preempted(BaseException):
    """The job saved itself on a pre-emption signal and stops (a BaseException: no ``except Exception`` keeps it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; the job saved its state, run the command again")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_of(exit_status: object) -> int | None:
    """The pre-emption signal an exit status ``128 + n`` stands for (a job stopped by :class:`Preempted`), or None."""
    if isinstance(exit_status, int) and exit_status - 128 in SIGNALS:
        return exit_status - 128
    return None


def _record(signum: int, frame) -> None:
    if not _received:
        log.warning("%s received: the job stops at its next safe point", signal.Signals(signum).name)
    _received.append(signum)


def install() -> None:
    """Record SIGTERM / SIGUSR1 / SIGUSR2 from now on (once per process; the main thread alone may set handlers, so a
    job run in another thread keeps the process's handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is _record:
            continue
        _previous[signum] = current
        signal.signal(signum, _record)


def requested() -> int | None:
    """The first pre-emption signal received, or None."""
    return _received[0] if _received else None


def stop_if_requested(save: Callable[[], object] | None = None) -> None:
    """At a safe point: when a signal was received, ``save()`` (the job's checkpoint), hand the signal to the handler
    ours replaced, and raise :class:`Preempted`."""
    from harness.lm import distributed

    signum = requested()
    if distributed.agree(signum is None):  # every process stops at the same safe point, if any of them was signalled
        return
    signum = signum or signal.SIGTERM
    if save is not None:
        save()
    hand_on(signum)
    raise Preempted(signum)


def hand_on(signum: int) -> None:
    """Call the handler that was installed before ours (submitit's requeue) with ``signum``; its exit is ours."""
    previous = _previous.get(signum)
    if callable(previous):
        try:
            previous(signum, None)
        except SystemExit:  # e.g. submitit's handler exits after requeueing: the exit status is 128 + signum
            pass


def reset() -> None:
    """Forget received signals (a new job in the same process, and the tests)."""
    _received.clear()
