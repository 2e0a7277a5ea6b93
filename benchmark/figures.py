"""Figures (matplotlib, Agg backend): the ablation curves of SURF Table 9 and qualitative
separations like SURF Figure 2.

- :func:`ablation_figures`: one PNG per study; per metric a panel with one line per SURF
  variant (mean ± std over seeds as error bars), the paper's Table 9 values dashed. EMA decay is
  plotted against ``1 - alpha`` on a log axis (alpha = 0 at the right end is ``1 - alpha = 1``),
  batch size on a log2 axis, beta as grouped bars.
- :func:`curves_figure`: learning curves (``eval.every``): the task's main curve metric against
  the training step and against the training wall time, one line per method (mean over seeds),
  the ``mixture`` reference on the same mixtures and each method's paper number as horizontal
  references.
- :func:`separation_figure`: rows of evaluation mixtures; per row the mixture, the ground-truth
  pair and each method's separated pair (matched to the ground truth by the PSNR-best
  permutation, as in scoring). The mixtures are the first ``N`` of the task's fixed evaluation
  set, identical for every method; each method's sampling noise is seeded by its run seed.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmark.ablation import STUDIES, Study, ablation_results  # noqa: E402
from benchmark.registry import get_method, get_task  # noqa: E402
from benchmark.store import atomic_write_bytes, iter_records  # noqa: E402
from benchmark.tables.layouts import DEFAULT_METHODS, DEFAULT_TASK, FIGURE2_TASK  # noqa: E402

__all__ = ["ablation_figures", "curves_figure", "curve_points", "pick_runs", "separation_figure"]

_METRIC_LABELS = {
    "psnr": "PSNR (dB) ↑",
    "ssim": "SSIM ↑",
    "lpips": "LPIPS ↓",
    "si_sdr": "SI-SDR (dB) ↑",
    "si_sdri": "SI-SDRi (dB) ↑",
    "fuss_msi": "MSi (dB) ↑",
}


def _save(fig, path: Path, dpi: int) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically.

    Raises:
        benchmark.checks.PathError: ``path`` cannot be written (named, with the reason).
    """
    import io

    from benchmark.checks import PathError, check_output_file

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    check_output_file(path, "figure file")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:  # e.g. disk full, or a folder changed since the check
        raise PathError(
            f"figure file {path}: cannot write it ({exc.strerror or exc}); pass --out with a "
            "path that you can write to",
            path,
            "os error",
        ) from None
    return path


def _display(method: str) -> str:
    try:
        return get_method(method).display_name
    except KeyError:
        return method


def _ablation_plot(
    study: Study, summary: pd.DataFrame, paper: pd.DataFrame, methods: list[str], title: str
):
    metrics = [m for m in _METRIC_LABELS if m in set(summary.metric)]
    with_points = set(summary.method)
    methods = [m for m in methods if m in with_points]  # no legend entry without points
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = [study.label(v) for v in study.values]
    for ax, metric in zip(axes[0], metrics, strict=True):
        if study.name != "beta":
            # the whole grid on the axis, also while only some of its points have runs
            grid = [_x(study, v) for v in study.values]
            ax.set_xlim(min(grid) / 1.5, max(grid) * 1.5)
        for i, method in enumerate(methods):
            color = colors[i % len(colors)]
            part = summary[(summary.method == method) & (summary.metric == metric)]
            ref = paper[(paper.method == method) & (paper.metric == metric)]
            mean = [_lookup(part, v, "mean") for v in study.values]
            std = [_lookup(part, v, "std") for v in study.values]
            ref_v = [_lookup(ref, v, "paper") for v in study.values]
            name = _display(method)
            if study.name == "beta":
                x = np.arange(len(study.values))
                width = 0.8 / len(methods)
                offset = (i - (len(methods) - 1) / 2) * width
                ax.bar(x + offset, mean, width, yerr=std, color=color, label=name, capsize=3)
                if not all(math.isnan(v) for v in ref_v):
                    ax.scatter(
                        x + offset, ref_v, marker="_", s=300, color="k", zorder=3,
                        label="paper (Table 9)" if i == 0 else None,
                    )  # fmt: skip
                ax.set_xticks(x, labels, rotation=15)
            else:
                x = np.array([_x(study, v) for v in study.values])
                ax.errorbar(x, mean, yerr=std, marker="o", color=color, label=name, capsize=3)
                if not all(math.isnan(v) for v in ref_v):
                    ax.plot(x, ref_v, ls="--", marker="x", color=color, alpha=0.6,
                            label=f"{name}, paper")  # fmt: skip
                ax.set_xscale("log", base=10 if study.name == "ema" else 2)
                ax.set_xticks(x, labels if study.name == "batch" else study.values, rotation=15)
                ax.minorticks_off()
                if study.name == "ema":
                    ax.invert_xaxis()  # alpha grows to the right
                    ax.set_xlabel("EMA decay α (log scale in 1 − α)")
                else:
                    ax.set_xlabel("batch size B (log scale)")
        ax.set_ylabel(_METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 55 * len(metrics)), fontsize=10)
    fig.tight_layout()
    return fig


def _x(study: Study, value: str) -> float:
    if study.name == "ema":
        return 1.0 - float(value)
    return float(value)


def _lookup(frame: pd.DataFrame, value: str, column: str) -> float:
    hit = frame[frame.value == value]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def ablation_figures(
    results_dir: Path,
    out_dir: Path,
    task: str = DEFAULT_TASK,
    preset: str = "paper",
    methods: list[str] | None = None,
    studies: list[Study] | None = None,
    overrides: list[tuple[str | None, str, str]] | None = None,
    dpi: int = 120,
) -> list[Path]:
    """Write ``ablation_<study>_<task>_<preset>.png`` for every study with finished runs.

    Returns:
        The written paths.

    Raises:
        FileNotFoundError: no study has a finished run (the message says how to make them).
    """
    from benchmark.tables import LAYOUTS, paper_numbers, summarize

    methods = list(methods or DEFAULT_METHODS)
    studies = studies or list(STUDIES.values())
    paper = paper_numbers()
    paper = paper[paper.source == LAYOUTS["surf_table9"].paper_source]
    paper = paper.rename(columns={"value": "paper", "grid_value": "value"})
    written = []
    for study in studies:
        results = ablation_results(results_dir, [study], methods, task, preset, overrides)
        scores = results.dropna(subset=["metric"]).rename(
            columns={"value": "grid_value", "score": "value"}
        )
        summary = summarize(scores, ["study", "grid_value", "method", "metric"])
        summary = summary.rename(columns={"grid_value": "value"})
        if summary.empty:
            continue
        ref = paper[(paper.task == task) & (paper.study == study.name)]
        lo, hi = int(summary["n"].min()), int(summary["n"].max())
        seeds = f"n = {hi}" if lo == hi else f"n = {lo}–{hi}"
        paper_note = (
            "; paper: SURF Table 9 (in the legend)"
            if len(ref)
            else "; SURF Table 9 has no numbers for this task"
        )
        title = (
            f"SURF ablation: {study.title} · {task} · preset {preset} · "
            f"mean ± std over seeds ({seeds}){paper_note}"
        )
        fig = _ablation_plot(study, summary, ref, methods, title)
        path = Path(out_dir) / f"ablation_{study.name}_{task}_{preset}.png"
        written.append(_save(fig, path, dpi))
    if not written:
        raise FileNotFoundError(
            f"no finished ablation runs for task {task!r}, preset {preset!r} in {results_dir}; "
            f"run `python -m benchmark ablate --study ema|batch|beta --task {task} "
            f"--preset {preset}` first"
        )
    return written


def pick_runs(
    results_dir: Path, task: str, preset: str | None, methods: list[str] | None
) -> dict[str, Path]:
    """One finished run per method for the figure, all of one preset: runs without ``--set``
    overrides first, then the lowest seed.

    Args:
        preset: the preset; None picks the preset with the most of ``methods`` finished (ties:
            ``paper``, then ``cpu``, then ``smoke``), so that one figure never mixes scales.
        methods: methods to show (None: every method with a finished run, in Table 1 order).

    Returns:
        ``{method: run_dir}``; methods without a finished run are left out.
    """
    from benchmark.tables import LAYOUTS

    table_order = list(LAYOUTS["surf_table1"].rows or ())

    def reference(method: str) -> bool:  # the do-nothing row (the mixture), not a separation
        try:
            return bool(get_method(method).reference_only)
        except KeyError:
            return False

    records = [
        r
        for r in iter_records(results_dir)
        if r.task == task
        and not reference(r.method)
        and (methods is None or r.method in methods)
        and r.state == "done"
        and r.model_path.is_file()
    ]
    if preset is None:
        presets: dict[str, set[str]] = {}
        for record in records:
            presets.setdefault(record.preset, set()).add(record.method)
        rank = {"paper": 0, "cpu": 1, "smoke": 2}
        if presets:
            preset = min(presets, key=lambda p: (-len(presets[p]), rank.get(p, 3), p))
    found: dict[str, tuple[tuple, Path]] = {}
    for record in records:
        if preset is not None and record.preset != preset:
            continue
        key = (len(record.variant.split()), record.seed, str(record.path))
        if record.method not in found or key < found[record.method][0]:
            found[record.method] = (key, record.path)
    order = methods or sorted(
        found, key=lambda m: (table_order.index(m) if m in table_order else 99, m)
    )
    return {m: found[m][1] for m in order if m in found}


def _to_image(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W)`` or ``(H, W, 3)`` for imshow."""
    arr = x.clamp(0, 1).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


@torch.no_grad()
def separation_figure(
    results_dir: Path,
    data_root: Path,
    out: Path,
    task: str = FIGURE2_TASK,
    preset: str | None = None,
    methods: list[str] | None = None,
    num_mixtures: int = 4,
    device: str = "cpu",
    dpi: int = 120,
) -> tuple[Path, list[str]]:
    """Qualitative separations like SURF Figure 2.

    Rows: the first ``num_mixtures`` mixtures of the task's fixed evaluation set (shown as the
    average ``m / K`` in [0, 1]). Columns: mixture, ground truth ``x^(1..K)``, then each
    method's ``K`` estimates, clamped to [0, 1] and put in the ground truth's order by the
    PSNR-best permutation (:func:`tasks.image_metrics.image_separation_scores`). Each method is
    the run chosen by :func:`pick_runs`, loaded with :func:`benchmark.job.load_trained_method`,
    and samples with a generator seeded ``10_000 + seed`` (the evaluation's seed).

    Returns:
        ``(path, shown_methods)``.

    Raises:
        FileNotFoundError: no finished run of any requested method (nothing to plot).
        ValueError: ``num_mixtures`` < 1.
    """
    from benchmark.job import load_config, load_trained_method, pick_device
    from tasks.image_metrics import image_separation_scores

    if num_mixtures < 1:
        raise ValueError(f"--num-mixtures must be >= 1, got {num_mixtures}")
    get_task(task)
    for method in methods or []:
        get_method(method)  # KeyError listing the valid names
    runs = pick_runs(results_dir, task, preset, methods)
    for method in methods or []:
        if method not in runs:
            print(f"figure: skipping {method}: no finished run for task {task}"
                  + (f", preset {preset}" if preset else "") + f" in {results_dir}")  # fmt: skip
    if not runs:
        raise FileNotFoundError(
            f"nothing to plot: no finished run of {', '.join(methods) if methods else 'any method'}"
            f" for task {task!r}" + (f" and preset {preset!r}" if preset else "")
            + f" in {results_dir}; train some with `python -m benchmark run --task {task} ...`"
        )  # fmt: skip
    dev = pick_device(device)
    first_cfg = load_config(next(iter(runs.values())))
    task_obj = get_task(task)(first_cfg.task, Path(data_root)).to(dev)
    data = task_obj.eval_set()
    n = min(num_mixtures, data.mixtures.shape[0])
    mixtures, sources = data.mixtures[:n], data.sources[:n]
    k = task_obj.num_sources
    estimates: dict[str, torch.Tensor] = {}
    for method, run_dir in runs.items():
        cfg = load_config(run_dir)
        if to_task_key(cfg) != to_task_key(first_cfg):
            print(f"figure: skipping {method}: its evaluation set differs ({run_dir})")
            continue
        model = load_trained_method(run_dir, Path(data_root), dev, task_obj)
        generator = torch.Generator(device=dev).manual_seed(10_000 + cfg.seed)
        est = model.separate(mixtures.to(dev), generator).float().cpu().clamp(0, 1)
        perms = image_separation_scores(est, sources.cpu())["perm"]
        aligned = torch.empty_like(est)
        for row, perm in enumerate(perms):
            for i, j in enumerate(int(p) for p in perm.split(",")):
                aligned[row, j] = est[row, i]
        estimates[method] = aligned
    cols = 1 + k * (1 + len(estimates))
    fig, axes = plt.subplots(n, cols, figsize=(0.95 * cols, 1.0 * n + 0.5), squeeze=False)
    cmap = "gray" if mixtures.shape[1] == 1 else None
    groups = [("Mixture", None), ("Ground truth", sources.cpu())]
    groups += [(_display(m), e) for m, e in estimates.items()]
    for r in range(n):
        panels = [_to_image(mixtures[r].cpu() / k)]
        for _, images in groups[1:]:
            panels += [_to_image(images[r, j]) for j in range(k)]
        for c, img in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    col = 0
    for name, _ in groups:
        width = 1 if name == "Mixture" else k
        # centred over the group's columns (x in units of one panel's width)
        axes[0][col].set_title(name, fontsize=7, x=width / 2, ha="center")
        col += width
    preset_label = preset or first_cfg.preset
    fig.suptitle(
        f"{get_task(task).display_name} · preset {preset_label} · first {n} evaluation mixtures",
        fontsize=8,
    )
    fig.tight_layout(pad=0.3)
    return _save(fig, Path(out), dpi), list(estimates)


def to_task_key(cfg) -> tuple:
    """What fixes the evaluation set: task name, K, task seed, number of mixtures."""
    t = cfg.task
    return (t.name, t.num_sources, t.seed, t.eval_mixtures)


def curve_points(results_dir: Path, task: str, preset: str | None = None) -> pd.DataFrame:
    """Every learning-curve point (``eval_curve.csv``) of ``task`` in the store, long format.

    Args:
        results_dir: the results folder.
        task: task name.
        preset: only this preset (None: all).

    Returns:
        Columns ``method, seed, preset, variant, state, step, train_time_s, metric, value``,
        one row per point and curve metric; runs still training count (their state says so).
    """
    rows = []
    for record in iter_records(results_dir):
        if record.task != task or not (record.path / "eval_curve.csv").is_file():
            continue
        if preset is not None and record.preset != preset:
            continue
        points = pd.read_csv(record.path / "eval_curve.csv")
        metrics = [c for c in points.columns if c not in ("step", "train_time_s", "eval_time_s")]
        for point in points.itertuples(index=False):
            for metric in metrics:
                rows.append(
                    {
                        "method": record.method,
                        "seed": record.seed,
                        "preset": record.preset,
                        "variant": record.variant,
                        "state": record.state,
                        "step": int(point.step),
                        "train_time_s": float(point.train_time_s),
                        "metric": metric,
                        "value": float(getattr(point, metric)),
                    }
                )
    columns = ["method", "seed", "preset", "variant", "state", "step", "train_time_s"]
    return pd.DataFrame(rows, columns=[*columns, "metric", "value"])


def _mixture_reference(results_dir: Path, task: str, preset: str, metric: str, n: int):
    """The ``mixture`` row's ``metric`` on the first ``n`` evaluation mixtures (the curve's)."""
    for record in iter_records(results_dir):
        try:
            reference = bool(get_method(record.method).reference_only)
        except KeyError:
            reference = False
        if reference and record.task == task and record.preset == preset and record.is_done():
            scores = record.scores()
            if scores is not None and metric in scores:
                return float(scores[metric].iloc[:n].mean())
    return None


def curve_label(method: str, variant: str, seeds: int, states: set[str]) -> str:
    """A learning curve's legend entry: ``SURF (Self-Remixing) [beta=0.5] (3 seeds)``, then the
    states of its runs that are not ``done``: ``(training)`` for a run being trained now
    (``running``), its state for one that stopped (``preempted``, ``interrupted``, ...)."""
    label = _display(method) + (f" [{variant}]" if variant else "")
    label += f" ({seeds} seeds)" if seeds > 1 else ""
    unfinished = sorted(states - {"done"})
    if unfinished:
        label += " (" + ", ".join("training" if x == "running" else x for x in unfinished) + ")"
    return label


def curves_figure(
    results_dir: Path,
    task: str,
    preset: str | None,
    out: Path,
    methods: list[str] | None = None,
    dpi: int = 120,
) -> Path:
    """Learning curves of every method of ``task`` (one preset) on one figure: the task's main
    curve metric against the training step (left) and the training wall time (right), the mean
    over seeds per method, the ``mixture`` reference on the same evaluation mixtures (dotted)
    and each method's paper number (dashed, its colour) as horizontal lines.

    Args:
        results_dir: the results folder.
        task: task name.
        preset: the preset (None: the one with the most curves).
        out: the PNG file.
        methods: methods to show (None: every method with a curve, in Table 1 order).
        dpi: resolution.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: no run of ``task`` has learning-curve points (the message says how
            to record them: ``eval.every``).
    """
    from benchmark.tables import LAYOUTS, paper_numbers

    points = curve_points(results_dir, task, preset)
    if methods is not None:
        points = points[points.method.isin(methods)]
    if points.empty:
        raise FileNotFoundError(
            f"no learning curves for task {task!r} in {results_dir}: runs record them with "
            "--set eval.every=N (on in the cpu and paper presets)"
        )
    if preset is None:
        preset = points.groupby("preset").method.nunique().idxmax()
        points = points[points.preset == preset]
    try:
        metric = (get_task(task).curve_metrics or (next(iter(get_task(task).metrics)),))[0]
    except KeyError:
        metric = sorted(points.metric.unique())[0]
    points = points[points.metric == metric]
    order = list(LAYOUTS["surf_table1"].rows or ())
    lines = sorted(
        {(r.method, r.variant) for r in points.itertuples(index=False)},
        key=lambda mv: (order.index(mv[0]) if mv[0] in order else 99, mv[0], mv[1]),
    )
    paper = paper_numbers()
    paper = paper[(paper.task == task) & (paper.metric == metric) & (paper.variant == "")]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods_drawn: dict[str, str] = {}
    for i, (method, variant) in enumerate(lines):
        colour = colours[i % len(colours)]
        part = points[(points.method == method) & (points.variant == variant)]
        mean = part.groupby("step").agg(value=("value", "mean"), time=("train_time_s", "mean"))
        seeds = part.seed.nunique()
        label = curve_label(method, variant, seeds, set(part.state))
        axes[0].plot(mean.index, mean.value, marker=".", color=colour, label=label)
        axes[1].plot(mean.time / 60.0, mean.value, marker=".", color=colour)
        methods_drawn.setdefault(method, colour)
    for method, colour in methods_drawn.items():
        ref = paper[paper.method == method]
        if len(ref):  # the paper's number of the method's default setting
            for ax in axes:
                ax.axhline(float(ref.value.iloc[0]), color=colour, linestyle="--", linewidth=0.8)
    n = int(get_curve_mixtures(results_dir, task, preset) or 0)
    mixture = _mixture_reference(results_dir, task, preset, metric, n) if n else None
    if mixture is not None:
        for ax in axes:
            ax.axhline(mixture, color="black", linestyle=":", linewidth=1.0)
        axes[0].plot([], [], color="black", linestyle=":", label="Mixture (no separation)")
    if len(paper):
        axes[0].plot([], [], color="grey", linestyle="--", label="paper (method's colour)")
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training wall time (min, curve points excluded)")
    axes[0].set_ylabel(_METRIC_LABELS.get(metric, metric))
    try:
        title = get_task(task).display_name
    except KeyError:
        title = task
    fig.suptitle(f"Learning curves · {title} · preset {preset} · {n} evaluation mixtures")
    axes[0].legend(fontsize=8, loc="best")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out), dpi)


def get_curve_mixtures(results_dir: Path, task: str, preset: str) -> int | None:
    """The number of evaluation mixtures of the curves of ``task`` at ``preset`` (their
    ``eval.curve_mixtures``, capped by the evaluation set), or None without curves."""
    for record in iter_records(results_dir):
        if record.task == task and record.preset == preset:
            if (record.path / "eval_curve.csv").is_file():
                cfg = record.raw_config
                return min(cfg["eval"]["curve_mixtures"], cfg["task"]["eval_mixtures"])
    return None
