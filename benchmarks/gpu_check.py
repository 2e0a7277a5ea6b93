"""The short GPU check of issue 13, for one CUDA machine (a few minutes).

For ``mixit`` and ``surf_sr`` (beta = 0: the EMA flow teacher's 5-step solve) at ``paper``
network sizes (NCSN++ nf = 64, 15.8M parameters, B = 256, 32 x 32 images), it counts the
synchronising CUDA calls of one training step, and measures the training step time and the
model FLOPs utilisation (MFU) in three settings: fp32 with TF32
matmuls, ``train.autocast=bf16``, and bf16 with ``train.compile=default``; then the evaluation
throughput (separated mixtures per second, and the image metrics' mixtures per second on the
host). The images are random (the script needs no dataset: step time does not depend on the
pixels).

MFU = (FLOPs of one step, counted once with ``torch.utils.flop_counter`` on the eager fp32
step) / (step time x peak FLOP/s). The peak is taken from ``--peak-tflops`` or, for H100/H200,
989 TFLOP/s (dense bf16, SXM); fp32/TF32 rows are also compared with that bf16 peak, so the
columns are comparable.

Usage (prints a table; nothing is written)::

    python -m benchmarks.gpu_check [--quick] [--steps 10] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmark.config import TaskConfig, parse_overrides, resolve_config  # noqa: E402
from benchmark.registry import get_method  # noqa: E402
from tasks.base import Task  # noqa: E402
from tasks.images import ImageTask  # noqa: E402

KNOWN_PEAKS_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


class RandomImages(ImageTask):
    """The image task's sampling on a pool of random 1 x 32 x 32 images on the device."""

    name = "random_images"
    display_name = "random images"
    dataset = "none"

    def __init__(self, config: TaskConfig, device: torch.device, pool: int = 4096) -> None:
        Task.__init__(self, config, Path("."))
        gen = torch.Generator().manual_seed(0)
        self.images = torch.rand(pool, 1, 32, 32, generator=gen).to(device)
        self.device = device
        self._eval = None


def build(method: str, preset: str, overrides: list[str], device, teacher=None):
    cfg = resolve_config(method, "mnist", 0, preset, parse_overrides(overrides))
    cfg.task.eval_mixtures = cfg.eval.batch_size
    task = RandomImages(cfg.task, device)
    torch.manual_seed(0)
    obj = get_method(method)(cfg, task, device)
    obj.setup(teacher)
    obj.train_mode()
    return obj


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(method) -> float:
    """FLOPs of one training step (forward, backward, teacher passes), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator(device=method.device).manual_seed(123)
    counter = FlopCounterMode(display=False)
    with counter:
        method.train_step(0, gen)
    return float(counter.get_total_flops())


def count_syncs(method) -> int:
    """Synchronising CUDA calls in one training step (``torch.cuda.set_sync_debug_mode``);
    the optimizer's host-side step counters do not count (they live on the CPU)."""
    import warnings

    if method.device.type != "cuda":
        return -1
    gen = torch.Generator(device=method.device).manual_seed(7)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method.train_step(0, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_steps(method, steps: int, warmup: int) -> list[float]:
    gen = torch.Generator(device=method.device).manual_seed(1)
    for step in range(warmup):  # compilation happens here
        method.train_step(step, gen)
    sync(method.device)
    times = []
    for step in range(warmup, warmup + steps):
        begin = time.perf_counter()
        logs = method.train_step(step, gen)
        sync(method.device)
        times.append(time.perf_counter() - begin)
    assert math.isfinite(float(logs["loss"])), logs
    return times


def eval_throughput(method, reps: int) -> tuple[float, float]:
    """(separated mixtures per second on the device, scored mixtures per second on the host)."""
    from tasks.image_metrics import image_separation_scores

    method.eval_mode()
    data = method.task.eval_set()
    gen = torch.Generator(device=method.device).manual_seed(2)
    mixtures = data.mixtures.to(method.device)
    with torch.no_grad():
        method.separate(mixtures, gen)  # warm-up / compilation
        sync(method.device)
        begin = time.perf_counter()
        for _ in range(reps):
            estimates = method.separate(mixtures, gen)
        sync(method.device)
    separate_rate = reps * len(mixtures) / (time.perf_counter() - begin)
    begin = time.perf_counter()
    image_separation_scores(estimates.float().cpu().clamp(0, 1), data.sources.cpu())
    score_rate = len(mixtures) / (time.perf_counter() - begin)
    method.train_mode()
    return separate_rate, score_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke sizes, 2 steps (a dry run)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="peak bf16 TFLOP/s")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", default="mixit,surf_sr")
    parser.add_argument("--settings", default="tf32,bf16,bf16+compile")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu --quick for a dry run)", file=sys.stderr)
        return 2
    preset = "smoke" if args.quick else "paper"
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next(
        (v for k, v in KNOWN_PEAKS_TFLOPS.items() if k in name), float("nan")
    )
    torch.backends.cuda.matmul.allow_tf32 = True  # the paper-preset timings were TF32
    torch.backends.cudnn.allow_tf32 = True
    print(f"gpu check: {name}, torch {torch.__version__}, preset {preset}, peak {peak} TFLOP/s")
    settings = {
        "tf32": [],
        "bf16": ["train.autocast=bf16"],
        "bf16+compile": ["train.autocast=bf16", "train.compile=default"],
        # optional (--settings ...,bf16+cudagraphs): compiled with CUDA graphs, which also
        # covers the teacher's Euler solve (the EMA network)
        "bf16+cudagraphs": ["train.autocast=bf16", "train.compile=reduce-overhead"],
    }
    wanted = [s for s in args.settings.split(",") if s]
    teacher = None
    rows = []
    for method_name in [m for m in args.methods.split(",") if m]:
        extra = ["surf.beta=0"] if method_name.startswith("surf") else []
        if method_name.startswith("surf") and teacher is None:
            teacher = build("mixit", preset, [], device)
            teacher.eval_mode()
        flops = None
        for setting in wanted:
            begin = time.perf_counter()
            try:
                method = build(method_name, preset, [*extra, *settings[setting]], device, teacher)
                if flops is None:
                    flops = step_flops(method)
                    syncs = count_syncs(method)
                    print(f"{method_name}: {syncs} synchronising CUDA calls in one step (-1: CPU)")
                times = time_steps(method, steps, warmup)
                separate_rate, score_rate = eval_throughput(method, 1 if args.quick else 3)
            except Exception as exc:  # noqa: BLE001 - report the setting as failed, go on
                print(f"{method_name} {setting}: failed: {type(exc).__name__}: {exc}")
                continue
            step = statistics.median(times)
            mfu = flops / step / (peak * 1e12) if flops and math.isfinite(peak) else math.nan
            rows.append((method_name, setting, step, flops, mfu, separate_rate, score_rate))
            print(
                f"{method_name:8s} {setting:13s} step {step * 1e3:8.1f} ms (median of {steps}; "
                f"setup+warm-up {time.perf_counter() - begin - sum(times):.0f} s)  "
                f"{flops / 1e12:.2f} TFLOP/step  MFU {mfu:6.1%}  eval {separate_rate:8.0f} "
                f"mixtures/s  metrics {score_rate:6.0f} mixtures/s",
                flush=True,
            )
            del method
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for method_name in {r[0] for r in rows}:
        base = next((r for r in rows if r[0] == method_name and r[1] == "tf32"), None)
        for r in rows:
            if base and r[0] == method_name and r is not base:
                print(f"  ratio {method_name} step {r[1]}/tf32 = {r[2] / base[2]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
