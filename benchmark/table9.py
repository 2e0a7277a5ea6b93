"""SURF Table 9 (Appendix E.1): the EMA / batch / beta ablations of both SURF variants, with the
paper's numbers beside ours (``results/paper/surf_table9.csv``).

Cells are ``mean ± std (n seeds)`` (sample std, 0 for one seed); the best mean per study,
method and metric is bold (PSNR and SSIM highest, LPIPS lowest), in our columns and in the
paper's. A metric that was not computed (LPIPS until it is implemented) shows ``n/a``: no number
is ever shown for it, and the footnote gives the reason (``benchmark.perceptual_eval``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.ablation import (
    DEFAULT_METHODS,
    DEFAULT_TASK,
    STUDIES,
    Study,
    ablation_results,
    stored_presets,
)
from benchmark.registry import get_method, get_task
from benchmark.tables import PAPER_DIR

__all__ = ["TABLE9_METRICS", "paper_table9", "render_table9", "summarize_ablation"]

#: metric -> True when higher is better (SURF Table 9 columns)
TABLE9_METRICS = {"psnr": True, "ssim": True, "lpips": False}
_ARROWS = {True: "↑", False: "↓"}


def paper_table9() -> pd.DataFrame:
    """SURF Table 9 as printed: columns ``task, study, value, method, metric, paper, source``."""
    path = PAPER_DIR / "surf_table9.csv"
    if not path.is_file():
        raise FileNotFoundError(f"the paper's Table 9 numbers are missing: {path}")
    return pd.read_csv(path, dtype={"value": str})


def summarize_ablation(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (0 for one seed) and number of seeds per (study, value, method, metric).

    Args:
        results: :func:`benchmark.ablation.ablation_results`.
    """
    keys = ["study", "value", "method", "metric"]
    done = results.dropna(subset=["metric"])
    if done.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n"])
    grouped = done.groupby(keys)["score"].agg(["mean", "std", "count"]).reset_index()
    grouped = grouped.rename(columns={"count": "n"})
    grouped["std"] = grouped["std"].fillna(0.0)
    return grouped


def _digits(metric: str) -> int:
    return 2 if metric == "psnr" else 3


def _best(values: dict[str, float], higher: bool, digits: int) -> set[str]:
    """Grid values whose mean is the best at the printed precision (ties all bold)."""
    finite = {k: round(v, digits) for k, v in values.items() if not math.isnan(v)}
    if len(finite) < 2:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def _block(
    task: str,
    preset: str,
    studies: list[Study],
    methods: list[str],
    results: pd.DataFrame,
    paper: pd.DataFrame,
) -> str:
    summary = summarize_ablation(results)
    try:
        title = get_task(task).display_name
    except KeyError:
        title = task
    seeds = sorted(results.seed.unique())
    n_mix = results["n_mixtures"].dropna()
    header = f"### SURF Table 9 · {title} · preset `{preset}` · seeds {','.join(map(str, seeds))}"
    if len(n_mix):
        header += f" · {int(n_mix.max()):,} evaluation mixtures"
    cols = ["Ablation", "Variant"]
    for method in methods:
        try:
            name = get_method(method).display_name
        except KeyError:
            name = method
        for metric, higher in TABLE9_METRICS.items():
            cols += [f"{name} {metric.upper()} {_ARROWS[higher]}", "paper"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    not_computed = False
    for study in studies:
        ours: dict[tuple[str, str], dict[str, float]] = {}
        theirs: dict[tuple[str, str], dict[str, float]] = {}
        cells: dict[tuple[str, str, str], tuple[str, str]] = {}
        for value in study.values:
            for method in methods:
                for metric in TABLE9_METRICS:
                    hit = summary[
                        (summary.study == study.name)
                        & (summary.value == value)
                        & (summary.method == method)
                        & (summary.metric == metric)
                    ]
                    p = paper[
                        (paper.task == task)
                        & (paper.study == study.name)
                        & (paper.value == value)
                        & (paper.method == method)
                        & (paper.metric == metric)
                    ]
                    mean = float(hit["mean"].iloc[0]) if len(hit) else float("nan")
                    ref = float(p["paper"].iloc[0]) if len(p) else float("nan")
                    ours.setdefault((method, metric), {})[value] = mean
                    theirs.setdefault((method, metric), {})[value] = ref
                    d = _digits(metric)
                    if len(hit):
                        row = hit.iloc[0]
                        ours_txt = f"{row['mean']:.{d}f} ± {row['std']:.{d}f} ({int(row['n'])})"
                    else:
                        ours_txt = "n/a"
                        not_computed = True
                    cells[(value, method, metric)] = (
                        ours_txt,
                        "–" if math.isnan(ref) else f"{ref:.{d}f}",
                    )
        best_ours = {k: _best(v, TABLE9_METRICS[k[1]], _digits(k[1])) for k, v in ours.items()}
        best_theirs = {k: _best(v, TABLE9_METRICS[k[1]], _digits(k[1])) for k, v in theirs.items()}
        for i, value in enumerate(study.values):
            shared = results[
                (results.study == study.name) & (results.value == value) & results.shared
            ]
            label = study.label(value) + (" *" if len(shared) else "")
            row = [study.title if i == 0 else "", label]
            for method in methods:
                for metric in TABLE9_METRICS:
                    ours_txt, ref_txt = cells[(value, method, metric)]
                    if value in best_ours[(method, metric)]:
                        ours_txt = f"**{ours_txt}**"
                    if value in best_theirs[(method, metric)]:
                        ref_txt = f"**{ref_txt}**"
                    row += [ours_txt, ref_txt]
            lines.append("| " + " | ".join(row) + " |")
    notes = [
        "",
        "Cells: mean ± std over seeds (number of seeds); bold: best of the study per method and "
        "metric. `paper`: SURF Table 9 (CIFAR-10, paper-scale training; other tasks and "
        "presets are not comparable in magnitude). * the preset's own value: the main-table "
        "run, shared with `python -m benchmark table`, not recomputed.",
    ]
    from benchmark.perceptual_eval import unavailable_notes

    done_dirs = sorted(set(results[results.metric.notna()].run_dir))
    reasons, how = unavailable_notes(done_dirs, ("lpips",))
    notes += how
    if not_computed:
        notes.append(
            "n/a: not computed (LPIPS weights missing, or the run has not finished); no number "
            "is reported for a metric that was not computed."
        )
        notes += [f"n/a reason: {reason}" for reason in reasons]
    pending = results[results.metric.isna()].drop_duplicates(["study", "value", "method", "seed"])
    for (method, seed, state), part in pending.groupby(["method", "seed", "state"]):
        points = ", ".join(
            f"{r.study} {STUDIES[r.study].label(r.value)}" for r in part.itertuples(index=False)
        )
        what = "Not run" if state == "absent" else f"Not finished ({state})"
        notes.append(f"{what}: {method} seed {seed}: {points}.")
    return "\n".join(lines + notes)


def render_table9(
    results_dir: Path,
    task: str | None = None,
    preset: str | None = None,
    methods: list[str] | None = None,
    overrides: list[tuple[str | None, str, str]] | None = None,
    fmt: str = "md",
) -> str:
    """Render SURF Table 9 from the results store.

    Args:
        results_dir: results directory.
        task: task of the ablation (default ``cifar10``, as in the paper).
        preset: one preset (None: every preset with stored SURF runs for the task).
        methods: SURF variants (default ``surf_sr, surf_rm``).
        overrides: the ``--set`` overrides the ablation was run with.
        fmt: ``md`` or ``csv`` (long: ``task, preset, study, value, method, metric, mean, std,
            n, paper``).

    Returns:
        The table as text, or a hint on how to produce it when nothing is stored.
    """
    task = task or DEFAULT_TASK
    methods = list(methods or DEFAULT_METHODS)
    studies = list(STUDIES.values())
    paper = paper_table9()
    presets = [preset] if preset else stored_presets(results_dir, task, methods)
    blocks, frames = [], []
    for p in presets:
        results = ablation_results(results_dir, studies, methods, task, p, overrides)
        if results.empty or results.metric.isna().all():
            continue
        # a variant with no run at all in this preset gets no columns
        started = results[results.state != "absent"].method.unique()
        shown = [m for m in methods if m in started]
        results = results[results.method.isin(shown)]
        blocks.append(_block(task, p, studies, shown, results, paper))
        summary = summarize_ablation(results).assign(task=task, preset=p)
        frames.append(summary)
    if not blocks:
        return (
            f"no finished ablation runs for task {task!r} in {results_dir}. Start one with "
            f"`python -m benchmark ablate --study ema|batch|beta --task {task}`."
        )
    if fmt == "csv":
        long = pd.concat(frames, ignore_index=True)
        long = long.merge(
            paper[["task", "study", "value", "method", "metric", "paper"]],
            on=["task", "study", "value", "method", "metric"],
            how="left",
        )
        cols = ["task", "preset", "study", "value", "method", "metric", "mean", "std", "n"]
        return long[[*cols, "paper"]].to_csv(index=False)
    return "\n\n".join(blocks)
