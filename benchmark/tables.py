"""Paper-style tables from the results store (pandas).

``md`` is shaped like SURF Table 1: one row per method (the ``mixture`` reference first), the
"Unsupervised" and "Generative" property columns, then per metric ``mean ± std (n)`` over seeds
with the paper's number beside it. ``csv`` is long format with the columns
``task,preset,method,variant,metric,mean,std,n,paper``. Only finished (``done``) runs count;
unfinished ones are listed under the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.audio_tables import AUDIO_LAYOUTS, render_audio_task
from benchmark.perceptual_eval import unavailable_notes
from benchmark.registry import get_method, get_task
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status

__all__ = ["METHOD_ORDER", "collect_results", "paper_numbers", "render_table", "summarize"]

#: row order of SURF Table 1 (methods not listed come after, alphabetically)
METHOD_ORDER = [
    "mixture",
    "supervised",
    "floss",
    "basis",
    "mixit",
    "mixpit",
    "mixcycle",
    "remixit",
    "self_remixing",
    "surf_rm",
    "surf_sr",
]
#: metric columns of SURF Table 1 and their direction
TABLE1_METRICS = {"psnr": "↑", "lpips": "↓", "ssim": "↑", "fid": "↓"}
#: metrics of SURF Table 2 (IS and FID of the extra separation set, benchmark/perceptual_eval.py)
TABLE2_METRICS = ("table2_is", "table2_is_std", "table2_fid")
PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"


def collect_results(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every run folder.

    Returns:
        ``(scores, runs)``: ``scores`` long format (task, preset, method, variant, seed, metric,
        value) of finished runs; ``runs`` one row per run with its state.
    """
    score_rows, run_rows = [], []
    for run_dir in iter_run_dirs(results_dir):
        info = read_json(run_dir / "config.json")
        cfg = info["config"]
        state = read_status(run_dir)["state"]
        key = {
            "task": cfg["task"]["name"],
            "preset": cfg["preset"],
            "method": cfg["method"],
            "variant": " ".join(cfg.get("overrides") or []),
            "seed": cfg["seed"],
        }
        run_rows.append({**key, "state": state, "run_dir": str(run_dir)})
        if state != "done":
            continue
        record = RunRecord(run_dir)
        n_mix = record.counts.get("n_mixtures")
        for metric, value in record.metric_values().items():
            score_rows.append({**key, "metric": metric, "value": value, "n_mixtures": n_mix})
    scores = pd.DataFrame(
        score_rows,
        columns=["task", "preset", "method", "variant", "seed", "metric", "value", "n_mixtures"],
    )
    runs = pd.DataFrame(
        run_rows, columns=["task", "preset", "method", "variant", "seed", "state", "run_dir"]
    )
    return scores, runs


def paper_numbers() -> pd.DataFrame:
    """The papers' reported numbers from ``results/paper/*.csv`` (task, method, metric, value)."""
    frames = [pd.read_csv(p) for p in sorted(PAPER_DIR.glob("*.csv"))]
    # ablation tables (a ``study`` column, e.g. surf_table9.csv) are read by benchmark.table9
    frames = [f for f in frames if "study" not in f.columns]
    if not frames:
        return pd.DataFrame(columns=["task", "method", "metric", "value", "source"])
    table = pd.concat(frames, ignore_index=True)
    if "label" in table:  # rows of one setting of a method (sparse-MixIT Table 1): audio_tables
        table = table[table["label"].isna()].drop(columns=["label", "variant"], errors="ignore")
    return table


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation (0 for one seed) and number of seeds per
    (task, preset, method, variant, metric), with the paper's value where it has one."""
    keys = ["task", "preset", "method", "variant", "metric"]
    if scores.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "paper", "n_mixtures"])
    grouped = scores.groupby(keys, dropna=False)
    summary = grouped["value"].agg(["mean", "std", "count"]).reset_index()
    summary = summary.rename(columns={"count": "n"})
    summary["std"] = summary["std"].fillna(0.0)
    summary["n_mixtures"] = grouped["n_mixtures"].max().values
    paper = paper_numbers()[["task", "method", "metric", "value"]].rename(
        columns={"value": "paper"}
    )
    summary = summary.merge(paper, on=["task", "method", "metric"], how="left")
    return summary


def _order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def _digits(metric: str) -> int:
    return 2 if metric in ("psnr", "fid", "si_sdr", "si_sdri", *TABLE2_METRICS) else 3


def _method_label(method: str) -> tuple[str, str, str]:
    try:
        cls = get_method(method)
    except KeyError:
        return method, "?", "?"
    if cls.reference_only:
        return cls.display_name, "–", "–"
    return cls.display_name, "✓" if cls.unsupervised else "×", "✓" if cls.generative else "×"


def _block(summary: pd.DataFrame, task: str, preset: str, runs: pd.DataFrame) -> str:
    part = summary[(summary.task == task) & (summary.preset == preset)]
    try:
        task_cls = get_task(task)
        title, task_metrics = task_cls.display_name, list(task_cls.metrics)
    except KeyError:
        title, task_metrics = task, sorted(part.metric.unique())
    metrics = task_metrics + [m for m in TABLE1_METRICS if m not in task_metrics]
    n_mix = part["n_mixtures"].dropna()
    header = f"### {title} · preset `{preset}`"
    if len(n_mix):
        header += f" · {int(n_mix.max()):,} evaluation mixtures"
    cols = ["Method", "Unsupervised", "Generative"]
    for metric in metrics:
        arrow = TABLE1_METRICS.get(metric, "↑")
        cols += [f"{metric.upper()} {arrow}", "paper"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    not_computed = False
    rows = part[["method", "variant"]].drop_duplicates()
    rows = sorted(rows.itertuples(index=False), key=lambda r: (_order(r.method), r.variant))
    for method, variant in rows:
        name, unsup, gen = _method_label(method)
        if variant:
            name += f" [{variant}]"
        cells = [name, unsup, gen]
        for metric in metrics:
            hit = part[
                (part.method == method) & (part.variant == variant) & (part.metric == metric)
            ]
            if len(hit):
                row = hit.iloc[0]
                cells.append(_fmt(row["mean"], row["std"], int(row["n"]), _digits(metric)))
                paper = row["paper"]
            else:
                cells.append("n/a")
                not_computed = True
                paper_rows = paper_numbers()
                match = paper_rows[
                    (paper_rows.task == task)
                    & (paper_rows.method == method)
                    & (paper_rows.metric == metric)
                ]
                paper = match["value"].iloc[0] if len(match) else float("nan")
            cells.append(
                "–"
                if paper is None or (isinstance(paper, float) and math.isnan(paper))
                else f"{paper:.{_digits(metric)}f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Cells: mean ± std over seeds (number of seeds). `paper`: SURF Table 1 (5,000 "
        "mixtures, paper-scale training); numbers at the smoke/cpu presets are not comparable "
        "in magnitude.",
    ]
    done_dirs = list(
        runs[(runs.task == task) & (runs.preset == preset) & (runs.state == "done")].run_dir
    )
    reasons, how = unavailable_notes(done_dirs)
    notes += how
    if not_computed:
        notes.append("n/a: not computed; no number is reported for a metric that was not computed.")
        notes += [f"n/a reason: {reason}" for reason in reasons]
    pending = runs[(runs.task == task) & (runs.preset == preset) & (runs.state != "done")]
    for row in pending.itertuples(index=False):
        notes.append(f"Not finished: {row.method} seed {row.seed} ({row.state}).")
    return "\n".join(lines + notes)


def _cell(part: pd.DataFrame, method: str, variant: str, metric: str):
    hit = part[(part.method == method) & (part.variant == variant) & (part.metric == metric)]
    return hit.iloc[0] if len(hit) else None


def _fmt_row(row, digits: int = 2) -> str:
    return "n/a" if row is None else _fmt(row["mean"], row["std"], int(row["n"]), digits)


def _block_table2(summary: pd.DataFrame, task: str, preset: str, runs: pd.DataFrame) -> str:
    """SURF Table 2: Inception Score and FID of the extra separation set, paper beside."""
    part = summary[(summary.task == task) & (summary.preset == preset)]
    try:
        title = get_task(task).display_name
    except KeyError:
        title = task
    cols = ["Method", "Inception Score ↑", "IS split std", "paper IS", "FID ↓", "paper FID"]
    lines = [
        f"### {title} · preset `{preset}` · SURF Table 2",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    paper_rows = paper_numbers()
    paper_rows = paper_rows[paper_rows.task == task]

    def paper(method: str, metric: str) -> float | None:
        hit = paper_rows[(paper_rows.method == method) & (paper_rows.metric == metric)]
        return float(hit["value"].iloc[0]) if len(hit) else None

    not_computed = False
    rows = part[["method", "variant"]].drop_duplicates()
    for method, variant in sorted(
        rows.itertuples(index=False), key=lambda r: (_order(r.method), r.variant)
    ):
        name = _method_label(method)[0] + (f" [{variant}]" if variant else "")
        cells = [name]
        is_row = _cell(part, method, variant, "table2_is")
        std_row = _cell(part, method, variant, "table2_is_std")
        fid_row = _cell(part, method, variant, "table2_fid")
        cells.append(_fmt_row(is_row))
        cells.append(f"{std_row['mean']:.2f}" if std_row is not None else "n/a")
        p_is, p_std = paper(method, "table2_is"), paper(method, "table2_is_std")
        cells.append("–" if p_is is None else f"{p_is:.2f} ± {p_std:.2f}")
        cells.append(_fmt_row(fid_row))
        p_fid = paper(method, "table2_fid")
        cells.append("–" if p_fid is None else f"{p_fid:.2f}")
        not_computed |= is_row is None or fid_row is None
        lines.append("| " + " | ".join(cells) + " |")
    done_dirs = list(
        runs[(runs.task == task) & (runs.preset == preset) & (runs.state == "done")].run_dir
    )
    reasons, how = unavailable_notes(done_dirs, groups=("table2",))
    notes = [
        "",
        "Cells: mean ± std over seeds (number of seeds); IS split std: the Inception Score's "
        "std over its splits (mean over seeds), the ± of the paper's column. `paper`: SURF "
        "Table 2 (CIFAR-10, 25,000 mixtures = 50,000 separated images; its 'Average' row is "
        "the mixture row).",
        *how,
    ]
    if not_computed:
        notes.append("n/a: not computed; no number is reported for a metric that was not computed.")
        notes += [f"n/a reason: {reason}" for reason in reasons]
    return "\n".join(lines + notes)


def render_table(
    results_dir: Path,
    task: str | None = None,
    fmt: str = "md",
    preset: str | None = None,
    which: str = "table1",
) -> str:
    """Render the results table.

    Args:
        results_dir: results directory.
        task: restrict to one task (None: all tasks found).
        fmt: ``md``, ``latex`` or ``csv``.
        preset: restrict to one preset.
        which: ``table1`` (SURF Table 1: PSNR, LPIPS, SSIM, FID and the task's metrics) or
            ``table2`` (SURF Table 2: Inception Score and FID of the extra separation set).

    Raises:
        ValueError: unknown ``which``.

    Returns:
        The table as text (a hint when there are no results yet).
    """
    scores, runs = collect_results(results_dir)
    if task is not None:
        scores, runs = scores[scores.task == task], runs[runs.task == task]
    if preset is not None:
        scores, runs = scores[scores.preset == preset], runs[runs.preset == preset]
    if which not in ("table1", "table2"):
        raise ValueError(f"unknown table {which!r}; valid: table1, table2")
    summary = summarize(scores)
    if which == "table2" and fmt != "md":
        summary = summary[summary.metric.isin(TABLE2_METRICS)]
    if fmt == "csv":
        return summary[
            ["task", "preset", "method", "variant", "metric", "mean", "std", "n", "paper"]
        ].to_csv(index=False)
    if summary.empty:
        where = f" for task {task!r}" if task else ""
        return (
            f"no finished runs{where} in {results_dir}. Start one with "
            "`python -m benchmark run --methods ... --task ...`."
        )
    if fmt == "latex":
        wide = summary.assign(
            cell=[
                _fmt(m, s, int(n), _digits(k))
                for m, s, n, k in zip(
                    summary["mean"], summary["std"], summary["n"], summary["metric"], strict=True
                )
            ]
        ).pivot_table(
            index=["task", "preset", "method", "variant"],
            columns="metric",
            values="cell",
            aggfunc="first",
        )
        return wide.to_latex()
    blocks = []
    block = _block_table2 if which == "table2" else _block
    for t, p in sorted(summary[["task", "preset"]].drop_duplicates().itertuples(index=False)):
        if t in AUDIO_LAYOUTS:  # paper-shaped audio tables (SURF Tables 3, 4; MixPIT Table I)
            blocks.append(render_audio_task(summary, t, p, runs))
            continue
        blocks.append(block(summary, t, p, runs))
    return "\n\n".join(blocks)
