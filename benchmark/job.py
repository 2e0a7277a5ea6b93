"""The job every run executes (locally, in-process or on a cluster through submitit):
build task and method, train with periodic checkpoints (resuming from the last one), evaluate on
the fixed evaluation set, and write metrics, per-mixture scores and metadata to the run folder.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmark import CODE_VERSION
from benchmark.config import RunConfig, from_dict
from benchmark.perceptual_eval import perceptual_stage
from benchmark.preempt import Preempted, RunLocked, StopSignals, run_lock
from benchmark.registry import get_method, get_task
from benchmark.store import (
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    read_json,
    write_status,
)

__all__ = ["Diverged", "execute_run", "load_trained_method", "pick_device"]

log = logging.getLogger("benchmark")


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
    """The :class:`RunConfig` stored in ``run_dir/config.json``."""
    data = read_json(Path(run_dir) / "config.json")
    if data is None:
        raise FileNotFoundError(f"no config.json in {run_dir}")
    return from_dict(data["config"])


def load_trained_method(run_dir: Path, data_root: Path, device: torch.device, task=None):
    """Rebuild a finished run's method with its final weights (e.g. a MixIT teacher).

    Raises:
        FileNotFoundError: the run has no ``model.pt`` (not finished).
    """
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"teacher run {run_dir} has no final weights (model.pt)")
    task = task or get_task(cfg.task.name)(cfg.task, data_root).to(device)
    teacher = None
    info = read_json(run_dir / "config.json")
    if info.get("teacher_dir"):
        teacher = load_trained_method(Path(info["teacher_dir"]), data_root, device, task)
    method = get_method(cfg.method)(cfg, task, device)
    method.setup(teacher)
    state = torch.load(weights, map_location=device, weights_only=True)
    for name, module in method.modules().items():
        module.load_state_dict(state[name])
    method.eval_mode()
    return method


class _Progress:
    """tqdm bar when attached to a terminal; always a ``progress.json`` for the parent."""

    def __init__(self, run_dir: Path, total: int, start: int, desc: str) -> None:
        self.run_dir = run_dir
        self.total = total
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)
        self.last_write = 0.0

    def update(self, step: int, phase: str, **info: Any) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=True)
        now = time.time()
        if now - self.last_write > 1.0 or step >= self.total:
            atomic_write_json(
                self.run_dir / "progress.json",
                {"phase": phase, "step": step, "total": self.total, **info},
            )
            self.last_write = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _checkpoint(
    path: Path, method, step: int, generator, curve, train_time: float, window=None
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
    }
    atomic_torch_save(path / "checkpoint.pt", state)


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
    method, cfg: RunConfig, run_dir: Path, device: torch.device, stop: StopSignals | None = None
) -> tuple[list, float]:
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
        log.info("resumed from checkpoint at step %d/%d", start, steps)
    if start >= steps:
        return curve, train_time
    progress = _Progress(run_dir, steps, start, f"{cfg.method} train")
    method.train_mode()
    window: dict[str, list[float]] = {k: list(v) for k, v in window_state.items()}
    # tests only: seconds to sleep after each iteration so a scheduler can catch the job
    # mid-training (changes no result)
    step_delay = float(os.environ.get("BENCHMARK_STEP_DELAY_S", "0") or 0)
    t0 = time.time()
    if stop is not None:
        stop.in_training = True
    try:
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
                progress.update(done, "train", loss=record["loss"])
            if done % cfg.train.ckpt_every == 0 and done < steps:
                _read_window(window, done)  # never checkpoint diverged weights
                _checkpoint(run_dir, method, done, generator, curve, train_time + time.time() - t0)
                atomic_write_csv(run_dir / "curve.csv", pd.DataFrame(curve))
            if step_delay > 0:
                time.sleep(step_delay)
            if stop is not None and stop.requested is not None and done < steps:
                # a stop signal: checkpoint at this iteration boundary, then stop
                _read_window(window, done)
                elapsed = train_time + time.time() - t0
                _checkpoint(run_dir, method, done, generator, curve, elapsed, window)
                atomic_write_csv(run_dir / "curve.csv", pd.DataFrame(curve))
                log.warning("stop signal: checkpoint written at step %d/%d", done, steps)
                raise Preempted(stop.requested, done)
    finally:
        if stop is not None:
            stop.in_training = False
        progress.close()
    train_time += time.time() - t0
    _checkpoint(run_dir, method, steps, generator, curve, train_time)
    atomic_write_csv(run_dir / "curve.csv", pd.DataFrame(curve))
    return curve, train_time


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
    exception, with its traceback); ``interrupted`` on Ctrl-C; ``preempted`` on a stop signal
    (SIGTERM, SIGUSR1, submitit's timeout signal; see :mod:`benchmark.preempt`), after a
    checkpoint at the current iteration. Exceptions are re-raised after being recorded so the
    executor sees the failure too.

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
        lock.acquire(timeout=0)
    except TimeoutError:
        raise RunLocked(
            f"run {path} is already being executed by another process (lock {lock.lock_file})"
        ) from None
    try:
        with StopSignals() as stop:
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
        info = read_json(path / "config.json")
        cfg = from_dict(info["config"])
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        write_status(
            path, "running", job_id=job_id, pid=os.getpid(), host=platform.node(), gpus=gpus
        )
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
        if info.get("teacher_dir"):
            teacher_state = read_json(Path(info["teacher_dir"]) / "status.json", {})
            if teacher_state.get("state") != "done":
                raise RuntimeError(
                    f"teacher run {info['teacher_dir']} did not finish "
                    f"({teacher_state.get('state', 'absent')})"
                )
            teacher = load_trained_method(Path(info["teacher_dir"]), Path(data_root), dev, task)
        method = method_cls(cfg, task, dev)
        method.setup(teacher)
        curve, train_time = [], 0.0
        if not method_cls.reference_only and cfg.train.steps > 0:
            curve, train_time = _train(method, cfg, path, dev, stop)
            atomic_torch_save(
                path / "model.pt", {n: m.state_dict() for n, m in method.modules().items()}
            )
            if stop.requested is not None:  # signalled during the last iteration
                raise Preempted(stop.requested, cfg.train.steps)
        t_eval = time.time()
        scores, estimates = evaluate(method, task, cfg, path, return_estimates=True)
        eval_time = time.time() - t_eval
        perceptual = perceptual_stage(method, task, cfg, estimates, scores, dev, weights_dir)
        del estimates
        atomic_write_parquet(path / "scores.parquet", scores)
        metric_names = list(task.metrics)
        metrics: dict[str, Any] = {m: float(scores[m].mean()) for m in metric_names}
        metrics.update({f"{m}_std_over_mixtures": float(scores[m].std()) for m in metric_names})
        metrics.update(
            n_mixtures=int(len(scores)),
            train_time_s=train_time,
            eval_time_s=eval_time,
            final_loss=curve[-1]["loss"] if curve else None,
        )
        metrics.update(perceptual)
        metrics.update(task.summarize(scores))
        atomic_write_json(path / "metrics.json", metrics)
        atomic_write_json(
            path / "meta.json",
            {
                "git_commit": _git_commit(),
                "code_version": CODE_VERSION,
                "versions": _versions(),
                "device": _device_name(dev),
                "host": platform.node(),
                "wall_time_s": time.time() - started,
                "job_id": job_id,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            },
        )
        write_status(path, "done", job_id=job_id, wall_time_s=time.time() - started)
        log.info("done: %s", {m: round(metrics[m], 4) for m in metric_names})
        return metrics
    except Diverged as exc:
        write_status(path, "diverged", job_id=job_id, error=str(exc))
        log.error("diverged: %s", exc)
        raise
    except KeyboardInterrupt:
        write_status(path, "interrupted", job_id=job_id, error="interrupted (Ctrl-C)")
        raise
    except Preempted as exc:
        write_status(path, "preempted", job_id=job_id, error=str(exc), step=exc.step)
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
