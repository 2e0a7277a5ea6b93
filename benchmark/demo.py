"""The demo page: a static site to look at and listen to what the methods separated, like the
SURF demo page (``python -m benchmark demo``), built from the results store alone.

Two halves:

- **At evaluation** (:func:`write_demo_estimates`, called by :mod:`benchmark.job`): the
  estimates of the first ``eval.demo_mixtures`` evaluation mixtures (default 8), exactly the ones
  that were scored, are stored in the run folder as ``demo.npz`` together with those mixtures
  and their targets, so that the page needs neither the data nor a model. Each estimate is put
  in its target's slot by the permutation the scores chose (:meth:`tasks.base.Task.estimate_order`
  reads the ``perm`` column), so the page shows estimate ``k`` under target ``k``. Layout
  (:data:`DEMO_FORMAT` 1; ``np.load(..., allow_pickle=False)`` reads it):

  ============== ============== ==========================================================
  key            shape          meaning
  ============== ============== ==========================================================
  ``format``     ``()``         :data:`DEMO_FORMAT`
  ``modality``   ``()``         ``"image"`` or ``"audio"`` (:attr:`tasks.base.Task.modality`)
  ``index``      ``(n,)``       evaluation-set indices (the scores' ``mixture`` column)
  ``order``      ``(n, K)``     the estimate shown in target slot ``j`` (from ``perm``)
  ``aligned``    ``()``         False when the scores have no ``perm`` (a plug-in task's):
                                the estimates are then in the method's output order
  ``mixtures``   ``(n, *D)``    the mixture in the sources' scale
                                (:meth:`tasks.base.Task.mixture_estimate`: ``m / K`` for
                                images, ``m`` for audio)
  ``targets``    ``(n, K, *D)`` the reference sources
  ``estimates``  ``(n, K, *D)`` the scored estimates, in the targets' order
  ============== ============== ==========================================================

  Images are float16 (estimates clamped to [0, 1], as scored). Audio is int16 with a peak per
  signal (``<key>_peak``, float32; value = ``q / 32767 * peak``), cropped to at most
  :data:`DEMO_MAX_SECONDS` seconds: the loudest window of the mixture (the same window for
  mixture, targets and estimates), with ``offsets`` ``(n,)`` its first sample in the evaluation
  item, ``lengths`` ``(n,)`` its valid samples (the rest is zero padding), ``item_lengths``
  ``(n,)`` the item's valid samples and ``sample_rate`` ``()`` in Hz. Compressed
  (``np.savez_compressed``: FUSS's silent slots cost nothing), written atomically.

- **The site** (:func:`build_site`): ``index.html`` lists every task and preset with finished
  runs; one page per task and preset holds the paper-style table (``benchmark.tables.render``),
  the sample grid (columns Mixture, Targets, then one per method in the table's order; rows the
  first N evaluation mixtures, the same ones for every method; each cell states that item's
  score from the run's ``scores.parquet``), the training curves, the ablation plots where
  ablation runs exist, and a provenance footer. Images are PNG tiles upscaled with
  nearest-neighbour; audio is 16-bit WAV with ``<audio controls>`` and a small log-magnitude
  spectrogram under each. No server, network or JavaScript: it works from ``file://``.

Audio excerpts on the page are at most ``seconds`` long (default 3 s) and shorter where needed to
keep a page's audio within :data:`AUDIO_BUDGET_MB` (the page states the length used); each
clip is peak-normalised for listening (SI-SDR is scale-invariant). Scores are those of the
whole evaluation item, as in the table.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmark.store import CorruptStoreFile, RunRecord, atomic_write_bytes, iter_run_records

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from tasks.base import EvalSet, Task

__all__ = [
    "AUDIO_BUDGET_MB",
    "DEMO_FILE",
    "DEMO_FORMAT",
    "DEMO_MAX_SECONDS",
    "DemoItems",
    "PageInfo",
    "build_site",
    "demo_arrays",
    "load_demo",
    "write_demo_estimates",
]

#: the run folder's file of stored demo estimates
DEMO_FILE = "demo.npz"
#: version of the ``demo.npz`` layout (module docstring)
DEMO_FORMAT = 1
#: audio kept per demo item (seconds): the loudest window of the mixture
DEMO_MAX_SECONDS = 3.0
#: audio per task page (MB of WAV files and their spectrograms): excerpts are shortened to
#: fit it, so that a page stays under 5 MB
AUDIO_BUDGET_MB = 4.5
#: shortest audio excerpt on a page (seconds), whatever the budget
MIN_EXCERPT_S = 0.5
#: image tiles are upscaled (nearest-neighbour) to about this many pixels on their long side
TILE_PX = 128
#: spectrogram PNG size (width, height) in pixels
SPEC_SIZE = (160, 64)
#: dynamic range of the spectrograms (dB below the clip's maximum)
SPEC_RANGE_DB = 80.0
#: colours of a spectrogram (32 shades of magma: about 3 kB per PNG)
SPEC_LEVELS = 32
#: bytes of one spectrogram PNG, for the page's audio budget (measured: 2-4 kB)
_SPEC_BYTES = 3_500
#: peak of every WAV on the page (full scale = 1)
WAV_PEAK = 0.89
_INT16 = 32767.0


# ============================================================================ storage


def _eval_rows(scores: pd.DataFrame, count: int) -> pd.DataFrame:
    rows = scores[scores["mixture"] < count].sort_values("mixture")
    if list(rows["mixture"]) != list(range(count)):
        raise ValueError(f"the scores lack rows for evaluation mixtures 0..{count - 1}")
    return rows


def _loudest_window(signal: np.ndarray, length: int, hop: int) -> int:
    """First sample of the ``length``-sample window of ``signal`` with the most energy, on a
    grid of ``hop`` samples (the first on ties); 0 when the signal is not longer."""
    if len(signal) <= length:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(signal, dtype=np.float64) ** 2)])
    starts = np.unique(
        np.r_[np.arange(0, len(signal) - length + 1, max(1, hop)), len(signal) - length]
    )
    return int(starts[int(np.argmax(energy[starts + length] - energy[starts]))])


def _quantize(audio: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """int16 samples and float32 peak per signal (over ``axes``); silent signals get peak 0."""
    peak = np.abs(audio).max(axis=axes, keepdims=True)
    safe = np.where(peak > 0, peak, 1.0)
    q = np.clip(np.round(audio / safe * _INT16), -_INT16, _INT16).astype(np.int16)
    return q, np.squeeze(peak, axis=axes).astype(np.float32)


def demo_arrays(
    task: Task,
    data: EvalSet,
    count: int,
    scores: pd.DataFrame | None = None,
    estimates: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """The ``demo.npz`` arrays (module docstring) of the first ``count`` evaluation mixtures.

    Args:
        task: the run's task (its ``modality``, ``mixture_estimate``, ``estimate_order`` and,
            for audio, ``sample_rate``).
        data: the task's evaluation set (``mixtures (N, *D)``, ``sources (N, K, *D)``,
            ``lengths (N,)`` or None).
        count: items to keep, ``1 <= count <= N``.
        scores: the per-mixture scores of ``estimates`` (their ``perm`` column orders the
            estimates); None with ``estimates`` None (mixtures and targets only).
        estimates: ``(N, K, *D)`` (or ``(count, K, *D)``) estimates as scored, or None.

    Returns:
        name -> array, as stored.

    Raises:
        ValueError: ``count`` out of range, or scores without rows for the first ``count``
            mixtures.
    """
    total = int(data.mixtures.shape[0])
    if not 1 <= count <= total:
        raise ValueError(f"demo mixtures must be in 1..{total}, got {count}")
    mixtures = data.mixtures[:count].detach().cpu().float()
    shown = task.mixture_estimate(mixtures)[:, 0].numpy()
    targets = data.sources[:count].detach().cpu().float().numpy()
    out: dict[str, np.ndarray] = {
        "format": np.asarray(DEMO_FORMAT),
        "modality": np.asarray(task.modality),
        "index": np.arange(count, dtype=np.int64),
    }
    aligned = None
    if estimates is not None:
        if scores is None:
            raise ValueError("estimates need their scores (the perm column orders them)")
        est = estimates[:count].detach().cpu().float().numpy()
        est = np.nan_to_num(est, nan=0.0, posinf=0.0, neginf=0.0)  # shown as silence / black
        if "perm" in scores:
            rows = _eval_rows(scores, count)
            order = np.asarray([task.estimate_order(p) for p in rows["perm"]], dtype=np.int64)
        else:  # a plug-in task whose scores record no permutation: the method's own order
            order = np.tile(np.arange(est.shape[1], dtype=np.int64), (count, 1))
        out["aligned"] = np.asarray("perm" in scores)
        aligned = np.take_along_axis(est, order.reshape(order.shape + (1,) * (est.ndim - 2)), 1)
        out["order"] = order
    if task.modality == "image":
        out["mixtures"] = shown.astype(np.float16)
        out["targets"] = targets.astype(np.float16)
        if aligned is not None:
            out["estimates"] = np.clip(aligned, 0.0, 1.0).astype(np.float16)
        return out
    # audio: the loudest DEMO_MAX_SECONDS of each mixture, the same window for every signal
    rate = int(task.sample_rate)
    window = int(round(DEMO_MAX_SECONDS * rate))
    full = shown.shape[-1]
    item_lengths = (
        data.lengths[:count].cpu().numpy().astype(np.int64)
        if getattr(data, "lengths", None) is not None
        else np.full(count, full, dtype=np.int64)
    )
    offsets = np.zeros(count, dtype=np.int64)
    lengths = np.minimum(item_lengths, window)
    for n in range(count):
        offsets[n] = _loudest_window(shown[n, : item_lengths[n]], window, rate // 10)
    width = int(lengths.max())

    def crop(signal: np.ndarray) -> np.ndarray:  # (count, ..., T) -> (count, ..., width)
        out_arr = np.zeros(signal.shape[:-1] + (width,), dtype=np.float32)
        for n in range(count):
            out_arr[n, ..., : lengths[n]] = signal[n, ..., offsets[n] : offsets[n] + lengths[n]]
        return out_arr

    for key, value, axes in (
        ("mixtures", shown, (-1,)),
        ("targets", targets, (-1,)),
        ("estimates", aligned, (-1,)),
    ):
        if value is None:
            continue
        q, peak = _quantize(crop(value), axes)
        out[key], out[f"{key}_peak"] = q, peak
    out.update(
        offsets=offsets,
        lengths=lengths,
        item_lengths=item_lengths,
        sample_rate=np.asarray(rate, dtype=np.int64),
    )
    return out


def write_demo_estimates(
    run_dir: Path, task: Task, cfg: Any, scores: pd.DataFrame, estimates: torch.Tensor
) -> Path | None:
    """Store ``demo.npz`` in ``run_dir``: the first ``cfg.eval.demo_mixtures`` evaluation
    mixtures, their targets and the scored ``estimates`` ``(N, K, *D)`` in the targets' order
    (module docstring). Written atomically; nothing when ``eval.demo_mixtures`` is 0. An
    error while preparing them is logged (the run's ``log.txt``), not raised: the page's
    samples never fail a run that trained and scored.

    Returns:
        The file written, or None.
    """
    count = min(int(getattr(cfg.eval, "demo_mixtures", 0) or 0), len(scores))
    path = Path(run_dir) / DEMO_FILE
    path.unlink(missing_ok=True)  # no stale estimates of an earlier evaluation
    if count <= 0:
        return None
    try:
        arrays = demo_arrays(task, task.eval_set(), count, scores, estimates)
    except Exception:  # noqa: BLE001 - the page's samples must never fail a finished run
        logging.getLogger("benchmark").exception(
            "demo estimates not stored (the demo page will say so); the run is unaffected"
        )
        return None
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class DemoItems:
    """Decoded ``demo.npz`` (float32 arrays; see the module docstring for the shapes).

    Attributes:
        modality: ``image`` or ``audio``.
        index: ``(n,)`` evaluation-set indices.
        mixtures: ``(n, *D)`` mixtures in the sources' scale.
        targets: ``(n, K, *D)``.
        estimates: ``(n, K, *D)`` in the targets' order, or None (mixtures and targets only).
        lengths: audio ``(n,)`` valid samples of the stored window; None for images.
        offsets: audio ``(n,)`` first sample of the window in the evaluation item.
        item_lengths: audio ``(n,)`` valid samples of the whole item.
        sample_rate: audio rate in Hz; None for images.
        aligned: the estimates are in the targets' order (False: the task's scores record no
            permutation, so they are in the method's output order).
    """

    modality: str
    index: np.ndarray
    mixtures: np.ndarray
    targets: np.ndarray
    estimates: np.ndarray | None = None
    lengths: np.ndarray | None = None
    offsets: np.ndarray | None = None
    item_lengths: np.ndarray | None = None
    sample_rate: int | None = None
    aligned: bool = True

    @property
    def count(self) -> int:
        return int(self.mixtures.shape[0])


def _decode(arrays: dict[str, np.ndarray]) -> DemoItems:
    modality = str(arrays["modality"])

    def get(key: str) -> np.ndarray | None:
        if key not in arrays:
            return None
        value = arrays[key]
        if modality == "audio":
            peak = arrays[f"{key}_peak"].astype(np.float32)
            return value.astype(np.float32) / _INT16 * peak[..., None]
        return value.astype(np.float32)

    audio = modality == "audio"
    return DemoItems(
        aligned=bool(arrays["aligned"]) if "aligned" in arrays else True,
        modality=modality,
        index=np.asarray(arrays["index"]),
        mixtures=get("mixtures"),
        targets=get("targets"),
        estimates=get("estimates"),
        lengths=np.asarray(arrays["lengths"]) if audio else None,
        offsets=np.asarray(arrays["offsets"]) if audio else None,
        item_lengths=np.asarray(arrays["item_lengths"]) if audio else None,
        sample_rate=int(arrays["sample_rate"]) if audio else None,
    )


def load_demo(run_dir: Path) -> DemoItems | None:
    """The run's stored demo items, or None when it has no ``demo.npz``.

    Raises:
        CorruptStoreFile: the file cannot be read, or is of a newer format.
    """
    path = Path(run_dir) / DEMO_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        version = int(arrays["format"])
        if version > DEMO_FORMAT:
            raise CorruptStoreFile(
                path, f"format {version} is newer than this code's {DEMO_FORMAT}: update"
            )
        return _decode(arrays)
    except CorruptStoreFile:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise several types
        raise CorruptStoreFile(path, f"unreadable demo file: {exc}") from None


# ============================================================================ the site


@dataclass
class PageInfo:
    """One written task page.

    Attributes:
        task: task name.
        preset: the runs' preset.
        path: the HTML file.
        assets: its folder of PNG/WAV files.
        size_bytes: HTML plus assets.
        mixtures: rows of the sample grid.
        methods: method columns, in the table's order.
        table_format: ``html`` (the table engine's) or ``md`` (its markdown in ``<pre>``: the
            engine has no ``html`` format yet).
        audio_seconds: the audio excerpt length used (None for images).
        notes: what the page says is missing (runs without stored estimates, ...).
    """

    task: str
    preset: str
    path: Path
    assets: Path
    size_bytes: int = 0
    mixtures: int = 0
    methods: list[str] = field(default_factory=list)
    table_format: str = ""
    audio_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Column:
    method: str
    label: str
    record: RunRecord
    items: DemoItems | None = None
    scores: pd.DataFrame | None = None
    note: str = ""
    seeds: list[int] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _is_reference(method: str) -> bool:
    from benchmark.registry import get_method

    try:
        return bool(get_method(method).reference_only)
    except KeyError:
        return False


def _display(method: str) -> str:
    from benchmark.tables import display_name

    return display_name(method)


def _method_rank(task: str):
    """Sort key of methods in the order of the task's first ``table1`` layout (methods it
    does not list follow alphabetically), as the table engine orders its rows."""
    from benchmark.tables import layouts_for

    layouts = layouts_for(task, "table1")
    rows = list(layouts[0].rows or ()) if layouts else []

    def rank(method: str) -> tuple:
        return (rows.index(method) if method in rows else len(rows), method)

    return rank


def _metric_labels(task: str) -> dict[str, str]:
    from benchmark.tables import layouts_for

    labels = {"psnr": "PSNR", "ssim": "SSIM", "si_sdr": "SI-SDR", "si_sdri": "SI-SDRi"}
    for layout in layouts_for(task, "table1"):
        for column in layout.metrics:
            labels.setdefault(column.metric, column.label)
    return labels


#: per-item score shown in each cell: the first of these the scores have, else the task's
#: first metric with a finite value for the item
_CELL_METRICS = ("psnr", "si_sdr")


def _cell_score(row: pd.Series | None, task_metrics: list[str], labels: dict[str, str]) -> str:
    if row is None:
        return ""
    candidates = [m for m in _CELL_METRICS if m in row.index] or [
        m for m in task_metrics if m in row.index
    ]
    for metric in candidates:
        value = row[metric]
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            unit = " dB" if metric.startswith(("psnr", "si_", "fuss_")) else ""
            return f"{labels.get(metric, metric)} {value:.2f}{unit}"
        if metric in _CELL_METRICS:
            return f"{labels.get(metric, metric)} n/a"
    return ""


def _done_records(results_dir: Path) -> tuple[list[RunRecord], list[str]]:
    records, notes = [], []
    for run_dir, record, error in iter_run_records(results_dir, lambda d: _ready(RunRecord(d))):
        if error is not None:
            notes.append(f"skipped unreadable run folder {run_dir}: {error}")
        elif record is not None:
            records.append(record)
    return records, notes


def _ready(record: RunRecord) -> RunRecord | None:
    if record.state != "done" or record.metrics_record is None:
        return None
    record.raw_config  # noqa: B018 - reads config.json (CorruptStoreFile when broken)
    return record


def _pick(records: list[RunRecord]) -> dict[str, tuple[RunRecord, list[int]]]:
    """One run per method: the default settings (fewest ``--set`` overrides), then the lowest
    seed; with the seeds that method has."""
    found: dict[str, tuple[tuple, RunRecord]] = {}
    seeds: dict[str, set[int]] = {}
    for record in records:
        key = (len(record.variant.split()), record.seed, str(record.path))
        seeds.setdefault(record.method, set()).add(record.seed)
        if record.method not in found or key < found[record.method][0]:
            found[record.method] = (key, record)
    return {m: (r, sorted(seeds[m])) for m, (_, r) in found.items()}


def _same_items(a: DemoItems, b: DemoItems, n: int) -> bool:
    """Whether ``b`` holds the same first ``n`` mixtures (and audio windows) as ``a``."""
    if a.modality != b.modality or b.count < n or a.mixtures.shape[1:] != b.mixtures.shape[1:]:
        return False
    if a.modality == "audio" and (
        a.sample_rate != b.sample_rate
        or not np.array_equal(a.offsets[:n], b.offsets[:n])
        or not np.array_equal(a.lengths[:n], b.lengths[:n])
    ):
        return False
    x, y = a.mixtures[:n], b.mixtures[:n]
    scale = max(float(np.abs(x).max()), 1e-6)
    return bool(np.abs(x - y).max() <= 2e-3 * scale)


def _rebuild_items(record: RunRecord, data_root: Path | None, count: int) -> DemoItems | None:
    """Mixtures and targets from the task's evaluation set (no run of the page stored any),
    or None when the data root is not given or lacks the data."""
    if data_root is None:
        return None
    from benchmark.registry import get_task
    from tasks.base import DatasetError

    cfg = record.config
    try:
        task = get_task(cfg.task.name)(cfg.task, Path(data_root))
        data = task.eval_set()
    except (DatasetError, FileNotFoundError, OSError):
        return None
    arrays = demo_arrays(task, data, min(count, int(data.mixtures.shape[0])))
    return _decode(arrays)


# ---------------------------------------------------------------------- asset writers


def _png(array: np.ndarray, path: Path, palette: np.ndarray | None = None) -> None:
    from PIL import Image

    image = Image.fromarray(array)
    if palette is not None:  # a uint8 (H, W) array of palette indices: an "L" image -> "P"
        image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())


def _image_tile(image: np.ndarray, path: Path) -> tuple[int, int]:
    """``(C, H, W)`` in [0, 1] as a PNG upscaled by nearest-neighbour; returns (width, height)."""
    pixels = np.clip(np.round(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))
    scale = max(1, TILE_PX // max(pixels.shape[:2]))
    pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    _png(np.ascontiguousarray(pixels), path)
    return pixels.shape[1], pixels.shape[0]


def _wav(audio: np.ndarray, rate: int, path: Path) -> float:
    """Peak-normalised 16-bit PCM WAV; returns its duration in seconds."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float64)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0:
        audio = audio / peak * WAV_PEAK
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())
    return len(audio) / rate


def _palette() -> np.ndarray:
    """:data:`SPEC_LEVELS` colours of matplotlib's ``magma``, ``(SPEC_LEVELS, 3)`` uint8."""
    from matplotlib import colormaps

    colours = colormaps["magma"](np.linspace(0, 1, SPEC_LEVELS))[:, :3]
    return (colours * 255).round().astype(np.uint8)


def _spectrogram(audio: np.ndarray, rate: int, path: Path, palette: np.ndarray) -> None:
    """A small log-magnitude STFT image (:data:`SPEC_SIZE`; low frequencies at the bottom,
    :data:`SPEC_RANGE_DB` of range below the clip's maximum), Hann window of 32 ms."""
    from PIL import Image

    n_fft = 1 << max(6, int(round(math.log2(0.032 * rate))))
    hop = n_fft // 4
    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    frames = 1 + (len(audio) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(audio[index] * np.hanning(n_fft), axis=1)).T  # (F, frames)
    db = 20 * np.log10(np.maximum(spectrum, 1e-10))
    top = db.max() if np.isfinite(db.max()) else 0.0
    level = np.clip((db - (top - SPEC_RANGE_DB)) / SPEC_RANGE_DB, 0.0, 1.0)[::-1]
    if spectrum.max() <= 0:
        level = np.zeros_like(level)
    image = Image.fromarray((level * 255).astype(np.uint8))
    image = image.resize(SPEC_SIZE, Image.Resampling.BILINEAR)
    shades = (np.asarray(image).astype(np.int64) * SPEC_LEVELS // 256).astype(np.uint8)
    _png(shades, path, palette)


# ---------------------------------------------------------------------- page parts


def _table(results_dir: Path, task: str, preset: str) -> tuple[str, str]:
    """The paper-style table: the engine's ``html`` (with confidence intervals) when it has
    that format, else its markdown in ``<pre>``. Returns ``(html, format)``."""
    from benchmark.tables import render

    try:
        text, _ = render(
            results_dir, task, "html", preset, "table1", None, None, ci=True, compare=None
        )
        return text, "html"
    except (TypeError, ValueError):  # no html format / ci keyword in this version
        text, _ = render(results_dir, task, "md", preset, "table1", None, None)
        return f'<pre class="table-md">{html.escape(text)}</pre>', "md"


def _loss_curves(columns: list[_Column], path: Path) -> bool:
    """Training loss against step, one panel per method (their losses are not on one scale),
    from each shown run's ``curve.csv``. Returns whether any run had a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for column in columns:
        try:
            curve = column.record.curve()
        except CorruptStoreFile:
            curve = None
        if curve is not None and {"step", "loss"} <= set(curve.columns) and len(curve):
            curves.append((column, curve))
    if not curves:
        return False
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, (column, curve) in zip(axes.flat, curves, strict=False):
        ax.plot(curve["step"], curve["loss"], marker="." if len(curve) < 30 else None)
        ax.set_title(column.label, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("training loss", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def _curves(results_dir: Path, task: str, preset: str, columns: list[_Column], assets: Path):
    """``benchmark.figures.curves_figure`` (metric against step and wall time) when it exists
    and finds curves, else the training losses of :func:`_loss_curves`. Returns
    ``(file name or None, caption)``."""
    from benchmark import figures

    curves_figure = getattr(figures, "curves_figure", None)
    if curves_figure is not None:
        path = assets / "curves.png"
        try:
            curves_figure(results_dir, task, preset, path)
            if path.is_file():
                return path.name, "Evaluation metric during training (figure --which curves)."
        except FileNotFoundError:
            pass
    path = assets / "training_loss.png"
    if _loss_curves(columns, path):
        return path.name, (
            "Training loss against step, per method (curve.csv; each method's own objective, "
            "so the panels are not on one scale)."
        )
    return None, "No training curves (the shown runs recorded none)."


def _ablations(results_dir: Path, task: str, preset: str, assets: Path) -> tuple[list[str], str]:
    """``benchmark.figures.ablation_figures`` for the studies with an ablation run of their own
    (a finished grid point that is not the main table's run). Returns ``(file names, note)``."""
    from benchmark.ablation import STUDIES, ablation_results
    from benchmark.figures import ablation_figures
    from benchmark.tables.layouts import DEFAULT_METHODS

    studies = []
    try:
        for study in STUDIES.values():
            found = ablation_results(results_dir, [study], list(DEFAULT_METHODS), task, preset)
            if len(found[(found.state == "done") & ~found.shared.astype(bool)]):
                studies.append(study)
        if not studies:
            return [], ""
        paths = ablation_figures(results_dir, assets, task=task, preset=preset, studies=studies)
    except FileNotFoundError:
        return [], ""
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return [], f"Ablation plots not drawn: {message}"
    return [Path(p).name for p in paths], ""


def _date(record: RunRecord) -> str:
    try:
        return str(record.status.get("updated", ""))
    except CorruptStoreFile:
        return ""


def _short_commit(commit: str) -> str:
    """``<12 hex digits>`` (``+dirty`` kept: uncommitted changes)."""
    dirty = commit.endswith("+dirty")
    return commit.removesuffix("+dirty")[:12] + ("+dirty" if dirty else "")


def _provenance(columns: list[_Column], reference: _Column | None) -> dict[str, Any]:
    rows, versions = [], {}
    for column in ([reference] if reference else []) + columns:
        record = column.record
        prov = record.provenance or {}
        rows.append(
            {
                "method": column.label,
                "seed": record.seed,
                "seeds": ", ".join(map(str, column.seeds)),
                "run": record.run_hash,
                "variant": record.variant,
                "commit": _short_commit(str(prov.get("git_commit", "unknown"))),
                "code_version": prov.get("code_version", ""),
                "evaluated": _date(record),
                "device": prov.get("device", ""),
            }
        )
        for name, version in (prov.get("versions") or {}).items():
            versions.setdefault(name, set()).add(str(version))
    return {
        "runs": rows,
        "versions": [(n, ", ".join(sorted(v))) for n, v in sorted(versions.items())],
    }


# ---------------------------------------------------------------------- one page


def _columns(
    task: str, records: list[RunRecord]
) -> tuple[_Column | None, list[_Column], list[str]]:
    picked = _pick(records)
    rank = _method_rank(task)
    reference, columns, notes = None, [], []
    for method in sorted(picked, key=rank):
        record, seeds = picked[method]
        label = _display(method) + (f" [{record.variant}]" if record.variant else "")
        column = _Column(method, label, record, seeds=seeds)
        try:
            column.items = load_demo(record.path)
            column.scores = record.scores()
        except CorruptStoreFile as exc:
            column.note = f"unreadable: {exc}"
        if column.items is None and not column.note:
            column.note = _no_estimates_note(record)
        if _is_reference(method) and reference is None:
            reference = column
        else:
            columns.append(column)
    return reference, columns, notes


def _no_estimates_note(record: RunRecord) -> str:
    when = _date(record)
    demo_n = record.raw_config.get("eval", {}).get("demo_mixtures")
    if demo_n == 0:
        return "no stored estimates: evaluated with eval.demo_mixtures=0"
    return (
        f"no stored estimates: evaluated{' on ' + when if when else ''} before the demo "
        "estimates were stored, or storing them failed (its log.txt says so). The same "
        "`python -m benchmark run` command evaluates it again from its final weights (no "
        "retraining) and stores them"
    )


def _shown_slots(task_cls: Any, targets: np.ndarray) -> tuple[list[int], int]:
    """Target slots of one item shown on the page: the scored ones (``scored_sources``, e.g.
    speech only for LibriSpeech + FUSS) that are not silent (FUSS's padding). Returns
    ``(slots, silent slots left out)``."""
    scored = getattr(task_cls, "scored_sources", None)
    slots = list(range(targets.shape[0])) if scored is None else list(scored)
    audible = [j for j in slots if float(np.abs(targets[j]).max()) > 0]
    return audible, len(slots) - len(audible)


def _build_page(
    results_dir: Path,
    task: str,
    preset: str,
    records: list[RunRecord],
    out: Path,
    mixtures: int,
    seconds: float,
    data_root: Path | None,
    env: Any,
) -> PageInfo:
    from benchmark.registry import get_task

    task_cls = get_task(task)
    name = f"{_slug(task)}-{_slug(preset)}"
    page = PageInfo(task, preset, out / f"{name}.html", out / f"{name}_files")
    reference, columns, notes = _columns(task, records)
    page.methods = [c.method for c in columns]
    labels = _metric_labels(task)
    task_metrics = list(getattr(task_cls, "metrics", {}))

    # the mixtures and targets: the stored ones (the reference row's first), else rebuilt
    base: DemoItems | None = None
    for column in ([reference] if reference else []) + columns:
        if column.items is not None:
            base = column.items
            break
    rebuilt = False
    if base is None:
        base = _rebuild_items(records[0], data_root, mixtures)
        rebuilt = base is not None
    n = min(mixtures, base.count) if base is not None else 0
    for column in ([reference] if reference else []) + columns:
        if column.items is not None and base is not None and not _same_items(base, column.items, n):
            if column.items.count < n:
                column.note = (
                    f"only {column.items.count} stored estimates (eval.demo_mixtures="
                    f"{column.items.count}); the page shows {n}"
                )
            else:
                column.note = "other evaluation mixtures (its task settings differ): not shown"
            column.items = None
    for column in columns:
        if column.items is not None and column.items.estimates is not None:
            if not column.items.aligned:
                column.note = (
                    "estimates in the method's output order (the task's scores record no "
                    "permutation)"
                )
        if column.note:
            notes.append(f"{column.label}: {column.note}")

    # staging folder, swapped in at the end (a killed build leaves the old page intact)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        grid, seconds_used = _grid(
            task_cls, base, n, reference, columns, stage, seconds, labels, task_metrics
        )
        page.audio_seconds = seconds_used
        page.mixtures = n
        table_html, page.table_format = _table(results_dir, task, preset)
        curves_file, curves_caption = _curves(results_dir, task, preset, columns, stage)
        ablation_files, ablation_note = _ablations(results_dir, task, preset, stage)
        if ablation_note:
            notes.append(ablation_note)
        from benchmark.job import _git_commit

        assets_url = f"{name}_files"
        audio_note = ""
        if base is not None and base.modality == "audio":
            audio_note = (
                f"Audio: {seconds_used:.1f} s excerpts (at most; the loudest part of each "
                f"mixture, the same part in every column) at {base.sample_rate} Hz, 16-bit WAV, "
                "each clip peak-normalised for listening; spectrograms: log magnitude, "
                f"{SPEC_RANGE_DB:.0f} dB range. Scores are those of the whole item."
            )
        source_note = (
            "Mixtures and targets rebuilt from the data root (no run of this page stored "
            "estimates)."
            if rebuilt
            else "Estimates as scored: stored at evaluation (demo.npz), each under the target "
            "the scores matched it to."
        )
        context = {
            "title": f"{task_cls.display_name} · preset {preset}",
            "task": task,
            "preset": preset,
            "table_html": table_html,
            "table_format": page.table_format,
            "grid": grid,
            "n": n,
            "audio_note": audio_note,
            "source_note": source_note,
            "no_items": base is None,
            "assets": assets_url,
            "curves": curves_file,
            "curves_caption": curves_caption,
            "ablations": ablation_files,
            "notes": notes,
            "provenance": _provenance(columns, reference),
            "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "generator_commit": _git_commit(),
            "results_dir": str(results_dir),
        }
        text = env.get_template("demo_page.html.j2").render(**context)
        atomic_write_bytes(stage / ".page.html", text.encode())
        _swap_in(stage, page.assets, page.path)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    page.notes = notes
    page.size_bytes = page.path.stat().st_size + sum(
        f.stat().st_size for f in page.assets.iterdir() if f.is_file()
    )
    return page


def _swap_in(stage: Path, assets: Path, page_path: Path) -> None:
    """Move the staged assets folder to ``assets`` (replacing the old one) and its page to
    ``page_path``."""
    staged_page = stage / ".page.html"
    old = None
    if assets.exists():
        old = assets.with_name(f".{assets.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(assets, old)
    os.replace(stage, assets)
    os.replace(assets / staged_page.name, page_path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _grid(
    task_cls: Any,
    base: DemoItems | None,
    n: int,
    reference: _Column | None,
    columns: list[_Column],
    assets: Path,
    seconds: float,
    labels: dict[str, str],
    task_metrics: list[str],
) -> tuple[dict[str, Any], float | None]:
    """Write the grid's assets into ``assets``; returns the template's grid and the audio
    excerpt length used (None for images)."""
    header = ["Mixture", "Targets"] + [c.label for c in columns]
    notes_row = ["", ""] + [c.note for c in columns]
    rows: list[dict[str, Any]] = []
    if base is None or n == 0:
        return {"header": header, "notes": notes_row, "rows": rows}, None
    audio = base.modality == "audio"
    slots = [_shown_slots(task_cls, base.targets[i]) for i in range(n)]
    seconds_used, excerpt = None, None
    if audio:
        rate = int(base.sample_rate)
        clips = sum(len(s) * (1 + sum(c.items is not None for c in columns)) + 1 for s, _ in slots)
        clips = max(clips, 1)
        budget = (AUDIO_BUDGET_MB * 1e6 - clips * _SPEC_BYTES) / (clips * 2 * rate)
        stored = float(base.lengths[:n].max()) / rate
        seconds_used = max(MIN_EXCERPT_S, math.floor(min(seconds, budget) * 10) / 10)
        seconds_used = min(seconds_used, stored)
        excerpt = int(round(seconds_used * rate))
        palette = _palette()

    def scores_row(column: _Column | None, i: int):
        if column is None or column.scores is None:
            return None
        hit = column.scores[column.scores["mixture"] == int(base.index[i])]
        return hit.iloc[0] if len(hit) else None

    def media(signal: np.ndarray, stem: str, i: int, title: str) -> dict[str, Any]:
        if not audio:
            width, height = _image_tile(signal, assets / f"{stem}.png")
            return {"kind": "image", "src": f"{stem}.png", "w": width, "h": height, "title": title}
        start, length = windows[i]
        clip = signal[start : start + length]
        duration = _wav(clip, rate, assets / f"{stem}.wav")
        _spectrogram(clip, rate, assets / f"{stem}_spec.png", palette)
        return {
            "kind": "audio",
            "src": f"{stem}.wav",
            "spec": f"{stem}_spec.png",
            "duration": f"{duration:.6f}",
            "title": title,
            "silent": float(np.abs(clip).max()) == 0,
        }

    windows: list[tuple[int, int]] = []
    for i in range(n):
        if audio:
            valid = int(base.lengths[i])
            length = min(excerpt, valid)
            start = _loudest_window(base.mixtures[i, :valid], length, rate // 10)
            windows.append((start, length))
    for i in range(n):
        shown, silent = slots[i]
        k_total = base.targets.shape[1]
        where = ""
        if audio and windows[i][1] < int(base.item_lengths[i]):  # an excerpt: say which
            start, length = windows[i]
            t0 = (int(base.offsets[i]) + start) / rate
            where = (
                f"{t0:.1f}–{t0 + length / rate:.1f} s of {int(base.item_lengths[i]) / rate:.1f} s"
            )
        left_out = []
        if silent:
            left_out.append(f"{silent} silent reference slot{'s' if silent > 1 else ''}")
        scored = getattr(task_cls, "scored_sources", None)
        if scored is not None and len(scored) < k_total:
            left_out.append(f"unscored source{'s' if k_total - len(scored) > 1 else ''}")
        cells = [
            {
                "media": [media(base.mixtures[i], f"r{i}_mixture", i, "mixture")],
                "score": _cell_score(scores_row(reference, i), task_metrics, labels),
                "note": where,
                "missing": False,
            },
            {
                "media": [
                    media(base.targets[i, j], f"r{i}_target{j}", i, f"source {j + 1}")
                    for j in shown
                ],
                "score": "",
                "note": ("not shown: " + ", ".join(left_out)) if left_out else "",
                "missing": False,
            },
        ]
        for column in columns:
            if column.items is None:
                cells.append({"media": [], "score": "", "note": "—", "missing": True})
                continue
            stem = f"r{i}_{_slug(column.method)}"
            cells.append(
                {
                    "media": [
                        media(
                            column.items.estimates[i, j],
                            f"{stem}_{j}",
                            i,
                            f"estimate for source {j + 1}",
                        )
                        for j in shown
                    ],
                    "score": _cell_score(scores_row(column, i), task_metrics, labels),
                    "note": "",
                    "missing": False,
                }
            )
        rows.append({"index": int(base.index[i]), "cells": cells})
    return {"header": header, "notes": notes_row, "rows": rows}, seconds_used


# ---------------------------------------------------------------------- the site


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def build_site(
    results_dir: Path,
    out: Path,
    tasks: list[str] | None = None,
    preset: str | None = None,
    mixtures: int = 8,
    data_root: Path | None = None,
    seconds: float = 3.0,
) -> tuple[Path, list[PageInfo], list[str]]:
    """Write the static demo site: ``out/index.html`` and one page per task and preset with
    finished runs (``out/<task>-<preset>.html`` and its folder ``<task>-<preset>_files/``).

    Args:
        results_dir: the results store.
        out: the site folder (created; an existing page of the same task and preset is
            replaced, other files are left alone).
        tasks: only these tasks (None: every task with finished runs).
        preset: only this preset (None: every preset found, one page each).
        mixtures: rows of the sample grid, the first evaluation mixtures (at most what the
            runs stored: ``eval.demo_mixtures``).
        data_root: where to rebuild the mixtures and targets of a page none of whose runs
            stored any (runs evaluated before ``demo.npz`` existed); None: such a page shows
            the table and curves only.
        seconds: longest audio excerpt (shortened to keep a page's audio within
            :data:`AUDIO_BUDGET_MB`).

    Returns:
        ``(index.html, pages, notes)``; notes name skipped unreadable run folders.

    Raises:
        KeyError: an unknown task name (the message lists the registered ones).
        FileNotFoundError: no finished run matches (the message says how to make some).
        ValueError: ``mixtures`` < 1 or ``seconds`` <= 0.
        benchmark.checks.PathError: ``out`` cannot be written.
    """
    from benchmark.checks import check_output_dir, check_results_dir
    from benchmark.registry import get_task

    if mixtures < 1:
        raise ValueError(f"--mixtures must be at least 1, got {mixtures}")
    if not seconds > 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    check_results_dir(results_dir)
    for task in tasks or []:
        get_task(task)  # KeyError listing the valid names
    check_output_dir(out, "--out", "Pass --out with a folder that you can write to.")
    records, notes = _done_records(results_dir)
    every: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        task_name = str(record.raw_config.get("task", {}).get("name", record.task))
        every.setdefault((task_name, record.preset), []).append(record)
    groups = {
        key: runs
        for key, runs in every.items()
        if (not tasks or key[0] in tasks) and (preset is None or key[1] == preset)
    }
    if not groups:
        what = f" for task {', '.join(tasks)}" if tasks else ""
        what += f" at preset {preset!r}" if preset else ""
        raise FileNotFoundError(
            f"no finished runs{what} in {results_dir}: nothing to show. Start some with "
            "`python -m benchmark run --methods ... --task ...`, or see `python -m benchmark "
            "status`."
        )
    env = _environment()
    pages = []
    for task_name, preset_name in sorted(groups):
        pages.append(
            _build_page(
                Path(results_dir),
                task_name,
                preset_name,
                groups[(task_name, preset_name)],
                Path(out),
                mixtures,
                seconds,
                data_root,
                env,
            )
        )
    index = Path(out) / "index.html"
    built = {(page.task, page.preset): page for page in pages}
    entries = []
    for task_name, preset_name in sorted(every):  # every task with finished runs
        page = built.get((task_name, preset_name))
        try:
            task_cls = get_task(task_name)
            title, modality = task_cls.display_name, task_cls.modality
        except KeyError:
            title, modality = task_name, "?"
        entry = {"title": title, "task": task_name, "preset": preset_name, "modality": modality}
        if page is not None:
            methods = ", ".join(_display(m) for m in page.methods) or "(mixture only)"
            entry.update(href=page.path.name, methods=methods, mixtures=page.mixtures)
            entry["size"] = f"{page.size_bytes / 1e6:.2f} MB"
        else:
            name = f"{_slug(task_name)}-{_slug(preset_name)}.html"
            earlier = (Path(out) / name).is_file()
            found = {r.method for r in every[(task_name, preset_name)]}
            found = {m for m in found if not _is_reference(m)}
            methods = sorted(found, key=_method_rank(task_name))
            entry.update(
                href=name if earlier else "",
                methods=", ".join(_display(m) for m in methods),
                mixtures="",
                size="page of an earlier build"
                if earlier
                else (
                    f"not built: python -m benchmark demo --task {task_name} --preset {preset_name}"
                ),
            )
        entries.append(entry)
    text = env.get_template("demo_index.html.j2").render(
        pages=entries,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        results_dir=str(results_dir),
        notes=notes,
    )
    atomic_write_bytes(index, text.encode())
    return index, pages, notes
