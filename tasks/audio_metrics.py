"""Audio separation metrics (SURF Appendix D.2): SI-SDR / SI-SDRi with PIT, PESQ, ESTOI and
DNSMOS P.835 OVRL, each callable on plain NumPy arrays, plus a per-mixture scorer that runs in
parallel worker processes.

Definitions and choices (README "Audio metrics"):

- **SI-SDR** (Le Roux et al. 2019; SURF D.2): ``alpha = <x_hat, x> / ||x||^2``,
  ``SI-SDR(x, x_hat) = 10 log10(||alpha x||^2 / ||alpha x - x_hat||^2)`` in dB, computed in
  float64 **without** mean removal (the formula as D.2 writes it); ``zero_mean=True`` first
  subtracts each signal's mean (the variant of Le Roux et al. and asteroid). No epsilon: a
  silent reference gives NaN, a perfect estimate +inf.
- **PIT**: per mixture the estimate-to-source permutation maximising the mean SI-SDR over the
  K sources is chosen (:func:`methods.pit.best_permutation`, all K! permutations; a NaN entry
  counts as 0 in a total, ties go to the first permutation in lexicographic order) and reused
  for every other metric.
- **SI-SDRi** = ``SI-SDR(x, x_hat) - SI-SDR(x, m)``, with ``m`` the mixture (sum of sources).
- **PESQ** (ITU-T P.862, ``pesq`` package): wide band at 16 kHz, narrow band at 8 kHz (the two
  rates PESQ defines). PESQ raises on silent or too-short signals; such an item is recorded as
  NaN and counted in ``pesq_failed`` (reported next to the mean); nothing is dropped silently.
- **ESTOI** (Jensen & Taal 2016, ``pystoi.stoi(..., extended=True)``) at the native rate;
  pystoi resamples to its 10 kHz internally, we do not resample. Where the reference has less
  than 384 ms of non-silent speech pystoi returns a placeholder (1e-5); that item is recorded
  as NaN and counted in ``estoi_failed``, as for PESQ.
- **DNSMOS P.835 OVRL** (Reddy et al. 2022, ``speechmos.dnsmos``, its bundled ONNX models):
  the estimate is resampled to 16 kHz with ``torchaudio.functional.resample`` when needed.
  DNSMOS is non-intrusive and level dependent and speechmos refuses samples outside [-1, 1]:
  an estimate whose peak exceeds 1 is divided by its peak (peak-normalised to 1); estimates
  within [-1, 1] are scored unchanged.

Every function takes estimates before references (the project's convention,
:mod:`methods.pit`). :func:`map_items` scores items in worker processes from one pool per
process, started once (forkserver, with NumPy, PESQ, pystoi and this module imported once) and
reused by every later evaluation; it scores serially when the items would finish sooner than
the workers pay off. Results do not depend on the number of workers, except that pystoi's
float64 result can differ in its last bit between processes (it depends on memory alignment).
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from methods.pit import best_permutation

__all__ = [
    "AUDIO_METRIC_FAMILIES",
    "dnsmos_ovrl",
    "estoi",
    "map_items",
    "pairwise_si_sdr",
    "pesq_score",
    "pit_si_sdr",
    "score_audio_mixture",
    "shutdown_workers",
    "si_sdr",
]

#: metric families :func:`score_audio_mixture` can compute
AUDIO_METRIC_FAMILIES = ("si_sdr", "pesq", "estoi", "dnsmos")

DNSMOS_RATE = 16_000


def si_sdr(estimate: np.ndarray, reference: np.ndarray, zero_mean: bool = False) -> np.ndarray:
    """Scale-invariant SDR (SURF Appendix D.2; Le Roux et al. 2019), in dB.

    Args:
        estimate: ``(..., T)`` estimates x_hat (broadcast against ``reference``).
        reference: ``(..., T)`` reference signals x.
        zero_mean: subtract each signal's mean over T first (the zero-mean variant); False is
            D.2's formula as written.

    Returns:
        ``(...)`` float64 SI-SDR ``10 log10(||alpha x||^2 / ||alpha x - x_hat||^2)`` with
        ``alpha = <x_hat, x> / ||x||^2``: NaN for a silent reference, +inf for a perfect
        estimate.
    """
    x = np.asarray(reference, dtype=np.float64)
    x_hat = np.asarray(estimate, dtype=np.float64)
    if zero_mean:
        x = x - x.mean(axis=-1, keepdims=True)
        x_hat = x_hat - x_hat.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (x_hat * x).sum(-1, keepdims=True) / (x * x).sum(-1, keepdims=True)
        target = alpha * x
        return 10.0 * np.log10((target**2).sum(-1) / ((target - x_hat) ** 2).sum(-1))


def pairwise_si_sdr(
    estimates: np.ndarray, references: np.ndarray, zero_mean: bool = False
) -> np.ndarray:
    """``(K, T)`` estimates and ``(K, T)`` references -> ``(K_est, K_ref)`` SI-SDR (dB):
    entry ``[i, j]`` scores estimate i against reference j."""
    return si_sdr(estimates[:, None, :], references[None, :, :], zero_mean)


def pit_si_sdr(
    estimates: np.ndarray, references: np.ndarray, mixture: np.ndarray, zero_mean: bool = False
) -> dict[str, Any]:
    """SI-SDR and SI-SDRi per source under the PIT-chosen permutation.

    Args:
        estimates: ``(K, T)`` estimates in any order.
        references: ``(K, T)`` sources.
        mixture: ``(T,)`` the mixture the estimates came from (SI-SDRi baseline).
        zero_mean: see :func:`si_sdr`.

    Returns:
        ``perm`` (tuple: estimate k is matched to reference ``perm[k]``), ``si_sdr`` and
        ``si_sdri`` (``(K,)`` arrays in dB, indexed by **reference**) and ``order`` (``(K,)``:
        the estimate matched to each reference).
    """
    k = references.shape[0]
    pair = pairwise_si_sdr(estimates, references, zero_mean)
    counted = np.nan_to_num(pair, nan=0.0, posinf=np.inf, neginf=-np.inf)  # NaN counts as 0
    _, perm = best_permutation(torch.from_numpy(counted)[None], maximize=True)
    best_perm = tuple(perm[0].tolist())
    order = np.empty(k, dtype=np.int64)
    order[list(best_perm)] = np.arange(k)  # reference j <- estimate order[j]
    scores = pair[order, np.arange(k)]
    baseline = si_sdr(mixture[None, :], references, zero_mean)
    with np.errstate(invalid="ignore"):  # inf - inf (silent reference) is NaN, as it should
        improvement = scores - baseline
    return {"perm": best_perm, "order": order, "si_sdr": scores, "si_sdri": improvement}


def pesq_score(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """PESQ MOS-LQO (ITU-T P.862 via the ``pesq`` package, ``pesq(rate, reference, estimate,
    mode)``): ``"wb"`` at 16 kHz, ``"nb"`` at 8 kHz. ``(T,)`` arrays at ``sample_rate`` Hz.

    Returns:
        The score (about -0.5 to 4.64), or NaN when PESQ raises (silent or too-short signal).

    Raises:
        ValueError: a rate other than 8,000 or 16,000 Hz (PESQ defines no other).
    """
    from pesq import PesqError, pesq

    modes = {16_000: "wb", 8_000: "nb"}
    if sample_rate not in modes:
        raise ValueError(f"PESQ needs 8000 or 16000 Hz audio, got {sample_rate} Hz")
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # pesq divides silent input by 0
            return float(pesq(sample_rate, reference, estimate, modes[sample_rate]))
    except PesqError:
        return math.nan


def estoi(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """ESTOI (Jensen & Taal 2016; ``pystoi.stoi(reference, estimate, rate, extended=True)``) of
    ``(T,)`` arrays at their native ``sample_rate`` (Hz); roughly in [0, 1], higher is more
    intelligible.

    Returns:
        The score, or NaN where ESTOI is undefined: pystoi needs 30 frames (384 ms) of
        non-silent reference and otherwise warns and returns a placeholder 1e-5, which is not
        a score; such items are counted in ``estoi_failed``.
    """
    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(reference, estimate, sample_rate, extended=True))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return math.nan
    return value


def _to_dnsmos_input(estimate: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(estimate, dtype=np.float64)
    if sample_rate != DNSMOS_RATE:
        import torch
        from torchaudio.functional import resample

        audio = resample(torch.from_numpy(audio), sample_rate, DNSMOS_RATE).numpy()
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 1.0:  # documented policy: peak-normalise only estimates exceeding [-1, 1]
        audio = audio / peak
    return audio


def dnsmos_ovrl(estimate: np.ndarray, sample_rate: int) -> float:
    """DNSMOS P.835 overall quality (OVRL, about 1-5) of a ``(T,)`` estimate at
    ``sample_rate`` Hz with speechmos's bundled models, after resampling to 16 kHz and
    peak-normalising estimates whose peak exceeds 1 (module docstring)."""
    from speechmos import dnsmos

    audio = _to_dnsmos_input(estimate, sample_rate)
    return float(dnsmos.run(audio, sr=DNSMOS_RATE)["ovrl_mos"])


def score_audio_mixture(
    estimates: np.ndarray,
    references: np.ndarray,
    mixture: np.ndarray,
    sample_rate: int,
    families: Sequence[str] = ("si_sdr",),
    zero_mean: bool = False,
    scored: Sequence[int] | None = None,
) -> dict[str, Any]:
    """All requested metrics of one mixture under the PIT permutation of SI-SDR.

    Args:
        estimates: ``(K, T)`` estimates.
        references: ``(K, T)`` sources.
        mixture: ``(T,)`` mixture.
        sample_rate: Hz.
        families: subset of :data:`AUDIO_METRIC_FAMILIES`.
        zero_mean: SI-SDR variant (see :func:`si_sdr`).
        scored: reference indices averaged into the row (None: all; ``(0,)`` scores only the
            speech source of an enhancement task after the PIT over all sources).

    Returns:
        ``si_sdr``, ``si_sdri`` (dB) and, if requested, ``pesq``, ``pesq_failed`` (number of
        scored sources where PESQ raised), ``estoi``, ``estoi_failed`` (sources with too
        little speech for ESTOI), ``dnsmos``: means over the scored sources (NaN if any
        source of the item failed); ``perm`` as ``"1,0"``.
    """
    unknown = set(families) - set(AUDIO_METRIC_FAMILIES)
    if unknown:
        raise ValueError(f"unknown audio metrics {sorted(unknown)}; valid: {AUDIO_METRIC_FAMILIES}")
    pit = pit_si_sdr(estimates, references, mixture, zero_mean)
    refs = list(range(references.shape[0])) if scored is None else list(scored)
    row: dict[str, Any] = {
        "si_sdr": float(np.mean(pit["si_sdr"][refs])),
        "si_sdri": float(np.mean(pit["si_sdri"][refs])),
    }
    matched = [(references[j], estimates[pit["order"][j]]) for j in refs]
    if "pesq" in families:
        values = [pesq_score(est, ref, sample_rate) for ref, est in matched]
        row["pesq"] = float(np.mean(values))  # NaN if any failed: the item is not dropped
        row["pesq_failed"] = int(np.isnan(values).sum())
    if "estoi" in families:
        values = [estoi(est, ref, sample_rate) for ref, est in matched]
        row["estoi"] = float(np.mean(values))
        row["estoi_failed"] = int(np.isnan(values).sum())
    if "dnsmos" in families:
        row["dnsmos"] = float(np.mean([dnsmos_ovrl(est, sample_rate) for _ref, est in matched]))
    row["perm"] = ",".join(map(str, pit["perm"]))
    return row


def _apply(args: tuple[Callable[..., Any], tuple, dict]) -> Any:
    fn, positional, keyword = args
    return fn(*positional, **keyword)


#: modules the worker processes import once, in the forkserver, before any item
_PRELOAD = ["numpy", "torch", "pesq", "pystoi", "methods.pit", "tasks.audio_metrics"]
#: started worker pools of this process, by number of workers (reused by every call)
_POOLS: dict[int, ProcessPoolExecutor] = {}
#: estimated serial time of the remaining items (s) above which they go to the workers:
#: a started pool dispatches in milliseconds, a new one takes seconds to start
PARALLEL_MIN_SECONDS_WARM = 0.5
PARALLEL_MIN_SECONDS_COLD = 3.0


def _context() -> multiprocessing.context.BaseContext:
    """forkserver (workers forked from a server that has imported :data:`_PRELOAD`, safe with
    PyTorch and ONNX Runtime threads in this process), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _pool(workers: int) -> ProcessPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
        _POOLS[workers] = pool
    return pool


def shutdown_workers() -> None:
    """Stop the worker pools that :func:`map_items` started (also done at exit)."""
    while _POOLS:
        _workers, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_workers)


def map_items(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    workers: int = 1,
    **kwargs: Any,
) -> list[Any]:
    """``[fn(*item, **kwargs) for item in items]``, in worker processes when ``workers > 1``.

    Results are in item order and equal to the serial loop (each item is computed by the same
    deterministic function). The first item is scored here and timed: the rest go to the
    workers only if scoring them serially would take longer than
    :data:`PARALLEL_MIN_SECONDS_WARM` (:data:`PARALLEL_MIN_SECONDS_COLD` while this process
    has not started its pool yet). The pool of ``workers`` processes is started once per
    process (:func:`_context`) and reused by every later call; ``fn`` must be a module-level
    function.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(*item, **kwargs) for item in items]
    begin = time.perf_counter()
    first = fn(*items[0], **kwargs)
    rest = items[1:]
    threshold = PARALLEL_MIN_SECONDS_WARM if workers in _POOLS else PARALLEL_MIN_SECONDS_COLD
    if (time.perf_counter() - begin) * len(rest) < threshold:
        return [first, *(fn(*item, **kwargs) for item in rest)]
    jobs = [(fn, tuple(item), kwargs) for item in rest]
    chunk = max(1, len(jobs) // (8 * workers))
    try:
        return [first, *_pool(workers).map(_apply, jobs, chunksize=chunk)]
    except BrokenProcessPool:
        _POOLS.pop(workers, None)  # a worker died: the next call starts a new pool
        raise
