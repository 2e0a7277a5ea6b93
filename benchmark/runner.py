"""Grid runner: expands methods x seeds for a task into runs, adds the teacher runs they depend
on and the ``mixture`` reference, skips finished runs, and executes the rest through submitit.

Every job goes through a ``submitit.AutoExecutor``: ``cluster="local"`` (subprocess jobs) or
``cluster="debug"`` (in-process, for breakpoints). Another submitit cluster (SLURM) is a
different ``cluster`` value plus its parameters, not a different code path.

Dependencies: a method with ``teacher_method`` (the remixing methods and SURF start from MixIT)
points at the teacher run of the same task, seed and preset, found by the hash of its resolved
config; it is planned once, trained once, and reused by every method and later invocation.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, config_hash, resolve_config, to_dict
from benchmark.preempt import (
    FORWARDED_SIGNALS,
    IGNORE_TERMINAL_SIGNALS,
    ForwardStops,
    RunJob,
    kill_job,
    parent_setup_line,
    run_is_locked,
    signal_job,
)
from benchmark.registry import get_method, get_task, plugin_modules
from benchmark.store import (
    RunRecord,
    atomic_write_json,
    read_json,
    read_status,
    run_dir_for,
    write_status,
)

__all__ = [
    "HELD_ELSEWHERE",
    "PlannedRun",
    "Stopped",
    "execute_plan",
    "held_elsewhere",
    "plan_runs",
    "prepare_runs",
]

EXECUTORS = ("local", "debug")

FORWARDED_NAMES = {s.name for s in FORWARDED_SIGNALS}

#: the outcome of a run that another live process is executing (it holds the run's lock)
HELD_ELSEWHERE = "running elsewhere"

#: seconds a stopped run's local job gets to checkpoint and exit before it is killed
STOP_GRACE_S = 120.0
#: seconds between repeats of a forwarded stop signal (a job that is still loading ignores it)
_RESEND_S = 2.0
#: seconds between polls of running jobs
_POLL_S = 0.5


@dataclass
class PlannedRun:
    """One run of the grid.

    Attributes:
        config: resolved config.
        run_hash: results-store address (hash of the method's config sections).
        run_dir: its folder.
        teacher: the planned teacher run, or None.
        stage: 0 for runs without a teacher, teacher's stage + 1 otherwise.
    """

    config: RunConfig
    run_hash: str
    run_dir: Path
    teacher: PlannedRun | None = None
    stage: int = 0
    requested: bool = True
    job: Any = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.config.method}/{self.config.task.name}/seed{self.config.seed}"

    @property
    def state(self) -> str:
        return read_status(self.run_dir)["state"]


def _plan_one(
    method: str,
    task: str,
    seed: int,
    preset: str,
    overrides,
    results_dir: Path,
    runs: dict[Path, PlannedRun],
    requested: bool,
) -> PlannedRun:
    cls = get_method(method)
    cfg = resolve_config(method, task, seed, preset, overrides)
    teacher = None
    if cls.teacher_method:
        teacher = _plan_one(
            cls.teacher_method, task, seed, preset, overrides, results_dir, runs, False
        )
        cfg.teacher = teacher.run_hash
    run_hash = config_hash(cfg)
    run_dir = run_dir_for(results_dir, task, method, run_hash)
    if run_dir in runs:
        runs[run_dir].requested |= requested
        return runs[run_dir]
    run = PlannedRun(
        cfg, run_hash, run_dir, teacher, 0 if teacher is None else teacher.stage + 1, requested
    )
    runs[run_dir] = run
    return run


def plan_runs(
    methods: list[str],
    task: str,
    seeds: list[int],
    preset: str,
    overrides: list[tuple[str | None, str, str]],
    results_dir: Path,
) -> list[PlannedRun]:
    """Expand the grid into runs (teachers and the ``mixture`` reference included).

    Raises:
        KeyError: unknown method or task (the message lists the valid names).
        benchmark.config.ConfigError: bad preset or override.
    """
    get_task(task)
    for method in methods:
        get_method(method)
    runs: dict[Path, PlannedRun] = {}
    _plan_one("mixture", task, 0, preset, overrides, results_dir, runs, True)
    for seed in seeds:
        for method in methods:
            _plan_one(method, task, seed, preset, overrides, results_dir, runs, True)
    return sorted(runs.values(), key=lambda r: (r.stage, r.config.method, r.config.seed))


def prepare_runs(
    runs: list[PlannedRun], retry_failed: bool = False, weights_dir: Path | None = None
) -> list[PlannedRun]:
    """Create run folders and pick the runs to execute.

    Finished runs (``done``) are skipped; ``failed`` and ``diverged`` runs are skipped unless
    ``retry_failed``; runs another live process is executing (it holds the run's lock) are
    skipped (:func:`held_elsewhere` lists them); everything else (new, pending, preempted,
    interrupted, ``running`` whose process is gone) is executed and resumes from its checkpoint
    when it has one. A finished image run whose perceptual
    metrics are missing, stale or now computable (weights placed since) is re-evaluated
    without retraining (:func:`benchmark.job.evaluation_outdated`: perceptual metrics
    missing, stale or now computable, or the demo page's estimates never stored).

    Returns:
        The runs to execute, in stage order.
    """
    from benchmark.job import evaluation_outdated

    todo = []
    for run in runs:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if not (run.run_dir / "config.json").is_file():
            cls = get_method(run.config.method)
            atomic_write_json(
                run.run_dir / "config.json",
                {
                    "hash": run.run_hash,
                    "sections": list(cls.config_sections),
                    "teacher_dir": str(run.teacher.run_dir) if run.teacher else None,
                    "plugins": plugin_modules(),
                    "config": to_dict(run.config),
                },
            )
        state = run.state
        if state == "done":
            if not evaluation_outdated(RunRecord(run.run_dir), run.config, weights_dir):
                continue
            # re-evaluate (no retraining) with the evaluation settings planned now
            info = read_json(run.run_dir / "config.json")
            for section in ("perceptual", "eval"):  # evaluation-only settings
                if section in run.config.sections:
                    info["config"][section] = to_dict(run.config.sections[section])
            atomic_write_json(run.run_dir / "config.json", info)
        if state in ("failed", "diverged") and not retry_failed:
            continue
        if run_is_locked(run.run_dir):  # being executed by another invocation right now
            continue
        if state in ("absent", "failed", "diverged"):
            write_status(run.run_dir, "pending")
        todo.append(run)
    return todo


def held_elsewhere(runs: list[PlannedRun], todo: list[PlannedRun]) -> list[PlannedRun]:
    """The runs :func:`prepare_runs` left out because another live process executes them."""
    return [r for r in runs if r not in todo and r.state != "done" and run_is_locked(r.run_dir)]


def _make_executor(name: str, results_dir: Path, timeout_min: int):
    import submitit

    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    executor = submitit.AutoExecutor(folder=results_dir / "submitit" / "%j", cluster=name)
    if name == "local":
        # submitit's local controller sets CUDA_VISIBLE_DEVICES="" (no GPU) unless told GPUs;
        # a job's set-up line runs after that, so jobs see the parent's GPUs
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = (
            f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}"
            if visible is not None
            else "unset CUDA_VISIBLE_DEVICES"
        )
        executor.update_parameters(
            timeout_min=timeout_min,
            local_setup=[IGNORE_TERMINAL_SIGNALS, parent_setup_line(), gpus],
        )
    return executor


class _Display:
    """Progress of running jobs: tqdm bars on a terminal; otherwise (a log file, a pipe, a batch
    system's output) a plain line per run when its first progress arrives, then at most one
    every :attr:`line_every_s` seconds in a phase, and one line per event."""

    #: seconds between a run's progress lines when not on a terminal
    line_every_s = 60.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bars: dict[Path, Any] = {}
        self.lines: dict[Path, tuple[float, str, int]] = {}  # last line: time, phase, step

    def poll(self, run: PlannedRun, since: float = 0.0) -> None:
        """Show the progress the job of ``run`` wrote (``progress.json``) after ``since``
        (``time.time()`` of its submission: an older file is a previous attempt's)."""
        path = run.run_dir / "progress.json"
        try:
            if path.stat().st_mtime < since:
                return
        except OSError:
            return
        progress = read_json(path)
        if not progress:
            return
        if not self.tty:
            self._line(run, progress)
            return
        from tqdm import tqdm

        bar = self.bars.get(run.run_dir)
        desc = f"{run.label} {progress['phase']}"
        if bar is None or bar.total != progress["total"] or bar.desc != desc:
            if bar is not None:
                bar.close()
            bar = tqdm(total=progress["total"], desc=desc, leave=False, dynamic_ncols=True)
            self.bars[run.run_dir] = bar
        bar.n = progress["step"]
        if "loss" in progress:
            bar.set_postfix(loss=f"{progress['loss']:.4g}", refresh=False)
        bar.refresh()

    def _line(self, run: PlannedRun, progress: dict[str, Any]) -> None:
        """``  progress mixit/cifar10/seed0  train 430/1200 (35 %)  loss=-25.15``, when due."""
        now, phase, step = time.monotonic(), progress["phase"], progress["step"]
        last = self.lines.get(run.run_dir)
        if last is not None:
            if (phase, step) == last[1:] or (
                phase == last[1] and now - last[0] < self.line_every_s
            ):
                return
        self.lines[run.run_dir] = (now, phase, step)
        total = max(int(progress["total"]), 1)
        loss = f"  loss={progress['loss']:.4g}" if "loss" in progress else ""
        print(
            f"  progress {run.label:<28} {phase} {step}/{total} ({100 * step // total} %){loss}",
            flush=True,
        )

    def finish(self, run: PlannedRun, message: str | None) -> None:
        self.lines.pop(run.run_dir, None)
        bar = self.bars.pop(run.run_dir, None)
        if bar is not None:
            bar.close()
        if message is not None:
            print(message, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _finish_message(run: PlannedRun, started: float) -> str:
    status = read_status(run.run_dir)
    state = status["state"]
    elapsed = time.time() - started
    if state == "done":
        metrics = RunRecord(run.run_dir).metric_values()
        task_metrics = get_task(run.config.task.name).metrics
        shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in task_metrics if k in metrics)
        return f"  done     {run.label:<28} {elapsed:7.1f}s  {shown}"
    return f"  {state:<8} {run.label:<28} {elapsed:7.1f}s  {status.get('error', '')}"


def _holder(run_dir: Path) -> str:
    """`` (pid N on HOST)`` from the status of a run another process is executing."""
    status = read_status(run_dir)
    if status.get("pid"):
        return f" (pid {status['pid']} on {status.get('host', '?')})"
    return ""


class Stopped(Exception):
    """``run`` was stopped by SIGINT, SIGTERM or SIGHUP; raised by :func:`execute_plan` once its
    local jobs have checkpointed and exited. ``str()`` is the one-line message for the user.

    Attributes:
        signum: the signal.
        exit_code: ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
        counts: final states of the runs that were executing when it arrived
            (``preempted``: checkpointed; ``interrupted``: killed, they resume from their last
            periodic checkpoint; ``done``: finished meanwhile).
        not_started: runs of the grid that had not started.
    """

    def __init__(self, signum: int, counts: dict[str, int], not_started: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.counts = counts
        self.not_started = not_started
        name = signal.Signals(signum).name
        head = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {name}"
        parts = []

        def runs(n: int) -> str:
            return f"{n} run{'s' if n != 1 else ''}"

        if counts.get("preempted"):
            parts.append(f"{runs(counts['preempted'])} checkpointed (preempted)")
        if counts.get("interrupted"):
            parts.append(
                f"{runs(counts['interrupted'])} killed before checkpointing (interrupted: "
                "resumes from its last periodic checkpoint)"
            )
        if counts.get("done"):
            parts.append(f"{runs(counts['done'])} finished meanwhile")
        left = [state for state in counts if state not in ("preempted", "interrupted", "done")]
        for state in sorted(left):
            parts.append(f"{runs(counts[state])} {state}")
        if not_started:
            parts.append(f"{runs(not_started)} not started")
        resumable = counts.get("preempted", 0) + counts.get("interrupted", 0) + not_started
        tail = (
            f"the same command resumes {'it' if resumable == 1 else 'them'}"
            if resumable
            else "nothing was left running"
        )
        super().__init__(f"{head}: {', '.join(parts) or 'no run was executing'}; {tail}")


@dataclass
class _Active:
    """A submitted job: its run, wall-clock start, GPU slot, last forwarded stop signal, and
    whether this process killed it."""

    run: PlannedRun
    started: float
    slot: int | None = None
    signalled: float = -1e9
    killed: bool = False


def execute_plan(
    todo: list[PlannedRun],
    executor_name: str,
    data_root: Path,
    results_dir: Path,
    device: str = "auto",
    max_parallel: int = 1,
    timeout_min: int = 7 * 24 * 60,
    weights_dir: Path | None = None,
    gpu_slots: list[int] | None = None,
    workers: int = 1,
) -> dict[str, int]:
    """Run the planned runs stage by stage through submitit; one failure never stops the rest.

    - A job that ends without recording a state of its own (its process was killed: SIGKILL,
      the out-of-memory killer, a lost node) is recorded ``interrupted``, not ``failed``: the
      next ``run`` resumes it from its last checkpoint without any flag.
    - Runs that another live process is executing (it holds the run's lock,
      :func:`benchmark.preempt.run_is_locked`) are never executed twice nor recorded failed: a
      job that finds the lock taken reports ``running elsewhere`` and leaves the run alone.
    - A run whose teacher did not finish: when another live process holds the teacher (two
      invocations of one grid), the run waits for it (one ``waiting`` line, the lock is polled)
      and starts once the teacher is ``done``; a teacher left unfinished by a stopped
      invocation is resumed here first; a teacher ``failed``/``diverged`` marks the run
      ``failed`` with that reason (``--retry-failed`` re-runs both); a teacher this invocation
      ran that ended interrupted leaves the run pending (``skipped``; the same command resumes).
    - A run finished by another process while this one waited is not executed again.
    - SIGTERM, SIGINT and SIGHUP (:class:`benchmark.preempt.ForwardStops`): no new job starts,
      the signal is forwarded to the running local jobs (repeated every 2 s until they exit),
      which checkpoint and record ``preempted``; a job still running after ``STOP_GRACE_S``
      seconds, or after a second Ctrl-C, is killed (``interrupted``). Then :class:`Stopped`
      is raised: no worker outlives its ``run``. With ``--executor debug`` the in-process job
      checkpoints and stops the grid the same way.

    With ``gpu_slots`` (local executor), every running job gets its own GPU from the pool
    (:class:`benchmark.slots.GpuSlots`, ``CUDA_VISIBLE_DEVICES=<index>``); otherwise local jobs
    see the parent's ``CUDA_VISIBLE_DEVICES`` (submitit would hide every GPU from them).

    Returns:
        Count of final states, e.g. ``{"done": 5, "failed": 1}``; ``running elsewhere`` for runs
        another process was executing, ``skipped`` for runs whose teacher was interrupted.

    Raises:
        Stopped: a stop signal arrived (its message says what was checkpointed).
    """
    from benchmark.slots import GpuSlots

    executor = _make_executor(executor_name, results_dir, timeout_min)
    local = executor_name == "local"
    pool = GpuSlots(gpu_slots) if gpu_slots and local else None
    display = _Display()
    initial = {run.run_dir: run.state for run in todo}
    outcome: dict[Path, str] = {}  # final state of every run this invocation dealt with
    attempted: dict[Path, PlannedRun] = {}  # runs submitted by this invocation
    active: list[_Active] = []
    announced: set[Path] = set()
    stopped: dict[Path, str] = {}  # final state of the runs executing when a stop came

    def teacher_busy(run: PlannedRun) -> bool:
        teacher = run.teacher
        assert teacher is not None
        if any(a.run.run_dir == teacher.run_dir for a in active):
            return True
        return run_is_locked(teacher.run_dir)

    def settle(run: PlannedRun, queue: list[PlannedRun], waiting: list[PlannedRun]) -> bool:
        """Decide about a run before submitting it: True to submit it now."""
        if run.state == "done" and initial.get(run.run_dir) != "done":
            outcome[run.run_dir] = "done"
            display.finish(run, f"  done     {run.label:<28} (finished by another process)")
            return False
        if run_is_locked(run.run_dir):  # another invocation got to it first
            outcome[run.run_dir] = HELD_ELSEWHERE
            display.finish(
                run,
                f"  skipped  {run.label:<28} being run by another process{_holder(run.run_dir)}",
            )
            return False
        teacher = run.teacher
        if teacher is None or teacher.state == "done":
            return True
        if teacher_busy(run):
            waiting.append(run)
            if run.run_dir not in announced and teacher.run_dir not in attempted:
                announced.add(run.run_dir)
                print(
                    f"  waiting  {run.label}: its teacher {teacher.label} is being trained by "
                    f"another process{_holder(teacher.run_dir)}; it starts when that finishes",
                    flush=True,
                )
            return False
        state = teacher.state
        if state in ("failed", "diverged"):
            write_status(
                run.run_dir,
                "failed",
                error=f"teacher run {teacher.run_dir} did not finish ({state})",
            )
            outcome[run.run_dir] = "failed"
            display.finish(run, _finish_message(run, time.time()))
            return False
        if teacher.run_dir in attempted:  # this invocation ran it; it was interrupted
            outcome[run.run_dir] = "skipped"
            display.finish(
                run,
                f"  skipped  {run.label:<28} its teacher {teacher.label} did not finish "
                f"({state}); the same command resumes both",
            )
            return False
        # left unfinished by another (stopped) invocation, or not planned here: resume it first
        queue[:0] = [teacher, run]
        return False

    def submit(run: PlannedRun) -> None:
        slot = None
        if pool is not None:
            slot = pool.acquire()
            # the job's shell sets the variable before Python starts (public local API)
            executor.update_parameters(
                local_setup=[
                    IGNORE_TERMINAL_SIGNALS,
                    parent_setup_line(),
                    f"export CUDA_VISIBLE_DEVICES={slot}",
                ]
            )
        run.job = executor.submit(
            RunJob(),
            str(run.run_dir),
            str(data_root),
            device,
            str(weights_dir) if weights_dir else None,
            workers,
        )
        attempted[run.run_dir] = run
        active.append(_Active(run, time.time(), slot))

    def collect(stops: ForwardStops) -> None:
        """Record the jobs that ended; draw progress of the others."""
        for item in list(active):
            run = item.run
            if not (executor_name == "debug" or run.job.done()):
                if stops.signum is None:
                    display.poll(run, item.started)
                continue
            result = None
            # the worker writes its result (or exception) before it exits, and the job ends
            # after the worker: no result means it was killed (result() would wait 15 s)
            killed = local and not run.job.paths.result_pickle.exists()
            try:
                if killed:
                    raise RuntimeError("killed")
                result = run.job.result()
            except Exception as exc:  # noqa: BLE001 - recorded in the run's status.json
                if run.state in ("pending", "running") and not run_is_locked(run.run_dir):
                    log = results_dir / "submitit" / str(run.job.job_id)
                    if killed:
                        how = (
                            "killed by this run after a second Ctrl-C, or after not stopping "
                            f"within {STOP_GRACE_S:.0f} s"
                            if item.killed
                            else "killed: SIGKILL, out of memory, lost machine?"
                        )
                        write_status(
                            run.run_dir,
                            "interrupted",
                            error=f"the job's process ended without recording a status ({how}); "
                            f"the same command resumes it from its last checkpoint; job log: {log}",
                        )
                    else:  # raised outside the run's own recording (e.g. while unpickling)
                        lines = str(exc).strip().splitlines() or [type(exc).__name__]
                        write_status(run.run_dir, "failed", error=f"{lines[-1]} (job log: {log})")
            active.remove(item)
            if item.slot is not None:
                pool.release(item.slot)
            if isinstance(result, dict) and "run_locked" in result:
                outcome[run.run_dir] = HELD_ELSEWHERE
                if stops.signum is not None:
                    stopped[run.run_dir] = HELD_ELSEWHERE
                display.finish(
                    run,
                    f"  skipped  {run.label:<28} being run by another process"
                    f"{_holder(run.run_dir)}",
                )
                continue
            status = read_status(run.run_dir)
            outcome[run.run_dir] = status["state"]
            if status["state"] == "preempted" and status.get("signal") in FORWARDED_NAMES:
                # the job got Ctrl-C (or SIGTERM, SIGHUP) itself: in-process (debug), or from
                # the terminal's process group before this process did: stop the grid too
                stops.note(signal.Signals[status["signal"]])
            if stops.signum is None:
                display.finish(run, _finish_message(run, item.started))
                continue
            stopped[run.run_dir] = status["state"]  # was executing when the stop came
            if status["state"] in ("preempted", "interrupted"):
                display.finish(run, None)  # summed up by the Stopped message
            else:
                display.finish(run, _finish_message(run, item.started))

    def stop_jobs(stops: ForwardStops, signum: int) -> None:
        """Forward ``signum`` to the running local jobs until they exit (kill them after
        ``STOP_GRACE_S`` seconds or a second Ctrl-C)."""
        deadline = time.monotonic() + STOP_GRACE_S
        while active:
            now = time.monotonic()
            for item in active:
                if item.run.job.done():
                    continue
                if stops.kill_now or now > deadline:
                    kill_job(item.run.job.job_id)
                    item.killed = True
                elif now - item.signalled >= _RESEND_S:
                    signal_job(item.run.job.job_id, signum)
                    item.signalled = now
            collect(stops)
            if active:
                time.sleep(0.1)

    with ForwardStops() as stops:
        try:
            for stage in sorted({r.stage for r in todo}):
                queue = [r for r in todo if r.stage == stage]
                waiting: list[PlannedRun] = []
                while (queue or active or waiting) and stops.signum is None:
                    for run in [r for r in waiting if not teacher_busy(r)]:
                        waiting.remove(run)
                        queue.insert(0, run)
                    while (
                        queue
                        and stops.signum is None
                        and len(active) < max(1, max_parallel)
                        and (pool is None or pool.free)
                    ):
                        run = queue.pop(0)
                        if settle(run, queue, waiting):
                            submit(run)
                    collect(stops)
                    if (active or waiting) and stops.signum is None:
                        time.sleep(_POLL_S)
                if stops.signum is not None:
                    break
        except BaseException:
            if active and local:  # an unexpected error here: no worker may outlive the run
                stop_jobs(stops, signal.SIGTERM)
            raise
        finally:
            display.close()
        if stops.signum is not None:
            if local:
                stop_jobs(stops, stops.signum)
            counts: dict[str, int] = {}
            for state in stopped.values():
                counts[state] = counts.get(state, 0) + 1
            not_started = [
                r for r in todo if r.run_dir not in attempted and r.run_dir not in outcome
            ]
            raise Stopped(stops.signum, counts, len(not_started))
    counts = {}
    for run in [*todo, *(r for d, r in attempted.items() if d not in initial)]:
        state = outcome.get(run.run_dir, run.state)
        counts[state] = counts.get(state, 0) + 1
    return counts
