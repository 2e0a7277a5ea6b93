"""Preemption-safe jobs: stop signals, the run-level lock and the submitit ``Checkpointable``.

A job is told to stop by

- ``SIGTERM``: SLURM preemption (``PreemptMode=REQUEUE``), ``scontrol requeue`` or ``scancel``;
  SLURM requeues the job itself and sends ``SIGKILL`` ``KillWait`` seconds (30 by default)
  later; locally, the ``run`` process forwards its own SIGTERM (``timeout``, ``kill PID``);
- ``SIGINT`` and ``SIGHUP``: Ctrl-C and a closed terminal, forwarded by the local ``run``
  process (see :class:`ForwardStops`);
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

The parent side (:class:`ForwardStops`, :func:`job_processes`): the local ``run`` process catches
SIGTERM, SIGINT and SIGHUP, forwards the signal to the worker processes of its submitit jobs,
waits for them to checkpoint and exit, and only then exits itself, so no worker outlives its
``run``. submitit's local controller (the worker's parent) would turn a Ctrl-C into a ``SIGKILL``
of the worker one second later, and print a traceback; the runner therefore starts it with
SIGINT and SIGHUP ignored (:data:`IGNORE_TERMINAL_SIGNALS`, a set-up line of the job's shell;
ignored signals are inherited), and the job installs its own handlers for them while it runs
(:class:`StopSignals`).

A ``run`` process killed outright (``kill -9``, the OOM killer) forwards nothing. Its local
jobs therefore watch it (:class:`ParentWatch`, told its pid by the set-up line
:func:`parent_setup_line`): once it is gone, a job sends itself SIGTERM, checkpoints and records
``preempted``, so no worker outlives its ``run`` and the same command resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import submitit
from filelock import FileLock, Timeout

__all__ = [
    "FORWARDED_SIGNALS",
    "IGNORE_TERMINAL_SIGNALS",
    "PARENT_ENV",
    "ParentWatch",
    "STOP_SIGNALS",
    "ForwardStops",
    "Preempted",
    "RunJob",
    "RunLocked",
    "StopSignals",
    "job_processes",
    "kill_job",
    "parent_setup_line",
    "run_is_locked",
    "run_lock",
    "signal_job",
]

#: signals that make a job checkpoint and stop (submitit's own USR signal is added at run time)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

#: signals the local ``run`` process forwards to its jobs before exiting
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: set-up line of a local job's shell: its submitit controller (and the worker, until the run's
#: handlers are installed) ignores Ctrl-C and hang-ups; the ``run`` process forwards them instead
IGNORE_TERMINAL_SIGNALS = "trap '' INT HUP"

LOCK_NAME = ".run.lock"

log = logging.getLogger("benchmark.preempt")

#: environment variable of a local job: ``PID:START`` of the ``run`` process that started it
PARENT_ENV = "BENCHMARK_RUN_PROCESS"


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, ..., so field
    ``n`` of proc(5) is index ``n - 3``), or ``None`` when it cannot be read (the process has
    exited, or there is no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()  # comm may be any bytes
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return stat.rsplit(b")", 1)[1].decode("ascii").split()


def _start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (proc(5) field 22), which tells a
    live process from a later one that reuses its pid; ``None`` when ``pid`` does not exist or
    is a zombie, ``""`` where there is no ``/proc`` (then only its existence is checked)."""
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self").is_dir():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    return None if fields[0] in ("Z", "X") else fields[19]


def parent_setup_line() -> str:
    """The set-up line of a local job's shell that names this (the ``run``) process to it."""
    return f"export {PARENT_ENV}={os.getpid()}:{_start_time(os.getpid()) or ''}"


class ParentWatch:
    """Context manager of a local job: a daemon thread that checks every ``interval_s`` seconds
    whether the ``run`` process named in :data:`PARENT_ENV` still exists and, once it is gone
    (killed with ``SIGKILL`` or by the OOM killer, so that it could forward no stop), sends this
    process ``SIGTERM``: the job checkpoints at the next iteration boundary and records
    ``preempted`` (:class:`StopSignals` must be installed). Does nothing without the variable
    (SLURM jobs, in-process jobs).

    Attributes:
        parent: the watched pid, or None.
    """

    def __init__(self, interval_s: float = 1.0, environ: dict[str, str] | None = None) -> None:
        value = (os.environ if environ is None else environ).get(PARENT_ENV, "")
        pid, _, start = value.partition(":")
        self.parent = int(pid) if pid.isdigit() else None
        self.start = start
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def gone(self) -> bool:
        """Whether the watched ``run`` process has ended (or its pid now names another one)."""
        if self.parent is None:
            return False
        now = _start_time(self.parent)
        return now is None or (bool(self.start) and bool(now) and now != self.start)

    def _watch(self) -> None:
        while not self._done.wait(self.interval_s):
            if self.gone():
                log.warning(
                    "the run process that started this job (pid %d) is gone: checkpointing",
                    self.parent,
                )
                _kill(os.getpid(), signal.SIGTERM)
                return

    def __enter__(self) -> ParentWatch:
        if self.parent is not None:
            self._thread = threading.Thread(target=self._watch, name="parent-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


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
    Only the first signal counts: the same stop may arrive several times (from the terminal's
    process group, the forwarding ``run`` process and submitit's controller), and a repeat must
    not interrupt the checkpoint being written. A signal that arrives while the handlers are
    being installed is only recorded: :meth:`check` raises it. On exit the previous handlers
    are restored.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self.in_training = False
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        if self.requested is not None:
            return  # a repeat of the stop already being handled
        self.requested = signum
        if not self.in_training:
            raise Preempted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed in the main thread
        deferring, self.in_training = self.in_training, True  # a stop meanwhile only records
        for signum in (*STOP_SIGNALS, _submitit_signal()):
            self.previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handler)
        self.in_training = deferring
        return self

    def check(self) -> None:
        """Raise :class:`Preempted` if a stop signal has arrived (e.g. before the job started)."""
        if self.requested is not None:
            raise Preempted(self.requested)

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

    Returns the run's metrics (:func:`benchmark.job.execute_run`), or ``{"run_locked": message}``
    when another process holds the run's lock (the run is being executed elsewhere).

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

        try:
            return execute_run(run_dir, data_root, device, weights_dir, workers)
        except RunLocked as exc:
            # not a failure: another invocation is executing this run (status left untouched)
            return {"run_locked": str(exc)}

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


def job_processes(root: int) -> list[tuple[int, list[str]]]:
    """The process ``root`` and its descendants as ``(pid, argv)``, parents first.

    Read from Linux's ``/proc``; elsewhere (no ``/proc``) just ``[(root, [])]``. A local
    submitit job is ``root`` = its controller (``python -m submitit.local._local``, or a shell
    running it when the job has set-up lines), whose child is the worker
    (``python -m submitit.core._submit``) that executes the run.
    """
    proc = Path("/proc")
    if not (proc / str(os.getpid())).is_dir():
        return [(root, [])]
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[tuple[int, list[str]]] = []
    todo = [root]
    while todo:
        pid = todo.pop(0)
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        out.append((pid, cmdline.decode(errors="replace").split("\0")))
        todo.extend(children.get(pid, []))
    return out


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def signal_job(job_id: str, signum: int) -> None:
    """Send ``signum`` to the worker process(es) of the local submitit job ``job_id`` (its
    controller's pid). While no worker is running yet, its controller gets ``SIGTERM``, which
    submitit forwards to the workers it has started and which ends it before it starts any;
    callers repeat the signal until the job is gone (a worker ignores a stop signal while it
    loads, before the run's handlers are installed)."""
    processes = job_processes(int(job_id))
    # exact argv elements: a set-up shell's ``-c`` string names the controller's module too
    workers = [pid for pid, argv in processes if "submitit.core._submit" in argv]
    for pid in workers:
        _kill(pid, signum)
    if not workers:
        for pid, argv in processes:
            if "submitit.local._local" in argv or argv == []:  # [] : no /proc to look into
                _kill(pid, signal.SIGTERM)


def kill_job(job_id: str) -> None:
    """``SIGKILL`` the local submitit job ``job_id``: its worker(s) first, then the controller."""
    for pid, _ in reversed(job_processes(int(job_id))):
        _kill(pid, signal.SIGKILL)


class ForwardStops:
    """Stop handling of the local ``run`` process (a context manager; main thread only).

    Inside, SIGTERM, SIGINT and SIGHUP only record the signal (:attr:`signum`, the first one):
    the runner then stops starting jobs, forwards the signal to its running jobs
    (:func:`signal_job`, repeated until they are gone), lets them checkpoint and record
    ``preempted``, and exits with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM). A second
    Ctrl-C more than a second after the first sets :attr:`kill_now`: the runner kills its jobs
    at once (``interrupted``; they resume from their last periodic checkpoint). Repeats of other
    signals are ignored (``timeout`` sends SIGTERM to the process and to its group).
    On exit the previous handlers are restored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.kill_now = False
        self._first = 0.0
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first > 1.0:
            self.kill_now = True

    def note(self, signum: int) -> None:
        """Record a stop signal that an in-process job (``--executor debug``) received."""
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()

    def __enter__(self) -> ForwardStops:
        if threading.current_thread() is threading.main_thread():
            for signum in FORWARDED_SIGNALS:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
