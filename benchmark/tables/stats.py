"""Confidence intervals of the table cells and of paired differences between methods, written
once for every table format (``table --ci``, ``table --compare A``).

Every method of a task and preset is scored on the same fixed evaluation mixtures (drawn with
the task seed, independent of the method seed), in the same order, so two runs of one task,
preset, task settings and seed can be compared mixture by mixture. Two kinds of interval, both
at the confidence level :data:`CONFIDENCE` (95 %), two-sided:

- ``bootstrap`` (one seed): the mean of one run's per-mixture values (a cell), or of the
  per-mixture differences ``B - A`` of two runs (a comparison), with the BCa (bias-corrected
  and accelerated) bootstrap interval of that mean over the evaluation mixtures
  (``scipy.stats.bootstrap``; Efron & Tibshirani 1993, ch. 14). It covers the sampling of the
  evaluation set given the trained model(s), not the variation between training seeds.
  ``n_items`` is the number of mixtures. BCa rather than the percentile interval because
  per-mixture scores and their differences are skewed (a few failed separations make a long
  tail) and BCa corrects for skew and bias (second-order accurate; scipy's default).
  :data:`N_RESAMPLES` = 9,999 resamples: the Monte-Carlo error of the end points is about 1 %
  of the interval's width, and ``(9,999 + 1) x 0.025`` is a whole number of resamples. The
  generator is seeded with :data:`BOOTSTRAP_SEED` for every interval, so a table is
  reproducible: an interval depends only on its own values (not on the other rows, the order
  or the batching).
- ``t`` (several seeds): the mean over seeds of the per-seed means (a cell), or of the per-seed
  differences ``B_s - A_s`` over the seeds both methods have (a comparison, paired by seed),
  with the Student t-interval ``mean ± t(0.975, k - 1) · s / sqrt(k)`` over the ``k`` seeds
  (``scipy.stats.t``). It covers the variation between training seeds on the fixed evaluation
  set. ``n_items`` is the number of seeds.

A metric without per-mixture values (FID, Inception Score, FUSS numbers pooled over sources:
anything that is not the mean of a ``scores.parquet`` column) gets a ``t`` interval with several
seeds and none with one seed (kind ``none``).

The resampling is vectorised (:func:`bootstrap_intervals` computes every interval of the same
number of mixtures in one ``scipy.stats.bootstrap`` call, in memory-bounded batches of
resamples): no Python loop over resamples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "BOOTSTRAP",
    "BOOTSTRAP_METHOD",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "KINDS",
    "NONE",
    "N_RESAMPLES",
    "T",
    "Interval",
    "Sample",
    "bootstrap_intervals",
    "cell_sample",
    "intervals",
    "paired_sample",
    "t_interval",
]

#: two-sided confidence level of every interval
CONFIDENCE = 0.95
#: bootstrap resamples per interval
N_RESAMPLES = 9999
#: seed of the bootstrap's generator (the same for every interval: tables are reproducible)
BOOTSTRAP_SEED = 0
#: ``scipy.stats.bootstrap`` method
BOOTSTRAP_METHOD = "BCa"
#: interval kinds (the ``interval`` column of ``--format csv``)
BOOTSTRAP, T, NONE = "bootstrap", "t", "none"
KINDS = (BOOTSTRAP, T, NONE)
#: values (resamples x mixtures x rows) held at once by one bootstrap batch (64 MB of float64)
_BATCH_VALUES = 8_000_000


@dataclass(frozen=True)
class Sample:
    """What one interval is computed from.

    Attributes:
        values: ``(n,)`` finite values: one seed's per-mixture values (or differences) for
            ``kind == "bootstrap"``, the per-seed values (or differences) for ``kind == "t"``.
        kind: :data:`BOOTSTRAP` or :data:`T`.
    """

    values: np.ndarray
    kind: str


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval.

    Attributes:
        mean: the mean of the sample's values (units of the metric, e.g. dB).
        low, high: the interval's end points (NaN for kind ``none``).
        n_items: number of mixtures (``bootstrap``) or seeds (``t``) it is over (0: none).
        kind: :data:`BOOTSTRAP`, :data:`T` or :data:`NONE`.
    """

    mean: float
    low: float = math.nan
    high: float = math.nan
    n_items: int = 0
    kind: str = NONE

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely above or below 0 (a significant difference)."""
        return self.kind != NONE and (self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float] | np.ndarray) -> Interval:
    """Student t-interval of the mean over seeds.

    Args:
        values: ``(k,)`` per-seed values, k >= 2 (NaN entries are dropped first).

    Returns:
        ``mean ± t(1 - (1 - CONFIDENCE) / 2, k - 1) · s / sqrt(k)`` (``s``: sample std), kind
        ``t``, ``n_items`` k; kind ``none`` (only the mean) for fewer than two values.
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return Interval(math.nan)
    mean = float(arr.mean())
    if arr.size < 2:
        return Interval(mean)
    quantile = float(sps.t.ppf(0.5 + CONFIDENCE / 2, arr.size - 1))
    half = quantile * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return Interval(mean, mean - half, mean + half, int(arr.size), T)


def bootstrap_intervals(samples: Sequence[np.ndarray]) -> list[Interval]:
    """BCa bootstrap intervals of the means of several samples (one per cell), vectorised.

    Samples of the same length are stacked and resampled in one ``scipy.stats.bootstrap`` call
    (``axis=-1``, :data:`N_RESAMPLES` resamples, generator seeded with :data:`BOOTSTRAP_SEED`,
    batches of resamples bounded to about 64 MB). The resampled indices depend only on the
    length, so each interval is the one a call with that sample alone would give.

    Args:
        samples: ``(n_i,)`` arrays of per-mixture values; NaN entries are dropped (a metric
            undefined on some mixtures).

    Returns:
        One :class:`Interval` per sample, in order: kind ``bootstrap`` with ``n_items`` the
        number of finite values; a constant sample gets the zero-width interval at its value;
        fewer than two values (or a degenerate resampling distribution) kind ``none``.
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    arrays = [a[np.isfinite(a)] for a in arrays]
    out: list[Interval | None] = [None] * len(arrays)
    groups: dict[int, list[int]] = {}
    for i, arr in enumerate(arrays):
        if arr.size == 0:
            out[i] = Interval(math.nan)
        elif arr.size < 2:
            out[i] = Interval(float(arr.mean()))
        elif np.ptp(arr) == 0:
            value = float(arr[0])
            out[i] = Interval(value, value, value, int(arr.size), BOOTSTRAP)
        else:
            groups.setdefault(arr.size, []).append(i)
    for n, members in groups.items():
        data = np.stack([arrays[i] for i in members])
        batch = max(1, min(N_RESAMPLES, _BATCH_VALUES // (n * len(members))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate rows come back NaN: kind none below
            result = sps.bootstrap(
                (data,),
                np.mean,
                n_resamples=N_RESAMPLES,
                batch=batch,
                vectorized=True,
                axis=-1,
                confidence_level=CONFIDENCE,
                method=BOOTSTRAP_METHOD,
                rng=np.random.default_rng(BOOTSTRAP_SEED),
            )
        lows = np.atleast_1d(result.confidence_interval.low)
        highs = np.atleast_1d(result.confidence_interval.high)
        for row, i in enumerate(members):
            mean, low, high = float(data[row].mean()), float(lows[row]), float(highs[row])
            if math.isfinite(low) and math.isfinite(high):
                out[i] = Interval(mean, low, high, n, BOOTSTRAP)
            else:
                out[i] = Interval(mean)
    return [o for o in out if o is not None]


def intervals(
    samples: Sequence[Sample | None], means: Sequence[float] | None = None
) -> list[Interval]:
    """The interval of each sample (``bootstrap`` ones batched by :func:`bootstrap_intervals`).

    Args:
        samples: one :class:`Sample` per cell; None: the cell has no interval.
        means: the value shown for a cell without a sample (default NaN).

    Returns:
        One :class:`Interval` per sample, in order.
    """
    out: list[Interval] = []
    for i, sample in enumerate(samples):
        mean = means[i] if means is not None else math.nan
        out.append(t_interval(sample.values) if sample and sample.kind == T else Interval(mean))
    boot = [i for i, s in enumerate(samples) if s is not None and s.kind == BOOTSTRAP]
    found = bootstrap_intervals([samples[i].values for i in boot])
    for i, interval in zip(boot, found, strict=True):
        out[i] = interval
    return out


def cell_sample(
    per_seed: Mapping[int, float], per_mixture: Mapping[int, np.ndarray | None]
) -> Sample | None:
    """What a cell's interval is computed from.

    Args:
        per_seed: seed -> the run's value (``metrics.json``).
        per_mixture: seed -> the run's per-mixture values (NaN where undefined) when the value
            is their mean, None (or absent) when the metric has none (FID, pooled numbers).

    Returns:
        Several seeds: the per-seed values (``t``); one seed with per-mixture values: those
        (``bootstrap``); else None (no interval).
    """
    values = [v for v in per_seed.values() if math.isfinite(v)]
    if len(values) >= 2:
        return Sample(np.asarray(values, dtype=np.float64), T)
    if len(per_seed) == 1:
        (seed,) = per_seed
        mixtures = per_mixture.get(seed)
        if mixtures is not None:
            return Sample(np.asarray(mixtures, dtype=np.float64), BOOTSTRAP)
    return None


def paired_sample(
    per_seed_b: Mapping[int, float],
    per_seed_a: Mapping[int, float],
    per_mixture_b: Mapping[int, np.ndarray | None],
    per_mixture_a: Mapping[int, np.ndarray | None],
) -> Sample | None:
    """What the interval of the difference ``B - A`` is computed from, paired on the seeds both
    runs have (runs of one seed must already be known to share the evaluation set).

    Args:
        per_seed_b, per_seed_a: seed -> value of method B's and A's runs.
        per_mixture_b, per_mixture_a: seed -> per-mixture values in the order of the
            evaluation mixtures (the same mixtures for B and A), or None (see
            :func:`cell_sample`).

    Returns:
        Two or more common seeds: the per-seed differences (``t``); one common seed with
        per-mixture values on both sides: the per-mixture differences, NaN where either is
        undefined (``bootstrap``); else None.

    Raises:
        ValueError: per-mixture values of different lengths (not the same mixtures).
    """
    common = sorted(
        s
        for s in set(per_seed_b) & set(per_seed_a)
        if math.isfinite(per_seed_b[s]) and math.isfinite(per_seed_a[s])
    )
    if len(common) >= 2:
        return Sample(np.asarray([per_seed_b[s] - per_seed_a[s] for s in common]), T)
    if len(common) == 1:
        (seed,) = common
        b, a = per_mixture_b.get(seed), per_mixture_a.get(seed)
        if b is not None and a is not None:
            b, a = np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)
            if b.shape != a.shape:
                raise ValueError(
                    f"per-mixture values of {b.shape[0]} and {a.shape[0]} mixtures: not the "
                    "same evaluation set"
                )
            return Sample(b - a, BOOTSTRAP)
    return None
