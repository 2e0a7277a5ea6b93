"""Preemption-safe jobs: stop signals, the run-level lock and the submitit ``Checkpointable``.

A job is told to stop by

- ``SIGTERM``: SLURM preemption (``PreemptMode=REQUEUE``), ``scontrol requeue`` or ``scancel``;
  SLURM requeues the job itself and sends ``SIGKILL`` ``KillWait`` seconds (30 by default)
  later;
- ``SIGUSR1``: a user's or site's own "checkpoint and stop" signal;
- submitit's timeout/preemption signal (``SIGUSR2``, sent ``signal_delay_s`` before the time
  limit by ``#SBATCH --signal``): after our checkpoint, submitit's own handler is called, which
  asks :meth:`RunJob.checkpoint` for the resubmission, requeues the job (``scontrol requeue``) and
  exits.

While training, the signal only sets a flag: the training loop finishes the current iteration
(a consistent state: networks, EMA teacher, optimizer, RNG states and step agree), writes a
checkpoint and raises :class:`Preempted`. Outside the training loop (set-up, evaluation: nothing
there needs saving) :class:`Preempted` is raised at once. The run's status becomes
``preempted`` until the requeued job starts again and resumes from the checkpoint on disk.

The resubmission carries only the run folder, the data root and the device, never the training
state: a requeued job always resumes from the newest checkpoint on disk.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import submitit
from filelock import FileLock, Timeout

__all__ = [
    "STOP_SIGNALS",
    "Preempted",
    "RunJob",
    "RunLocked",
    "StopSignals",
    "run_is_locked",
    "run_lock",
]

#: signals that make a job checkpoint and stop (submitit's own USR signal is added at run time)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

LOCK_NAME = ".run.lock"


class Preempted(RuntimeError):
    """The job was told to stop (SIGTERM, SIGUSR1 or submitit's timeout signal).

    Attributes:
        signum: the signal number.
        step: the training step of the checkpoint written before stopping, or None.
    """

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum = signum
        self.step = step
        where = f" after step {step} (checkpoint written)" if step is not None else ""
        super().__init__(f"preempted by {signal.Signals(signum).name}{where}")


class RunLocked(RuntimeError):
    """Another process holds the run's lock: the run is being executed elsewhere."""


def run_lock(run_dir: Path) -> FileLock:
    """The run-level lock (``run_dir/.run.lock``, an ``flock``): a run executes only while its
    job holds it, so two invocations on one results folder never run the same run at once.

    On a cluster the results folder must be on a file system with working ``flock`` (NFSv4,
    Lustre/GPFS mounted with ``flock``; local disks always).
    """
    return FileLock(str(Path(run_dir) / LOCK_NAME))


def run_is_locked(run_dir: Path) -> bool:
    """Whether some process holds the run's lock right now (i.e. it is executing)."""
    lock = run_lock(run_dir)
    if not Path(run_dir).is_dir():
        return False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _submitit_signal() -> int:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class StopSignals:
    """Context manager installing the stop-signal handlers for one job.

    Inside, :attr:`in_training` tells the handler whether to defer (set :attr:`requested` for the
    training loop to act on at the next iteration boundary) or raise :class:`Preempted` at once.
    On exit the previous handlers are restored.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self.in_training = False
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        if self.requested is None:
            self.requested = signum
        if not self.in_training:
            raise Preempted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed in the main thread
        for signum in (*STOP_SIGNALS, _submitit_signal()):
            self.previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def hand_over(self, signum: int) -> None:
        """After our checkpoint: let submitit handle its own timeout signal (it calls
        :meth:`RunJob.checkpoint`, requeues the job and exits with ``SystemExit``)."""
        previous = self.previous.get(signum)
        if signum == _submitit_signal() and callable(previous):
            signal.signal(signum, previous)
            # the requeue below makes SLURM send SIGTERM to this job, which is exiting anyway
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            previous(signum, None)


class RunJob(submitit.helpers.Checkpointable):
    """The submitit job of one run: ``RunJob()(run_dir, data_root, device, weights_dir, workers)``.

    A ``Checkpointable``: on a SLURM time limit or preemption submitit calls :meth:`checkpoint`,
    whose resubmission is a fresh ``RunJob`` with the same arguments, so the requeued job
    resumes from the training checkpoint on disk (``run_dir/checkpoint.pt``), never from state
    pickled at submission.
    """

    def __call__(
        self,
        run_dir: str,
        data_root: str,
        device: str = "auto",
        weights_dir: str | None = None,
        workers: int = 1,
    ) -> dict[str, Any]:
        from benchmark.job import execute_run

        return execute_run(run_dir, data_root, device, weights_dir, workers)

    def checkpoint(
        self,
        run_dir: str,
        data_root: str,
        device: str = "auto",
        weights_dir: str | None = None,
        workers: int = 1,
    ):
        """The resubmission after a timeout/preemption (``submitit.helpers.DelayedSubmission``)."""
        return submitit.helpers.DelayedSubmission(
            RunJob(), run_dir, data_root, device, weights_dir, workers
        )
