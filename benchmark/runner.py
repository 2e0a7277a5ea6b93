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

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, config_hash, resolve_config, to_dict
from benchmark.perceptual_eval import needs_refresh
from benchmark.preempt import RunJob, run_is_locked
from benchmark.registry import get_method, get_task, plugin_modules
from benchmark.store import (
    RunRecord,
    atomic_write_json,
    read_json,
    read_status,
    run_dir_for,
    write_status,
)

__all__ = ["PlannedRun", "execute_plan", "plan_runs", "prepare_runs"]

EXECUTORS = ("local", "debug")


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
    ``retry_failed``; everything else (new, pending, running-but-dead, interrupted) is executed
    and resumes from its checkpoint when it has one. A finished image run whose perceptual
    metrics are missing, stale or now computable (weights placed since) is re-evaluated
    without retraining (``benchmark.perceptual_eval.needs_refresh``).

    Returns:
        The runs to execute, in stage order.
    """
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
            if not needs_refresh(RunRecord(run.run_dir), run.config, weights_dir):
                continue
            # re-evaluate (no retraining) with the perceptual settings planned now
            info = read_json(run.run_dir / "config.json")
            info["config"]["perceptual"] = to_dict(run.config.perceptual)
            atomic_write_json(run.run_dir / "config.json", info)
        if state in ("failed", "diverged") and not retry_failed:
            continue
        if run_is_locked(run.run_dir):  # being executed by another invocation right now
            continue
        if state in ("absent", "failed", "diverged"):
            write_status(run.run_dir, "pending")
        todo.append(run)
    return todo


def _make_executor(name: str, results_dir: Path, timeout_min: int):
    import submitit

    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    executor = submitit.AutoExecutor(folder=results_dir / "submitit" / "%j", cluster=name)
    if name == "local":
        executor.update_parameters(timeout_min=timeout_min)
    return executor


class _Display:
    """Progress of running jobs: tqdm bars on a terminal, one line per event otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bars: dict[Path, Any] = {}

    def poll(self, run: PlannedRun) -> None:
        if not self.tty:
            return
        from tqdm import tqdm

        progress = read_json(run.run_dir / "progress.json")
        if not progress:
            return
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

    def finish(self, run: PlannedRun, message: str) -> None:
        bar = self.bars.pop(run.run_dir, None)
        if bar is not None:
            bar.close()
        print(message, flush=True)


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
    """Run the planned runs stage by stage through submitit; one failure never stops the rest
    (runs whose teacher did not finish are marked failed with that reason).

    With ``gpu_slots`` (local executor), every running job gets its own GPU from the pool
    (:class:`benchmark.slots.GpuSlots`, ``CUDA_VISIBLE_DEVICES=<index>``).

    Returns:
        Count of final states, e.g. ``{"done": 5, "failed": 1}``.
    """
    from benchmark.slots import GpuSlots

    executor = _make_executor(executor_name, results_dir, timeout_min)
    pool = GpuSlots(gpu_slots) if gpu_slots and executor_name == "local" else None
    slot_of: dict[Path, int] = {}
    display = _Display()
    for stage in sorted({r.stage for r in todo}):
        queue = [r for r in todo if r.stage == stage]
        active: list[tuple[PlannedRun, float]] = []
        while queue or active:
            while queue and len(active) < max(1, max_parallel) and (pool is None or pool.free):
                run = queue.pop(0)
                if run.teacher is not None and run.teacher.state != "done":
                    write_status(
                        run.run_dir,
                        "failed",
                        error=f"teacher run {run.teacher.run_dir} did not finish "
                        f"({run.teacher.state})",
                    )
                    display.finish(run, _finish_message(run, time.time()))
                    continue
                if pool is not None:
                    slot_of[run.run_dir] = slot = pool.acquire()
                    # the job's shell sets the variable before Python starts (public local API)
                    executor.update_parameters(local_setup=[f"export CUDA_VISIBLE_DEVICES={slot}"])
                run.job = executor.submit(
                    RunJob(),
                    str(run.run_dir),
                    str(data_root),
                    device,
                    str(weights_dir) if weights_dir else None,
                    workers,
                )
                active.append((run, time.time()))
            for run, started in list(active):
                if executor_name == "debug" or run.job.done():
                    try:
                        run.job.result()
                    except Exception:  # noqa: BLE001 - recorded in the run's status.json
                        if run.state in ("pending", "running") and not run_is_locked(run.run_dir):
                            write_status(
                                run.run_dir,
                                "failed",
                                error="job died without recording a status; see "
                                f"{results_dir / 'submitit'}",
                            )
                    active.remove((run, started))
                    if run.run_dir in slot_of:
                        pool.release(slot_of.pop(run.run_dir))
                    display.finish(run, _finish_message(run, started))
                else:
                    display.poll(run)
            if active:
                time.sleep(0.5)
    counts: dict[str, int] = {}
    for run in todo:
        counts[run.state] = counts.get(run.state, 0) + 1
    return counts
