"""The job every run executes (locally, in-process or on a cluster through submitit):
build task and method, train with periodic checkpoints (resuming from the last one), evaluate on
the fixed evaluation set, and write metrics, per-mixture scores and metadata to the run folder.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from benchmark import CODE_VERSION
from benchmark.config import RunConfig
from benchmark.demo import write_demo_estimates
from benchmark.perceptual_eval import needs_refresh, perceptual_stage
from benchmark.preempt import ParentWatch, Preempted, RunLocked, StopSignals, run_lock
from benchmark.registry import get_method, get_task
from benchmark.store import (
    METRICS_SCHEMA_VERSION,
    METRICS_SECTIONS,
    RunRecord,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    write_status,
)

__all__ = [
    "Diverged",
    "LearningCurve",
    "evaluation_outdated",
    "execute_run",
    "load_trained_method",
    "metrics_record",
    "pick_device",
]

if TYPE_CHECKING:
    from methods.base import Method
    from tasks.base import Task

log = logging.getLogger("benchmark")

#: seconds a job waits for its run's lock before deciding another process executes the run
LOCK_WAIT_S = 2.0


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "scikit-image", "submitit", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def load_config(run_dir: Path) -> RunConfig:
    """The :class:`RunConfig` stored in ``run_dir/config.json``.

    Raises:
        FileNotFoundError: no ``config.json`` (not a planned run).
        benchmark.store.CorruptStoreFile: it cannot be parsed.
    """
    return RunRecord(run_dir).config


def load_trained_method(
    run_dir: Path, data_root: Path, device: torch.device, task: Task | None = None
) -> Method:
    """Rebuild a finished run's method with its final weights (e.g. a MixIT teacher), with its
    own teacher loaded first (recursively), in eval mode.

    Args:
        run_dir: the finished run's folder.
        data_root: dataset root (to build the task when ``task`` is None).
        device: where the networks go.
        task: the task instance to reuse (same task as the run's), or None to build it.

    Raises:
        FileNotFoundError: the run has no ``model.pt`` (not finished).
    """
    record = RunRecord(run_dir)
    cfg = record.config
    if not record.model_path.is_file():
        raise FileNotFoundError(f"teacher run {record.path} has no final weights (model.pt)")
    task = task or get_task(cfg.task.name)(cfg.task, data_root).to(device)
    teacher = None
    if record.teacher is not None:
        teacher = load_trained_method(record.teacher.path, data_root, device, task)
    method = get_method(cfg.method)(cfg, task, device)
    method.setup(teacher)
    state = torch.load(record.model_path, map_location=device, weights_only=True)
    for name, module in method.modules().items():
        module.load_state_dict(state[name])
    method.eval_mode()
    return method


class _Progress:
    """tqdm bar when attached to a terminal; always a ``progress.json`` for the parent (the local
    ``run`` draws its bars from it), written at the first update, then at most once per
    ``interval`` seconds, and at the last step.

    Args:
        run_dir: the run folder.
        total: number of steps (iterations, or evaluation mixtures).
        start: the step it starts from (a resumed run's checkpoint step).
        desc: the bar's label.
        interval: seconds between writes (and bar refreshes).
    """

    def __init__(
        self, run_dir: Path, total: int, start: int, desc: str, interval: float = 1.0
    ) -> None:
        self.run_dir = run_dir
        self.total = total
        self.interval = interval
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)
        self.last_write: float | None = None

    def due(self, step: int) -> bool:
        """Whether :meth:`update` would write now (the first call, the last step, or
        ``interval`` seconds after the last write): lets callers skip computing what to show."""
        if self.last_write is None or step >= self.total:
            return True
        return time.monotonic() - self.last_write >= self.interval

    def update(self, step: int, phase: str, **info: Any) -> None:
        """Record ``step`` (and e.g. ``loss=``) when :meth:`due`; a no-op otherwise."""
        if not self.due(step):
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=True)
        atomic_write_json(
            self.run_dir / "progress.json",
            {"phase": phase, "step": step, "total": self.total, **info},
        )
        self.last_write = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LearningCurve:
    """Learning-curve points of a run (``eval.every``; issue "Results you can see").

    Every ``eval.every`` training steps (and at step 0 and the last step) the method separates
    the first ``eval.curve_mixtures`` mixtures of the fixed evaluation set, exactly as the final
    evaluation does (its networks in eval mode, sampling noise seeded with ``10_000 + seed``),
    and the task scores them with :meth:`tasks.base.Task.curve_scores`. The torch RNG states
    are restored afterwards and the time spent is left out of the training time, so a run with
    a curve trains exactly as one without. Points live in the training checkpoint, so a resumed
    run's curve has no gap and no duplicate, and are written to ``eval_curve.csv`` (``step``,
    ``train_time_s``, ``eval_time_s`` and one column per curve metric).

    Args:
        method: the method being trained.
        task: its task.
        cfg: the run's config (``eval.every``, ``eval.curve_mixtures``, ``eval.batch_size``).
        run_dir: where ``eval_curve.csv`` goes.
        points: points restored from a checkpoint.
    """

    def __init__(self, method, task, cfg: RunConfig, run_dir: Path, points=None) -> None:
        self.method, self.task, self.cfg, self.run_dir = method, task, cfg, run_dir
        self.every = int(cfg.eval.every)
        self.points: list[dict[str, float]] = list(points or [])

    @property
    def spent_s(self) -> float:
        """Seconds spent measuring the curve so far (its share of training time is reported)."""
        return float(sum(p["eval_time_s"] for p in self.points))

    def due(self, step: int) -> bool:
        """Whether step ``step`` (iterations done) gets a point."""
        if self.every <= 0 or any(p["step"] == step for p in self.points):
            return False
        return step % self.every == 0 or step == self.cfg.train.steps

    @torch.no_grad()
    def measure(self, step: int, train_time: float) -> float:
        """Record the point of step ``step``; returns the seconds it took."""
        started = time.time()
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        data = self.task.eval_set()
        count = min(self.cfg.eval.curve_mixtures, data.mixtures.shape[0])
        generator = torch.Generator(device=self.method.device).manual_seed(10_000 + self.cfg.seed)
        self.method.eval_mode()
        estimates = []
        for begin in range(0, count, self.cfg.eval.batch_size):
            end = min(count, begin + self.cfg.eval.batch_size)
            batch = data.mixtures[begin:end].to(self.method.device)
            estimates.append(self.method.separate(batch, generator).float().cpu())
        self.method.train_mode()
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        lengths = getattr(data, "lengths", None)
        values = self.task.curve_scores(
            torch.cat(estimates),
            data.sources[:count].cpu(),
            data.mixtures[:count].cpu(),
            lengths=None if lengths is None else lengths[:count].cpu(),
        )
        spent = time.time() - started
        self.points.append(
            {"step": step, "train_time_s": train_time, "eval_time_s": spent, **values}
        )
        self.points.sort(key=lambda p: p["step"])
        return spent

    def write(self) -> None:
        """Write ``eval_curve.csv`` (atomically)."""
        if self.points:
            atomic_write_csv(self.run_dir / "eval_curve.csv", pd.DataFrame(self.points))


def _checkpoint(
    path: Path,
    method,
    step: int,
    generator,
    curve,
    train_time: float,
    window=None,
    eval_curve: LearningCurve | None = None,
) -> None:
    state = {
        "step": step,
        "modules": {n: m.state_dict() for n, m in method.modules().items()},
        "optimizer": method.optimizer.state_dict() if method.optimizer else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "curve": curve,
        "extra": method.extra_state(),
        "train_time": train_time,
        # losses of the iterations since the last curve record (a checkpoint written on a stop
        # signal falls between records): restored so the resumed curve equals the uninterrupted
        "window": window or {},
        "eval_curve": list(eval_curve.points) if eval_curve is not None else [],
    }
    atomic_torch_save(path / "checkpoint.pt", state)
    if eval_curve is not None:
        eval_curve.write()


def _read_window(window: dict[str, list], done: int) -> None:
    """Read the logged values of the iterations since the last curve record to the host, in
    place (one transfer per key: ``train_step`` returns 0-d tensors so that a step never waits
    for the device), and raise :class:`Diverged` at the first non-finite loss. ``done`` is the
    number of iterations completed, the last of which is the window's last entry."""
    for values in window.values():
        where = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
        if where:
            host = torch.stack([values[i].detach().double().reshape(()) for i in where]).tolist()
            for i, value in zip(where, host, strict=True):
                values[i] = value
    losses = window.get("loss", [])
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} at step {done - len(losses) + i}")


def _train(
    method,
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    stop: StopSignals | None = None,
    task=None,
) -> tuple[list, float, LearningCurve]:
    steps = cfg.train.steps
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    curve: list[dict[str, float]] = []
    start, train_time = 0, 0.0
    window_state: dict[str, list[float]] = {}
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        for name, module in method.modules().items():
            module.load_state_dict(state["modules"][name])
        if method.optimizer is not None and state["optimizer"] is not None:
            method.optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        method.load_extra_state(state["extra"])
        start, curve, train_time = state["step"], state["curve"], state["train_time"]
        window_state = state.get("window") or {}
        eval_points = state.get("eval_curve") or []
        log.info("resumed from checkpoint at step %d/%d", start, steps)
    else:
        eval_points = []
    lc = LearningCurve(method, task or method.task, cfg, run_dir, eval_points)
    if start >= steps:
        return curve, train_time, lc
    progress = _Progress(run_dir, steps, start, f"{cfg.method} train")
    method.train_mode()
    window: dict[str, list[float]] = {k: list(v) for k, v in window_state.items()}
    # the loss shown by the progress bar: the last curve record's (read from the device only
    # at log_every); none before the first record
    shown = {"loss": curve[-1]["loss"]} if curve else {}
    # tests only: seconds to sleep after each iteration so a scheduler can catch the job
    # mid-training (changes no result)
    step_delay = float(os.environ.get("BENCHMARK_STEP_DELAY_S", "0") or 0)
    t0 = time.time()
    if stop is not None:
        stop.in_training = True
    try:
        if lc.due(start):  # the untrained (or restored) network: the curve's first point
            t0 += lc.measure(start, train_time)
        for step in range(start, steps):
            if cfg.train.warmup_steps > 0:
                scale = min(1.0, (step + 1) / cfg.train.warmup_steps)
                for group in method.optimizer.param_groups:
                    group["lr"] = cfg.train.lr * scale
            logs = method.train_step(step, generator)
            for key, value in logs.items():
                window.setdefault(key, []).append(value)
            done = step + 1
            if done % cfg.train.log_every == 0 or done == steps:
                _read_window(window, done)  # the only host read of the losses; NaN check
                record = {"step": done, **{k: sum(v) / len(v) for k, v in window.items()}}
                record["time"] = train_time + time.time() - t0
                curve.append(record)
                window = {}
                shown = {"loss": record["loss"]}
            # from the first iteration on, at most once a second (no extra host sync)
            progress.update(done, "train", **shown)
            if lc.due(done):  # left out of the training time
                t0 += lc.measure(done, train_time + time.time() - t0)
            if done % cfg.train.ckpt_every == 0 and done < steps:
                _read_window(window, done)  # never checkpoint diverged weights
                elapsed = train_time + time.time() - t0
                _checkpoint(run_dir, method, done, generator, curve, elapsed, eval_curve=lc)
                atomic_write_csv(run_dir / "curve.csv", pd.DataFrame(curve))
            if step_delay > 0:
                time.sleep(step_delay)
            if stop is not None and stop.requested is not None and done < steps:
                # a stop signal: checkpoint at this iteration boundary, then stop
                _read_window(window, done)
                elapsed = train_time + time.time() - t0
                _checkpoint(run_dir, method, done, generator, curve, elapsed, window, lc)
                atomic_write_csv(run_dir / "curve.csv", pd.DataFrame(curve))
                log.warning("stop signal: checkpoint written at step %d/%d", done, steps)
                raise Preempted(stop.requested, done)
    finally:
        if stop is not None:
            stop.in_training = False
        progress.close()
    train_time += time.time() - t0
    _checkpoint(run_dir, method, steps, generator, curve, train_time, eval_curve=lc)
    atomic_write_csv(run_dir / "curve.csv", pd.DataFrame(curve))
    return curve, train_time, lc


@torch.no_grad()
def evaluate(
    method, task, cfg: RunConfig, run_dir: Path | None = None, return_estimates: bool = False
):
    """Separate the fixed evaluation set and score it.

    The sampling noise of generative methods is seeded by the method seed, so evaluation is
    reproducible; the mixtures themselves depend only on the task seed.

    Returns:
        Per-mixture scores (see the task's ``score``); with ``return_estimates``, the pair
        ``(scores, estimates)`` with the ``(N, K, *D)`` estimates on the CPU.
    """
    method.eval_mode()
    data = task.eval_set()
    generator = torch.Generator(device=method.device).manual_seed(10_000 + cfg.seed)
    estimates = []
    total = data.mixtures.shape[0]
    progress = _Progress(run_dir, total, 0, f"{cfg.method} eval") if run_dir else None
    for begin in range(0, total, cfg.eval.batch_size):
        batch = data.mixtures[begin : begin + cfg.eval.batch_size].to(method.device)
        estimates.append(method.separate(batch, generator).float().cpu())
        if progress:
            progress.update(min(begin + cfg.eval.batch_size, total), "eval")
    if progress:
        progress.close()
    estimates_t = torch.cat(estimates)
    if getattr(data, "lengths", None) is not None:  # zero-padded variable-length audio
        scores = task.score(
            estimates_t, data.sources.cpu(), data.mixtures.cpu(), lengths=data.lengths.cpu()
        )
    else:
        scores = task.score(estimates_t, data.sources.cpu(), data.mixtures.cpu())
    return (scores, estimates_t) if return_estimates else scores


def metrics_record(
    task,
    scores: pd.DataFrame,
    timings: dict[str, float],
    training: dict[str, Any],
    extra: list[dict[str, dict[str, Any]]],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The ``metrics.json`` record of an evaluated run (schema version
    :data:`benchmark.store.METRICS_SCHEMA_VERSION`, sections
    :data:`benchmark.store.METRICS_SECTIONS`).

    Args:
        task: the task (its ``metrics`` are averaged over ``scores``; its ``summarize`` adds
            or replaces entries, e.g. FUSS's pooled scores).
        scores: per-mixture scores, one row per evaluation mixture.
        timings: seconds of each stage (``train_time_s``, ``eval_time_s``).
        training: ``final_loss``.
        extra: further sectioned entries (the perceptual stage's).
        provenance: git commit, versions, device, host, job id, wall time.

    Returns:
        ``{"schema_version": 2, "metrics": {name: mean}, "spread": {name: std over mixtures},
        "counts": {"n_mixtures": N, ...}, "timings", "training", "settings", "perceptual",
        "provenance"}``.
    """
    names = list(task.metrics)
    record: dict[str, Any] = {"schema_version": METRICS_SCHEMA_VERSION}
    record.update({section: {} for section in METRICS_SECTIONS})
    record["metrics"] = {m: float(scores[m].mean()) for m in names}
    record["spread"] = {m: float(scores[m].std()) for m in names}
    record["counts"] = {"n_mixtures": int(len(scores))}
    record["timings"] = dict(timings)
    record["training"] = dict(training)
    record["provenance"] = dict(provenance)
    for entries in [*extra, task.summarize(scores)]:
        for section, values in entries.items():
            if section not in METRICS_SECTIONS:
                raise ValueError(f"unknown metrics.json section {section!r}")
            if isinstance(values, dict) and section != "perceptual":
                record[section].update(values)
            else:
                record[section] = values
    return record


def evaluation_outdated(record: RunRecord, cfg: RunConfig, weights_dir=None) -> str:
    """Why a finished run must be evaluated again (from its final weights, no retraining), or
    ``""``: its perceptual metrics are missing, stale or now computable
    (:func:`benchmark.perceptual_eval.needs_refresh`), or the demo page's estimates
    (``demo.npz``, ``eval.demo_mixtures``) were never stored (evaluated by an older version).
    Reads only.

    Args:
        record: the finished run.
        cfg: its config as planned now.
        weights_dir: extra folder searched for perceptual weights (``--weights-dir``).
    """
    if needs_refresh(record, cfg, weights_dir):
        return "perceptual metrics missing, stale or now computable"
    if cfg.eval.demo_mixtures > 0 and "demo_mixtures" not in record.counts:
        # evaluated by a version that did not store them (a failed attempt records 0: the log
        # says why, and the same evaluation would fail again)
        return "the demo page's estimates were not stored"
    return ""


def _job_id() -> str:
    """The scheduler's id of this job (``ARRAY_TASK`` for SLURM array tasks), or ``""``."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or ""


def execute_run(
    run_dir: str,
    data_root: str,
    device: str = "auto",
    weights_dir: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one planned run; record everything in ``run_dir``.

    The run's status ends as ``done``, ``diverged`` (NaN/inf loss) or ``failed`` (any other
    exception raised by the run's code, with its traceback); ``preempted`` on a stop signal
    (SIGTERM, SIGINT, SIGHUP, SIGUSR1, submitit's timeout signal; see :mod:`benchmark.preempt`),
    after a checkpoint at the current iteration, with the signal's name in ``signal``;
    ``interrupted`` on a ``KeyboardInterrupt`` (only where the stop handlers cannot be installed,
    off the main thread). A job killed outright (``SIGKILL``, out of memory) records nothing
    itself; the runner then records it ``interrupted`` (:func:`benchmark.runner.execute_plan`).
    Exceptions are re-raised after being recorded so the executor sees the failure too.

    The run executes while holding its lock (:func:`benchmark.preempt.run_lock`).

    Args:
        run_dir: the run folder (holding ``config.json``) prepared by the runner.
        data_root: dataset root folder.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        weights_dir: extra folder searched for the perceptual metrics' pretrained weights
            (``--weights-dir``; the torch hub cache is always searched).
        workers: worker processes for CPU-bound metrics (``task.workers``; a runtime option,
            not part of the run's identity).

    Returns:
        The metrics dict also written to ``metrics.json``.

    Raises:
        RunLocked: another process is executing this run (its status is left untouched).
    """
    path = Path(run_dir)
    lock = run_lock(path)
    try:
        # a short wait, not none: another invocation probing the lock (run_is_locked) holds it
        # for microseconds, an executing job for the whole run
        lock.acquire(timeout=LOCK_WAIT_S)
    except TimeoutError:
        raise RunLocked(
            f"run {path} is already being executed by another process (lock {lock.lock_file})"
        ) from None
    try:
        # a local job also stops when the `run` process that started it is killed outright
        with StopSignals() as stop, ParentWatch():
            return _execute_locked(path, data_root, device, stop, weights_dir, workers)
    finally:
        lock.release()


def _execute_locked(
    path: Path,
    data_root: str,
    device: str,
    stop: StopSignals,
    weights_dir: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    handler = _setup_logging(path)
    job_id = _job_id()
    started = time.time()
    try:
        dev = pick_device(device)
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        record = RunRecord(path)
        cfg = record.config
        if (
            record.state == "done"
            and record.metrics_record is not None
            and not evaluation_outdated(record, cfg, weights_dir)
        ):
            # finished by another invocation while this job waited to start: nothing to redo
            log.info("run %s is already done; nothing recomputed", path.name)
            return record.metrics_record
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        write_status(
            path, "running", job_id=job_id, pid=os.getpid(), host=platform.node(), gpus=gpus
        )
        stop.check()  # stopped while the job was starting
        torch.manual_seed(cfg.seed)
        log.info(
            "run %s: %s on %s, seed %d, preset %s, device %s",
            path.name,
            cfg.method,
            cfg.task.name,
            cfg.seed,
            cfg.preset,
            _device_name(dev),
        )
        task = get_task(cfg.task.name)(cfg.task, Path(data_root)).to(dev)
        task.workers = max(1, int(workers))
        method_cls = get_method(cfg.method)
        teacher = None
        ready, reason = record.teacher_ready()
        if not ready:
            raise RuntimeError(reason)
        if record.teacher is not None:
            teacher = load_trained_method(record.teacher.path, Path(data_root), dev, task)
        method = method_cls(cfg, task, dev)
        method.setup(teacher)
        curve, train_time, curve_eval_s = [], 0.0, 0.0
        if not method_cls.reference_only and cfg.train.steps > 0:
            curve, train_time, learning_curve = _train(method, cfg, path, dev, stop, task)
            curve_eval_s = learning_curve.spent_s
            atomic_torch_save(
                path / "model.pt", {n: m.state_dict() for n, m in method.modules().items()}
            )
            if stop.requested is not None:  # signalled during the last iteration
                raise Preempted(stop.requested, cfg.train.steps)
        t_eval = time.time()
        scores, estimates = evaluate(method, task, cfg, path, return_estimates=True)
        eval_time = time.time() - t_eval
        perceptual = perceptual_stage(method, task, cfg, estimates, scores, dev, weights_dir)
        # the scored estimates of the first eval.demo_mixtures mixtures, for the demo page
        demo = write_demo_estimates(path, task, cfg, scores, estimates)
        demo_count = min(cfg.eval.demo_mixtures, len(scores)) if demo is not None else 0
        del estimates
        atomic_write_parquet(path / "scores.parquet", scores)
        provenance = {
            "git_commit": _git_commit(),
            "code_version": CODE_VERSION,
            "versions": _versions(),
            "device": _device_name(dev),
            "host": platform.node(),
            "wall_time_s": time.time() - started,
            "job_id": job_id,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        metrics = metrics_record(
            task,
            scores,
            timings={
                "train_time_s": train_time,
                "eval_time_s": eval_time,
                # learning-curve points (eval.every), measured during training, not in train_time
                "curve_eval_time_s": curve_eval_s,
            },
            training={"final_loss": curve[-1]["loss"] if curve else None},
            extra=[perceptual, {"counts": {"demo_mixtures": demo_count}}],
            provenance=provenance,
        )
        atomic_write_json(path / "metrics.json", metrics)
        write_status(path, "done", job_id=job_id, wall_time_s=time.time() - started)
        log.info("done: %s", {m: round(metrics["metrics"][m], 4) for m in task.metrics})
        return metrics
    except Diverged as exc:
        write_status(path, "diverged", job_id=job_id, error=str(exc))
        log.error("diverged: %s", exc)
        raise
    except KeyboardInterrupt:
        write_status(path, "interrupted", job_id=job_id, error="interrupted (Ctrl-C)")
        raise
    except Preempted as exc:
        signame = signal.Signals(exc.signum).name
        write_status(
            path, "preempted", job_id=job_id, error=str(exc), step=exc.step, signal=signame
        )
        log.warning("%s; the requeued job resumes from the checkpoint", exc)
        stop.hand_over(exc.signum)  # submitit's timeout signal: requeue and exit
        raise
    except BaseException as exc:
        tb = traceback.format_exc()
        write_status(
            path, "failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}", traceback=tb
        )
        log.error("failed:\n%s", tb)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
