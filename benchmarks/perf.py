"""Performance suite of issue 13: ratios measured side by side in one process, interleaved.

Every comparison runs its variants in alternating order, repetition after repetition, and
reports the median time of each and the median of the paired ratios (variant / reference of
the same repetition), so that the load of a shared machine hits both sides alike. These are
benchmarks, not tests: nothing here asserts a time.

Sections (``--sections``, default all):

- ``harness``: the harness's training step (``Method.train_step`` plus the training loop's
  per-step work) against a plain PyTorch loop doing the same computation, for ``mixit`` and
  ``surf_sr`` on MNIST at ``--preset`` sizes (the raw loop's first loss is checked equal).
- ``mixit``: exhaustive MixIT against asteroid's ``MixITLossWrapper`` at M = 4 and 8 (same
  inputs, same best loss), and exhaustive against efficient MixIT (agreement, loss gap, time) at
  M = 4, 8, 16, on MNIST images and 1 s of FSDD audio, forward and backward.
- ``pit``: ``methods.pit.pit_loss`` against asteroid's ``PITLossWrapper(pit_from="pw_mtx")`` at
  K = 2, 3, 4 on 1 s of audio, forward and backward.
- ``metrics``: image metrics (PSNR/SSIM with the best permutation) of 500 MNIST mixtures.
- ``audio_workers``: 2 workers against 1 for PESQ + ESTOI (+ SI-SDR) of 200 FSDD2Mix items,
  first (cold) call and warm calls.
- ``surf``: the SURF (SR-FM) step at beta = 1 and beta = 0 split into the teacher solve, the PIT
  pass and the student step, and the losses of the first steps of a fixed seed.

``--baseline REV`` also loads ``methods/{losses,pit,mixit_assignment}.py`` and
``tasks/{image,audio}_metrics.py`` of git revision ``REV`` and times them beside the current
ones (ratios current / baseline). asteroid is optional (``pip install --no-deps asteroid``); its
two wrapper modules are loaded from their files, because ``asteroid.losses`` imports
``asteroid_filterbanks``, which ``--no-deps`` does not install. The suite works with the code
before and after issue 13 (argument orders are detected), so that the same file measures both.

Usage::

    BENCHMARK_DATA_ROOT=/path/to/data python -m benchmarks.perf [--quick] [--baseline REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
#: the git checkout for ``--baseline`` and the commit line (``$PERF_GIT_ROOT``, for a copy of
#: the tree measured outside its checkout)
GIT_ROOT = Path(os.environ.get("PERF_GIT_ROOT") or ROOT)
SECTIONS = ("harness", "mixit", "pit", "metrics", "audio_workers", "surf")


def say(line: str = "") -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


class Timer:
    """Interleaved repetitions of named variants (synchronising CUDA around each call)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], Any]) -> float:
        self._sync()
        begin = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - begin

    def interleave(
        self, variants: dict[str, Callable[[], Any]], reps: int, warmup: int = 1
    ) -> dict[str, list[float]]:
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for rep in range(reps):
            for name in names if rep % 2 == 0 else reversed(names):
                times[name].append(self.once(variants[name]))
        return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return median([a / b for a, b in zip(times[num], times[den], strict=True) if b > 0])


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def report(label: str, times: dict[str, list[float]], ratios: list[tuple[str, str]]) -> None:
    medians = ", ".join(f"{name} {fmt_s(median(t))}" for name, t in times.items())
    reps = len(next(iter(times.values())))
    say(f"{label}: median of {reps}: {medians}")
    for num, den in ratios:
        if num in times and den in times:
            say(f"  ratio {label} {num}/{den} = {paired_ratio(times, num, den):.3f}")


# --------------------------------------------------------------------------------------------
# the code under test (current, or a git revision), with either argument order
# --------------------------------------------------------------------------------------------


def estimates_first(fn: Callable[..., Any]) -> bool:
    """True for the issue-13 convention ``f(estimates, references, ...)``."""
    return next(iter(inspect.signature(fn).parameters)).startswith("estimate")


class Impl:
    """One version of the losses, PIT and MixIT modules, called in its own argument order."""

    def __init__(self, label: str, losses, pit, mixit, image_metrics, audio_metrics) -> None:
        self.label = label
        self.losses = losses
        self.pit = pit
        self.mixit_module = mixit
        self.image_metrics = image_metrics
        self.audio_metrics = audio_metrics

    def snr(self):
        return self.losses.signal_loss("snr", 30.0)

    def mixit(self, estimates, references, loss_fn, assignment="exhaustive"):
        fn = self.mixit_module.mixit_loss
        if estimates_first(fn):
            return fn(estimates, references, loss_fn, assignment)
        return fn(references, estimates, loss_fn, assignment)

    def pit_loss(self, estimates, references, loss_fn):
        fn = self.pit.pit_loss
        if estimates_first(fn):
            return fn(estimates, references, loss_fn)
        return fn(references, estimates, loss_fn)

    def gram_based(self) -> bool:
        return hasattr(self.mixit_module, "exhaustive_assignment")


def current_impl() -> Impl:
    from methods import losses, mixit_assignment, pit
    from tasks import audio_metrics, image_metrics

    return Impl("current", losses, pit, mixit_assignment, image_metrics, audio_metrics)


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def baseline_impl(rev: str) -> Impl:
    """The five modules as of git revision ``rev`` (each imports only torch/numpy/skimage and,
    for the image metrics, ``methods.pit.all_permutations``), importable by worker processes
    as ``baseline_<name>`` (their folder is put on ``sys.path``)."""
    folder = Path(tempfile.mkdtemp(prefix="perf_baseline_"))
    sys.path.insert(0, str(folder))
    mods = {}
    for key, rel in {
        "losses": "methods/losses.py",
        "pit": "methods/pit.py",
        "mixit": "methods/mixit_assignment.py",
        "image_metrics": "tasks/image_metrics.py",
        "audio_metrics": "tasks/audio_metrics.py",
    }.items():
        text = subprocess.run(
            ["git", "-C", str(GIT_ROOT), "show", f"{rev}:{rel}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = folder / f"baseline_{key}.py"
        path.write_text(text)
        mods[key] = _load_file(f"baseline_{key}", path)
    return Impl(
        f"baseline {rev}",
        mods["losses"],
        mods["pit"],
        mods["mixit"],
        mods["image_metrics"],
        mods["audio_metrics"],
    )


def load_asteroid() -> tuple[Any, Any] | None:
    """asteroid's ``PITLossWrapper`` and ``MixITLossWrapper`` from their files, or None."""
    spec = importlib.util.find_spec("asteroid")  # does not execute asteroid/__init__.py
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "losses"
    try:
        pit = _load_file("asteroid_pit_wrapper", folder / "pit_wrapper.py")
        mixit = _load_file("asteroid_mixit_wrapper", folder / "mixit_wrapper.py")
    except (ImportError, FileNotFoundError) as exc:
        say(f"asteroid: not usable ({exc})")
        return None
    return pit.PITLossWrapper, mixit.MixITLossWrapper


def snr_loss(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Negative thresholded SNR (sparse MixIT eq. 2, 30 dB), ``(B, N, T) -> (B, N)``, written
    out here for asteroid's wrappers (their losses take ``(estimates, targets)``)."""
    tau = 1e-3
    ref = references.pow(2).sum(-1)
    err = (references - estimates).pow(2).sum(-1)
    return -10.0 * torch.log10((ref + 1e-8) / (err + tau * ref + 1e-8))


def pairwise_snr(estimates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """asteroid ``pw_mtx`` convention: ``[b, i, j]`` = loss of target i against estimate j."""
    batch, num, length = estimates.shape
    shape = (batch, num, num, length)
    est = estimates[:, None].expand(shape).reshape(batch, num * num, length)
    tgt = targets[:, :, None].expand(shape).reshape(batch, num * num, length)
    return snr_loss(est, tgt).reshape(batch, num, num)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def data_root() -> Path | None:
    root = os.environ.get("BENCHMARK_DATA_ROOT")
    return Path(root) if root else None


def image_pool(count: int) -> tuple[torch.Tensor, str]:
    """``(count, 1024)`` MNIST test images (32 x 32), or uniform noise without data."""
    root = data_root()
    if root is not None:
        try:
            from tasks.images import load_images

            return load_images("mnist", str(root))[:count].flatten(1).clone(), "MNIST"
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to noise, and say so
            say(f"(no MNIST: {exc})")
    return torch.rand(count, 1024, generator=torch.Generator().manual_seed(0)), "random"


def audio_pool(count: int, length: int = 8000) -> tuple[torch.Tensor, str]:
    """``(count, length)`` standardised FSDD test utterances (1 s at 8 kHz), or noise."""
    root = data_root()
    if root is not None:
        try:
            from tasks.audio import load_fsdd

            audio = load_fsdd(str(root), 8000)["test"][0][:count, :length]
            return audio.clone(), "FSDD"
        except Exception as exc:  # noqa: BLE001
            say(f"(no FSDD: {exc})")
    return torch.randn(count, length, generator=torch.Generator().manual_seed(0)), "random"


def mixit_inputs(
    pool: torch.Tensor, batch: int, num_outputs: int, leak: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A MixIT batch: two reference mixtures of two sources each and M mixture-consistent
    outputs. Each source goes mostly to one output (softmax weights over the outputs with
    logits ``5 z``, so some sources are split and, for M > 4, some outputs nearly empty), and a
    fraction ``leak`` of it is spread over all outputs (0: well separated).

    Returns:
        ``(estimates (B, M, D), references (B, 2, D))``, float32.
    """
    gen = torch.Generator().manual_seed(seed)
    sources = pool[torch.randint(len(pool), (batch, 4), generator=gen)].double()  # (B, S, D)
    references = sources.reshape(batch, 2, 2, -1).sum(2)
    weights = torch.softmax(5.0 * torch.randn(batch, num_outputs, 4, generator=gen), 1).double()
    weights = (1 - leak) * weights + leak / num_outputs  # columns still sum to one
    estimates = torch.einsum("bms,bsd->bmd", weights, sources)
    return estimates.float(), references.float()


def pit_inputs(
    pool: torch.Tensor, batch: int, num: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K sources and K shuffled, partly separated estimates, ``(B, K, T)`` each."""
    gen = torch.Generator().manual_seed(seed)
    sources = pool[torch.randint(len(pool), (batch, num), generator=gen)]
    mixing = 0.7 * torch.eye(num) + 0.3 / num
    estimates = torch.einsum("kj,bjt->bkt", mixing, sources)
    order = torch.stack([torch.randperm(num, generator=gen) for _ in range(batch)])
    estimates = estimates.gather(1, order[:, :, None].expand_as(estimates))
    return estimates + 0.05 * torch.randn(estimates.shape, generator=gen), sources


def available_bytes() -> int:
    """Free host memory in bytes (the MixIT memory check's own reading)."""
    from methods.mixit_assignment import available_memory

    return available_memory("cpu")


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def section_mixit(args, impls: list[Impl], asteroid) -> None:
    say("== MixIT: exhaustive (ours) vs asteroid MixITLossWrapper; exhaustive vs efficient ==")
    cur = impls[0]
    batch = 4 if args.quick else 32
    pools = {"images": image_pool(2000), "audio": audio_pool(1000)}
    grid = [4] if args.quick else [4, 8, 16]
    for kind, (pool, source) in pools.items():
        if args.quick:
            pool = pool[:, :256]
        for num_outputs in grid:
            label = f"mixit {kind} ({source}, D={pool.shape[1]}) B={batch} M={num_outputs}"
            est, refs = mixit_inputs(pool, batch, num_outputs, 0.1, seed=num_outputs)
            variants: dict[str, Callable[[], Any]] = {}

            def run(impl: Impl, assignment: str, est=est, refs=refs) -> torch.Tensor:
                leaf = est.clone().requires_grad_(True)
                loss, _ = impl.mixit(leaf, refs, impl.snr(), assignment)
                loss.sum().backward()
                return loss.detach()

            for impl in impls:
                need = batch * 2**num_outputs * 2 * pool.shape[1] * 4 * 3
                if not impl.gram_based() and need > available_bytes() // 4:
                    say(
                        f"{label}: {impl.label} exhaustive skipped: its (B, 2^M, N, D) search "
                        f"needs about {need / 2**30:.0f} GiB"
                    )
                    continue
                name = "exhaustive" if impl is cur else "exhaustive_baseline"
                variants[name] = lambda impl=impl: run(impl, "exhaustive")
            variants["efficient"] = lambda: run(cur, "efficient")
            if asteroid is not None and num_outputs <= 8:
                wrapper = asteroid[1](
                    lambda e, t: snr_loss(e, t).sum(-1), generalized=True, reduction="none"
                )

                def run_asteroid(wrapper=wrapper, est=est, refs=refs) -> torch.Tensor:
                    leaf = est.clone().requires_grad_(True)
                    loss = wrapper(leaf, refs)
                    loss.sum().backward()
                    return loss.detach().reshape(-1)

                variants["asteroid"] = run_asteroid
            values = {name: fn() for name, fn in variants.items()}
            if "exhaustive" in values and "asteroid" in values:
                gap = (values["exhaustive"] - values["asteroid"]).abs().max().item()
                scale = values["asteroid"].abs().max().item()
                say(f"{label}: best loss ours vs asteroid: max |diff| {gap:.2e} (max {scale:.1f})")
            if "exhaustive" in values:
                for leak in (0.05, 0.3):
                    e2, r2 = mixit_inputs(pool, batch, num_outputs, leak, seed=100 + num_outputs)
                    with torch.no_grad():
                        exh, _ = cur.mixit(e2, r2, cur.snr(), "exhaustive")
                        eff, _ = cur.mixit(e2, r2, cur.snr(), "efficient")
                    same = torch.isclose(eff, exh, rtol=1e-5, atol=1e-4).float().mean().item()
                    gap = eff - exh
                    say(
                        f"{label} leak={leak}: efficient = exhaustive loss in {same:.0%} of "
                        f"items; gap mean {gap.mean().item():.2f} dB, max "
                        f"{gap.max().item():.2f} dB (min gap {gap.min().item():.1e})"
                    )
            reps = 1 if args.quick else args.reps
            times = Timer(torch.device("cpu")).interleave(variants, reps)
            report(
                label,
                times,
                [
                    ("exhaustive", "asteroid"),
                    ("exhaustive", "efficient"),
                    ("exhaustive_baseline", "exhaustive"),
                ],
            )


def section_pit(args, impls: list[Impl], asteroid) -> None:
    say("== PIT: pit_loss (ours) vs asteroid PITLossWrapper(pit_from='pw_mtx'), fwd + bwd ==")
    pool, source = audio_pool(1000)
    batch = 4 if args.quick else 32
    if args.quick:
        pool = pool[:, :256]
    for num in (2, 3, 4) if not args.quick else (2,):
        est, refs = pit_inputs(pool, batch, num, seed=num)
        label = f"pit ({source}, T={pool.shape[1]}) B={batch} K={num}"

        def run(impl: Impl, est=est, refs=refs) -> torch.Tensor:
            leaf = est.clone().requires_grad_(True)
            loss, _ = impl.pit_loss(leaf, refs, impl.snr())
            loss.mean().backward()
            return loss.detach() / refs.shape[1]

        variants: dict[str, Callable[[], Any]] = {"ours": lambda: run(impls[0])}
        if len(impls) > 1:
            variants["ours_baseline"] = lambda: run(impls[1])
        if asteroid is not None:
            wrapper = asteroid[0](pairwise_snr, pit_from="pw_mtx")

            def run_asteroid(wrapper=wrapper, est=est, refs=refs) -> torch.Tensor:
                leaf = est.clone().requires_grad_(True)
                loss = wrapper(leaf, refs)
                loss.backward()
                return loss.detach()

            variants["asteroid"] = run_asteroid
            mean_ours = run(impls[0]).mean().item()
            say(f"{label}: ours {mean_ours:.6f} dB/source, asteroid {run_asteroid().item():.6f}")
        reps = 1 if args.quick else args.reps
        times = Timer(torch.device("cpu")).interleave(variants, reps)
        report(label, times, [("ours", "asteroid"), ("ours", "ours_baseline")])


def section_metrics(args, impls: list[Impl]) -> None:
    say("== image metrics: PSNR + SSIM with the best permutation ==")
    pool, source = image_pool(2000)
    count = 16 if args.quick else 500
    gen = torch.Generator().manual_seed(3)
    sources = pool[torch.randint(len(pool), (count, 2), generator=gen)].reshape(count, 2, 1, 32, 32)
    mixture = sources.mean(1, keepdim=True)
    estimates = 0.8 * sources + 0.2 * mixture + 0.02 * torch.randn(sources.shape, generator=gen)
    estimates = estimates.flip(1)  # best permutation: the swap
    variants = {
        ("current" if i == 0 else "baseline"): (
            lambda impl=impl: impl.image_metrics.image_separation_scores(estimates, sources)
        )
        for i, impl in enumerate(impls)
    }
    frames = {name: fn() for name, fn in variants.items()}
    if "baseline" in frames:
        cols = ["psnr", "ssim"]
        diff = (frames["current"][cols] - frames["baseline"][cols]).abs().to_numpy().max()
        same_perm = (frames["current"]["perm"] == frames["baseline"]["perm"]).all()
        say(f"image metrics: max |current - baseline| {diff:.1e}, same permutations {same_perm}")
    reps = 1 if args.quick else args.reps
    times = Timer(torch.device("cpu")).interleave(variants, reps)
    report(f"image metrics ({source}) N={count} K=2", times, [("current", "baseline")])


def _audio_items(count: int) -> tuple[list[tuple], str]:
    pool, source = audio_pool(1000)
    root = data_root()
    if root is not None and source == "FSDD":
        from benchmark.config import resolve_config
        from benchmark.registry import get_task

        cfg = resolve_config("mixit", "fsdd2mix", 0, "cpu")
        cfg.task.eval_mixtures = count
        data = get_task("fsdd2mix")(cfg.task, root).eval_set()
        sources = data.sources.double()
        source = "FSDD2Mix eval set"
    else:
        gen = torch.Generator().manual_seed(0)
        sources = pool[torch.randint(len(pool), (count, 2), generator=gen)].double()
    mixtures = sources.sum(1)
    gen = torch.Generator().manual_seed(1)
    estimates = 0.8 * sources + 0.2 * mixtures[:, None] / 2
    estimates = estimates + 0.05 * torch.randn(estimates.shape, generator=gen, dtype=torch.float64)
    items = [(estimates[n].numpy(), sources[n].numpy(), mixtures[n].numpy()) for n in range(count)]
    return items, source


def section_audio_workers(args, impls: list[Impl]) -> None:
    say("== audio metric workers: PESQ + ESTOI (+ SI-SDR) ==")
    count = 4 if args.quick else 200
    items, source = _audio_items(count)
    # --quick: SI-SDR only (too cheap for the workers to pay off: scored serially)
    families = ("si_sdr",) if args.quick else ("si_sdr", "pesq", "estoi")
    kwargs = {"sample_rate": 8000, "families": families}
    timer = Timer(torch.device("cpu"))
    for impl in impls:
        am = impl.audio_metrics

        def score(workers: int, am=am) -> list:
            return am.map_items(am.score_audio_mixture, items, workers, **kwargs)

        label = f"audio workers {impl.label} ({source}) N={count}"
        results: dict[str, list] = {}
        cold = timer.once(lambda score=score, results=results: results.update(two=score(2)))
        say(f"{label}: first call with 2 workers (pool start included) {fmt_s(cold)}")
        results["one"] = score(1)
        same = pd.DataFrame(results["one"]).equals(pd.DataFrame(results["two"]))
        say(f"{label}: results identical for 1 and 2 workers: {same}")
        times = timer.interleave(
            {"workers1": lambda score=score: score(1), "workers2": lambda score=score: score(2)},
            args.reps_slow if not args.quick else 1,
            warmup=0,
        )
        report(label, times, [("workers1", "workers2")])
        say(f"  (ratio workers1/workers2 is the speed-up of 2 workers; cold: {fmt_s(cold)})")


# -- training steps ---------------------------------------------------------------------------


def _build(method: str, preset: str, overrides: list[str], teacher=None, seed: int = 0):
    from benchmark.config import parse_overrides, resolve_config
    from benchmark.registry import get_method, get_task

    cfg = resolve_config(method, "mnist", 0, preset, parse_overrides(overrides))
    task = get_task("mnist")(cfg.task, data_root() or Path(".")).to(torch.device("cpu"))
    torch.manual_seed(seed)
    obj = get_method(method)(cfg, task, torch.device("cpu"))
    obj.setup(teacher)
    obj.train_mode()
    return obj


def harness_step(method, step: int, generator: torch.Generator) -> float:
    """The per-step work of ``benchmark.job._train``: warm-up learning rate, the method's
    step, the finiteness check of the loss."""
    cfg = method.config.train
    if cfg.warmup_steps > 0:
        scale = min(1.0, (step + 1) / cfg.warmup_steps)
        for group in method.optimizer.param_groups:
            group["lr"] = cfg.lr * scale
    logs = method.train_step(step, generator)
    loss = float(logs["loss"])
    if not math.isfinite(loss):
        raise RuntimeError("diverged")
    return loss


def raw_mixit_step(method, impl: Impl, step: int, generator: torch.Generator) -> float:
    """MixIT written as a plain loop on the method's network and optimizer."""
    cfg = method.config
    if cfg.train.warmup_steps > 0:
        for group in method.optimizer.param_groups:
            group["lr"] = cfg.train.lr * min(1.0, (step + 1) / cfg.train.warmup_steps)
    refs = method.task.sample_mixit_references(
        cfg.train.batch_size, generator, cfg.mixit.single_source_prob
    )
    est = method.model(refs.sum(1))
    loss_fn = impl.losses.signal_loss(cfg.mixit.loss, cfg.mixit.snr_max)
    loss, _ = impl.mixit(est, refs, loss_fn, cfg.mixit.assignment)
    loss = loss.mean()
    method.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(method.model.parameters(), cfg.train.grad_clip)
    method.optimizer.step()
    return loss.item()


def raw_surf_sr_step(method, step: int, generator: torch.Generator) -> float:
    """SURF SR-FM (Algorithm 1) written as a plain loop on the method's networks."""
    from methods.ema import beta_schedule, ema_update
    from methods.flow import (
        clean_estimate,
        initial_state,
        interpolant,
        noise_sigma,
        target_velocity,
    )
    from methods.mixit_assignment import reduce_to_k
    from methods.pit import apply_permutation, pit_permutation
    from methods.remix import remix
    from methods.surf import sr_fm_loss

    cfg = method.config
    k = method.task.num_sources
    if cfg.train.warmup_steps > 0:
        for group in method.optimizer.param_groups:
            group["lr"] = cfg.train.lr * min(1.0, (step + 1) / cfg.train.warmup_steps)
    surf = cfg.surf
    beta = beta_schedule(step, surf.beta_decay_steps) if surf.beta == "linear" else float(surf.beta)
    mixtures = method.task.sample_mixtures(cfg.train.batch_size, generator)
    with torch.no_grad():
        sigma = noise_sigma(mixtures, k, surf.noise_scale, surf.noise_reference)
        x0 = initial_state(mixtures, k, sigma, generator=generator)
        mixit_est = reduce_to_k(method.mixit.model(mixtures), k) if beta > 0 else None
        x = x0
        for i in range(surf.euler_steps):
            t_i = i / surf.euler_steps
            if t_i < beta:
                v = mixit_est - x0
            else:
                v = method.ema(x, torch.full((x.shape[0],), t_i), mixtures)
            x = x + v / surf.euler_steps
    remixed = remix(x, generator)
    x1, m_tilde = remixed.sources, remixed.mixtures
    t = torch.rand(1, generator=generator).expand(x1.shape[0])
    sigma = noise_sigma(m_tilde, k, surf.noise_scale, surf.noise_reference)
    x0 = initial_state(m_tilde, k, sigma, generator=generator)
    with torch.no_grad():
        zeros = torch.zeros_like(t)
        upsilon = pit_permutation(clean_estimate(x0, method.student(x0, zeros, m_tilde), zeros), x1)
    x1_aligned = apply_permutation(x1, upsilon)
    residual = method.student(interpolant(x0, x1_aligned, t), t, m_tilde) - target_velocity(
        x0, x1_aligned
    )
    loss = sr_fm_loss(residual, upsilon, remixed.perm, method.flow_loss)
    method.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(method.student.parameters(), cfg.train.grad_clip)
    method.optimizer.step()
    ema_update(method.ema, method.student, surf.ema_decay)
    return loss.item()


def section_harness(args, impls: list[Impl]) -> None:
    say(f"== harness step / raw loop (MNIST, preset {args.preset}) ==")
    cur = impls[0]
    steps = 1 if args.quick else 2
    reps = 1 if args.quick else args.reps
    mixit_a = _build("mixit", args.preset, [])
    mixit_b = _build("mixit", args.preset, [])
    gen_a = torch.Generator().manual_seed(0)
    gen_b = torch.Generator().manual_seed(0)
    first = harness_step(mixit_a, 0, gen_a), raw_mixit_step(mixit_b, cur, 0, gen_b)
    say(f"mixit: first loss harness {first[0]!r}, raw {first[1]!r}, equal {first[0] == first[1]}")
    counter = {"a": 1, "b": 1}

    def run_harness(method, gen, key, fn):
        def go():
            for _ in range(steps):
                fn(method, counter[key], gen)
                counter[key] += 1

        return go

    times = Timer(torch.device("cpu")).interleave(
        {
            "harness": run_harness(mixit_a, gen_a, "a", harness_step),
            "raw": run_harness(mixit_b, gen_b, "b", lambda m, s, g: raw_mixit_step(m, cur, s, g)),
        },
        reps,
        warmup=0,
    )
    report(f"harness mixit ({steps} steps)", times, [("harness", "raw")])

    teacher = _build("mixit", args.preset, [])
    teacher.eval_mode()
    surf_a = _build("surf_sr", args.preset, [], teacher)
    surf_b = _build("surf_sr", args.preset, [], teacher)
    gen_a = torch.Generator().manual_seed(0)
    gen_b = torch.Generator().manual_seed(0)
    first = harness_step(surf_a, 0, gen_a), raw_surf_sr_step(surf_b, 0, gen_b)
    say(f"surf_sr: first loss harness {first[0]!r}, raw {first[1]!r}, equal {first[0] == first[1]}")
    counter.update(a=1, b=1)
    times = Timer(torch.device("cpu")).interleave(
        {
            "harness": run_harness(surf_a, gen_a, "a", harness_step),
            "raw": run_harness(surf_b, gen_b, "b", raw_surf_sr_step),
        },
        reps,
        warmup=0,
    )
    report(f"harness surf_sr ({steps} steps, beta from 1)", times, [("harness", "raw")])


class _StepClock:
    """Splits a SURF step into teacher solve, PIT pass (no-grad student pass + search) and the
    rest (the student step), by wrapping the method's ``teacher_sources``, its student's
    ``forward`` when called without gradient, and ``methods.surf.pit_permutation``."""

    def __init__(self, method) -> None:
        self.parts = {"teacher": 0.0, "pit": 0.0}
        teacher_sources = method.teacher_sources
        forward = method.student.forward

        def timed_teacher(*a, **k):
            begin = time.perf_counter()
            try:
                return teacher_sources(*a, **k)
            finally:
                self.parts["teacher"] += time.perf_counter() - begin

        def timed_forward(*a, **k):
            if torch.is_grad_enabled():
                return forward(*a, **k)
            begin = time.perf_counter()
            try:
                return forward(*a, **k)
            finally:
                self.parts["pit"] += time.perf_counter() - begin

        method.teacher_sources = timed_teacher
        method.student.forward = timed_forward

    def reset(self) -> dict[str, float]:
        parts = dict(self.parts)
        self.parts.update(teacher=0.0, pit=0.0)
        return parts


def section_surf(args, impls: list[Impl]) -> None:
    say(f"== SURF (surf_sr) step breakdown (MNIST, preset {args.preset}) ==")
    import methods.surf as surf_module

    teacher = _build("mixit", args.preset, [])
    teacher.eval_mode()
    betas = ("1", "0")
    for beta in betas:  # same seed, fresh networks: the losses must not change with the code
        method = _build("surf_sr", args.preset, [f"surf.beta={beta}"], teacher)
        gen = torch.Generator().manual_seed(0)
        losses = [float(method.train_step(s, gen)["loss"]) for s in range(2)]
        say(f"surf_sr beta={beta}: losses of steps 0, 1 (seed 0): {losses!r}")
    methods_by_beta = {
        beta: _build("surf_sr", args.preset, [f"surf.beta={beta}"], teacher) for beta in betas
    }
    clocks = {beta: _StepClock(m) for beta, m in methods_by_beta.items()}
    pit_time = {"t": 0.0}
    original = surf_module.pit_permutation

    def timed_pit(*a, **k):
        begin = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            pit_time["t"] += time.perf_counter() - begin

    surf_module.pit_permutation = timed_pit
    try:
        gens = {beta: torch.Generator().manual_seed(1) for beta in betas}
        parts: dict[str, dict[str, list[float]]] = {
            b: {"total": [], "teacher": [], "pit": [], "student": []} for b in betas
        }
        reps = 1 if args.quick else args.reps
        for beta in betas:  # warm-up
            methods_by_beta[beta].train_step(0, gens[beta])
            clocks[beta].reset()
        for rep in range(reps):
            for beta in betas if rep % 2 == 0 else tuple(reversed(betas)):
                pit_time["t"] = 0.0
                begin = time.perf_counter()
                methods_by_beta[beta].train_step(rep + 1, gens[beta])
                total = time.perf_counter() - begin
                split = clocks[beta].reset()
                split["pit"] += pit_time["t"]
                parts[beta]["total"].append(total)
                parts[beta]["teacher"].append(split["teacher"])
                parts[beta]["pit"].append(split["pit"])
                parts[beta]["student"].append(total - split["teacher"] - split["pit"])
    finally:
        surf_module.pit_permutation = original
    for beta in betas:
        p = parts[beta]
        total = median(p["total"])
        shares = ", ".join(
            f"{name} {fmt_s(median(p[name]))} ({median(p[name]) / total:.0%})"
            for name in ("teacher", "pit", "student")
        )
        say(f"surf_sr step beta={beta}: median of {reps}: total {fmt_s(total)}; {shares}")
    ratio = median([a / b for a, b in zip(parts["0"]["total"], parts["1"]["total"], strict=True)])
    say(f"  ratio surf_sr step beta=0/beta=1 = {ratio:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI)")
    parser.add_argument("--preset", default="cpu", help="network sizes of the step timings")
    parser.add_argument("--reps", type=int, default=7, help="repetitions of fast comparisons")
    parser.add_argument("--reps-slow", type=int, default=3, help="repetitions of audio scoring")
    parser.add_argument("--baseline", default="", help="git revision to time beside the code")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine, OpenMP threads spin "
        "against other jobs and make timings erratic; ratios are what this suite reports)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.preset = "smoke"
    wanted = [s for s in args.sections.split(",") if s]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    commit = subprocess.run(
        ["git", "-C", str(GIT_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(GIT_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    say(
        f"perf suite: code {ROOT} at {commit or '?'}{'+dirty' if dirty else ''}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.2f}; data {data_root()}"
    )
    impls = [current_impl()]
    if args.baseline:
        impls.append(baseline_impl(args.baseline))
    asteroid = load_asteroid()
    say(f"asteroid: {'loaded (losses/pit_wrapper.py, mixit_wrapper.py)' if asteroid else 'absent'}")
    begin = time.perf_counter()
    for name in wanted:
        {
            "harness": lambda: section_harness(args, impls),
            "mixit": lambda: section_mixit(args, impls, asteroid),
            "pit": lambda: section_pit(args, impls, asteroid),
            "metrics": lambda: section_metrics(args, impls),
            "audio_workers": lambda: section_audio_workers(args, impls),
            "surf": lambda: section_surf(args, impls),
        }[name]()
    say(
        f"perf suite done in {time.perf_counter() - begin:.0f} s; load average now "
        f"{os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
