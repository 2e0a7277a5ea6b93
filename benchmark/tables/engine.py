"""The table engine: one results loader, one paper-number loader, one summarizer and one cell
formatter render any :class:`~benchmark.tables.layouts.TableLayout` as ``md``, ``latex``,
``csv`` or ``html``.

- :func:`load_results` reads every run folder through :mod:`benchmark.store` into one tidy
  long frame; a folder with a corrupt file is kept as a ``corrupt`` row and reported under the
  tables, the others still render.
- :func:`paper_numbers` reads every ``results/paper/*.csv`` (one normalised format).
- :func:`summarize`: mean, sample std (NaN for one seed) and number of seeds per group.
- :func:`format_cell`: ``mean ± std (n=3)``; one seed ``mean (n=1)`` (no fake spread);
  ``n/a`` when not computed. The paper's number is beside ours (``–``: the paper has none).
- ``ci=True`` (``table --ci``): cells ``mean [low, high] (n=seeds)``, the 95 % interval of
  :mod:`benchmark.tables.stats` (one seed: BCa bootstrap over the evaluation mixtures of
  ``scores.parquet``; several seeds: t-interval over seeds); ``compare="A"``
  (``table --compare A``): a ``Δ`` column per metric, the row minus method A on the same
  evaluation mixtures with its interval, bold where it excludes 0. Both say under the table
  which interval was used.

Only finished (``done``) runs count; unfinished ones are listed under the tables. ``csv`` is
long format, one line per cell: ``table, task, preset, method, variant, study, grid_value,
metric, mean, std, n, n_mixtures, paper, paper_label``. ``latex`` is a fragment of booktabs
tables (its first line names the packages it needs) that compiles with ``pdflatex``.
``csv`` adds ``ci_low, ci_high, n_items, interval`` (with ``ci``) and ``compare, diff,
diff_low, diff_high, diff_n_items, diff_interval, significant`` (with ``compare``). ``html``
is a self-contained fragment (``<section>`` per task and preset, ``<table>`` per paper table,
inline styles, no CSS or script files) for the demo page.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.perceptual_eval import unavailable_notes
from benchmark.registry import get_method, get_task
from benchmark.store import CorruptStoreFile, RunRecord, iter_records
from benchmark.tables import stats as st
from benchmark.tables.layouts import LAYOUTS, WHICH, MetricColumn, TableLayout, layouts_for

__all__ = [
    "FORMATS",
    "PAPER_COLUMNS",
    "PAPER_DIR",
    "RESULT_COLUMNS",
    "display_name",
    "format_cell",
    "format_interval",
    "latex_escape",
    "load_results",
    "paper_numbers",
    "render",
    "render_table",
    "summarize",
]

PAPER_DIR = Path(__file__).resolve().parent.parent.parent / "results" / "paper"
#: columns of every ``results/paper/*.csv`` (``study``/``grid_value``: Table 9's grid points)
PAPER_COLUMNS = tuple("task source method variant label study grid_value metric value".split())
#: columns of :func:`load_results`
RESULT_COLUMNS = tuple(
    "task preset method variant seed state metric value n_mixtures run_dir scores_path "
    "perceptual error task_config".split()
)
#: columns of ``--format csv``
CSV_COLUMNS = tuple(
    "table task preset method variant study grid_value metric mean std n n_mixtures paper "
    "paper_label ci_low ci_high n_items interval compare diff diff_low diff_high diff_n_items "
    "diff_interval significant".split()
)
FORMATS = ("md", "latex", "csv", "html")
_CELLS_NOTE = (
    "Cells: mean ± std over seeds (n=seeds), one seed: mean (n=1); n/a: not computed (or "
    "undefined on this evaluation set); –: the paper has no number."
)
_LATEX_PACKAGES = r"\usepackage{booktabs} \usepackage{amssymb} \usepackage{graphicx}"


# ---------------------------------------------------------------------------- loading


def load_results(results_dir: Path, task: str | None = None) -> pd.DataFrame:
    """Every run folder of the results store, as one tidy long frame.

    Args:
        results_dir: the results directory (``<results>/runs/<task>/<method>/<hash>``).
        task: only this task's folders (None: all).

    Returns:
        Columns :data:`RESULT_COLUMNS`: one row per metric of a finished run (``value`` a finite
        float; non-numeric, ``None`` and NaN entries of ``metrics.json`` are left out: not
        computed or undefined), and one row with ``metric`` None per run without such a metric
        (unfinished, or ``state == "corrupt"`` with the reason in ``error``). ``variant``: the
        run's ``--set`` overrides joined by spaces; ``scores_path``: the per-mixture
        ``scores.parquet`` ("" when absent); ``perceptual``: the run's perceptual-metric record
        (:mod:`benchmark.perceptual_eval`) or None; ``task_config``: the run's ``task`` config
        section as canonical JSON (runs with the same one are scored on the same evaluation
        mixtures, in the same order).
    """
    rows: list[dict] = []
    for record in iter_records(results_dir):
        if task is not None and record.task != task:
            continue
        key = {
            "task": record.task,
            "preset": "",
            "method": record.method,
            "variant": "",
            "seed": -1,
            "run_dir": str(record.path),
            "scores_path": "",
            "perceptual": None,
            "error": "",
            "task_config": "",
        }
        try:
            cfg = record.raw_config
            key.update(
                task=cfg["task"]["name"],
                preset=cfg["preset"],
                method=cfg["method"],
                variant=record.variant,
                seed=int(cfg["seed"]),
                task_config=json.dumps(cfg["task"], sort_keys=True),
            )
            state = record.state
            values = record.metric_values() if state == "done" else {}
            n_mixtures = record.counts.get("n_mixtures") if state == "done" else None
            perceptual = (record.perceptual or None) if state == "done" else None
        except CorruptStoreFile as exc:
            rows.append({**key, "state": "corrupt", "error": str(exc)})
            continue
        except (KeyError, TypeError, ValueError) as exc:
            error = f"unreadable run folder {record.path} (config.json: {exc!r}); delete it"
            rows.append({**key, "state": "corrupt", "error": error})
            continue
        common = {
            **key,
            "state": state,
            "n_mixtures": n_mixtures,
            "scores_path": str(record.scores_path) if record.scores_path.is_file() else "",
            "perceptual": perceptual,
        }
        found = False
        for metric, value in values.items():
            if not math.isfinite(value):
                continue  # undefined on this set (e.g. no mixture with that many sources)
            rows.append({**common, "metric": metric, "value": value})
            found = True
        if not found:
            rows.append(common)
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    frame["value"] = frame["value"].astype(float)
    frame["n_mixtures"] = pd.to_numeric(frame["n_mixtures"], errors="coerce")
    return frame


def _plugin_paper_files() -> list[Path]:
    """The paper-number CSVs that plug-ins declare (``paper_numbers`` class attribute, a path
    relative to the plug-in's module), in registry order, each once."""
    import sys

    from benchmark.registry import METHODS, TASKS

    files: list[Path] = []
    for registry in (METHODS, TASKS):
        for name in registry.names():
            cls = registry.get(name)
            relative = getattr(cls, "paper_numbers", None)
            module = sys.modules.get(cls.__module__)
            if relative and getattr(module, "__file__", None):
                path = Path(module.__file__).parent / relative
                if path not in files and path.parent.resolve() != PAPER_DIR.resolve():
                    files.append(path)
    return files


def paper_numbers() -> pd.DataFrame:
    """Every paper number of ``results/paper/*.csv`` and of the CSVs plug-ins declare
    (``Method.paper_numbers``/``Task.paper_numbers``: a file beside the plug-in's module).

    Returns:
        Columns :data:`PAPER_COLUMNS`, strings except ``value`` (float); ``variant`` is the
        ``--set`` overrides of the paper's setting ("": the method's default), normalised
        (sorted items), ``label`` the paper's row label where it names a setting or a
        paper-only row, ``study``/``grid_value`` the Table 9 grid point. One row per number,
        in file order.

    Raises:
        ValueError: a file without these columns, a non-numeric value, or a number given
            twice (the message names the file).
    """
    frames = []
    for path in [*sorted(PAPER_DIR.glob("*.csv")), *_plugin_paper_files()]:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if tuple(frame.columns) != PAPER_COLUMNS:
            raise ValueError(
                f"{path}: the header must be {','.join(PAPER_COLUMNS)} (found "
                f"{','.join(frame.columns)})"
            )
        values = pd.to_numeric(frame["value"], errors="coerce")
        if values.isna().any():
            bad = frame.loc[values.isna(), "value"].iloc[0]
            raise ValueError(f"{path}: value {bad!r} is not a number")
        frame["value"] = values
        frame["variant"] = frame["variant"].map(_norm_variant)
        keys = [c for c in PAPER_COLUMNS if c != "value"]
        if frame.duplicated(keys).any():
            dup = frame[frame.duplicated(keys)].iloc[0]
            raise ValueError(f"{path}: two numbers for {dict(dup[keys])}")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(PAPER_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def _norm_variant(variant: str) -> str:
    """``--set`` items in a canonical order, so that any order matches the paper's."""
    return " ".join(sorted(variant.split()))


# ------------------------------------------------------------------ summary and cells


def summarize(scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample standard deviation and number of seeds of ``value`` per group.

    Args:
        scores: long frame with a ``value`` column (e.g. :func:`load_results` rows of finished
            runs) and, optionally, ``n_mixtures``.
        keys: the group columns (e.g. ``["method", "variant", "metric"]``).

    Returns:
        ``keys`` + ``mean, std, n, n_mixtures``; ``std`` is NaN for a single seed (no spread
        is claimed), ``n_mixtures`` the largest evaluation set of the group.
    """
    if scores.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "n_mixtures"])
    grouped = scores.groupby(keys, dropna=False, sort=False)
    summary = grouped["value"].agg(["mean", "std", "count"]).reset_index()
    summary = summary.rename(columns={"count": "n"})
    if "n_mixtures" in scores:
        summary["n_mixtures"] = grouped["n_mixtures"].max().values
    else:
        summary["n_mixtures"] = float("nan")
    return summary


def format_cell(mean: float | None, std: float | None, n: int, digits: int) -> str:
    """One cell: ``mean ± std (n=3)``, ``mean (n=1)`` for one seed, ``n/a`` for none."""
    if not n or mean is None or not math.isfinite(mean):
        return "n/a"
    if n == 1 or std is None or not math.isfinite(std):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def format_interval(
    mean: float | None, interval: st.Interval | None, n: int, digits: int, signed: bool = False
) -> str:
    """One cell with its confidence interval: ``mean [low, high] (n=seeds)``; without an
    interval (kind ``none``: one seed and no per-mixture values) ``mean (n=1)``; ``n/a`` for
    none. ``signed``: a difference, printed with its sign (``+1.20 [+0.40, +2.00] (n=1)``)."""
    if not n or mean is None or not math.isfinite(mean):
        return "n/a"
    spec = f"{'+' if signed else ''}.{digits}f"
    text = format(mean, spec)
    if interval is not None and interval.kind != st.NONE:
        text += f" [{interval.low:{spec}}, {interval.high:{spec}}]"
    return f"{text} (n={n})"


def _paper_cell(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def display_name(method: str, label: str = "") -> str:
    """A method's row label: its registered ``display_name``, else the paper's row label (a
    paper-only row such as the oracle IRM), else the key itself."""
    try:
        return get_method(method).display_name
    except KeyError:
        return label or method


def _properties(method: str) -> list[str]:
    try:
        cls = get_method(method)
    except KeyError:
        return ["?", "?"]
    if cls.reference_only:
        return ["–", "–"]
    return ["✓" if cls.unsupervised else "×", "✓" if cls.generative else "×"]


def _reference_first(method: str) -> int:
    try:
        return 0 if get_method(method).reference_only else 1
    except KeyError:
        return 1


def _direction(column: MetricColumn, task: str) -> bool | None:
    """True when higher is better: the task's ``metrics`` declaration, else the layout's."""
    try:
        declared = get_task(task).metrics.get(column.metric)
    except KeyError:
        declared = None
    if declared is not None:
        return declared == "max"
    return column.higher_is_better


def _heading(column: MetricColumn, task: str) -> str:
    higher = _direction(column, task)
    if not column.arrow or higher is None:
        return column.label
    return f"{column.label} {'↑' if higher else '↓'}"


def _best(values: dict, higher: bool | None, digits: int) -> set:
    """Keys whose value is the best at the printed precision (ties all bold; none for fewer
    than two numbers or an unknown direction)."""
    finite = {k: round(v, digits) for k, v in values.items() if v is not None and math.isfinite(v)}
    if len(finite) < 2 or higher is None:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def _seeds_of(interval: st.Interval) -> int:
    """Number of seeds behind an interval: ``n_items`` of a t-interval, else one (none: 0)."""
    if interval.kind == st.T:
        return interval.n_items
    return 1 if math.isfinite(interval.mean) else 0


def _pair(
    column: MetricColumn,
    hit,
    ref: float | None,
    bold=(False, False),
    interval: st.Interval | None = None,
) -> list:
    """Our cell (``hit``: a :func:`summarize` row or None; ``interval``: with ``ci``) and the
    paper's beside it."""
    if hit is None:
        ours = "n/a"
    elif interval is not None:
        ours = format_interval(interval.mean, interval, _seeds_of(interval), column.digits)
    else:
        ours = format_cell(hit.mean, hit.std, hit.n, column.digits)
    return [Cell(ours, bold[0]), Cell(_paper_cell(ref, column.digits), bold[1])]


def _diff_cell(column: MetricColumn, diff) -> Cell:
    """The ``Δ`` cell of ``compare``: the difference with its interval, bold where the interval
    excludes 0; ``ref.`` on the reference row; ``n/a`` when no paired run."""
    if diff is _REF:
        return Cell("ref.")
    if not isinstance(diff, st.Interval):
        return Cell("n/a")
    text = format_interval(diff.mean, diff, _seeds_of(diff), column.digits, signed=True)
    return Cell(text, diff.excludes_zero)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _record(
    layout: TableLayout,
    column: MetricColumn,
    hit,
    ref: float | None,
    interval: st.Interval | None = None,
    compare: str | None = None,
    diff=None,
    **keys,
) -> dict:
    """One ``csv`` line: the cell's keys, our summary (none: ``n`` 0), the paper's number and,
    with ``ci``/``compare``, the interval and the difference to ``compare``."""
    stats = ("mean", "std", "n_mixtures")
    record = {
        "table": layout.name,
        "metric": column.metric,
        **{k: getattr(hit, k) if hit is not None else None for k in stats},
        "n": int(hit.n) if hit is not None else 0,
        "paper": ref,
        **keys,
    }
    if interval is not None and hit is not None:
        record.update(
            ci_low=_finite(interval.low),
            ci_high=_finite(interval.high),
            n_items=interval.n_items,
            interval=interval.kind,
        )
    if compare is not None:
        record["compare"] = compare
        if diff is _REF:
            record.update(diff=0.0, diff_interval="reference", significant=False)
        elif isinstance(diff, st.Interval):
            record.update(
                diff=_finite(diff.mean),
                diff_low=_finite(diff.low),
                diff_high=_finite(diff.high),
                diff_n_items=diff.n_items,
                diff_interval=diff.kind,
                significant=diff.excludes_zero,
            )
        else:
            record.update(diff_interval=st.NONE, significant=False)
    return record


# ------------------------------------------------------------------------ intervals

#: the ``Δ`` of the reference method's own row
_REF = "ref."


class _MixtureScores:
    """The runs' per-mixture values (``scores.parquet`` through :class:`RunRecord`), each file
    read once per render; an unreadable file costs only the intervals of its run (its message
    is kept in ``errors``)."""

    def __init__(self) -> None:
        self._frames: dict[str, pd.DataFrame | None] = {}
        self.errors: list[str] = []

    def _frame(self, run_dir: str) -> pd.DataFrame | None:
        if run_dir not in self._frames:
            try:
                frame = RunRecord(run_dir).scores()
            except CorruptStoreFile as exc:
                self.errors.append(str(exc))
                frame = None
            if frame is not None and "mixture" not in frame:
                frame = None  # not a per-mixture table this engine can pair
            self._frames[run_dir] = frame
        return self._frames[run_dir]

    def values(
        self, run_dir: str, metric: str, stored: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mixture indices, values)`` of ``metric`` for one run (``(N,)`` each; NaN where
        undefined) when the stored ``metrics.json`` value is their mean; None otherwise: no
        scores file, no such column, or a number that is not a mean over mixtures (FUSS pooled
        over sources)."""
        frame = self._frame(run_dir)
        if frame is None or metric not in frame:
            return None
        values = pd.to_numeric(frame[metric], errors="coerce").to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0 or not math.isclose(
            float(finite.mean()), stored, rel_tol=1e-6, abs_tol=1e-9
        ):
            return None
        return frame["mixture"].to_numpy(), values


def _same_count(x: float, y: float) -> bool:
    """Equal numbers of mixtures (both unrecorded counts as equal)."""
    return (pd.isna(x) and pd.isna(y)) or x == y


def _first_per_seed(part: pd.DataFrame) -> pd.DataFrame:
    """One run per seed (the first in folder order), indexed by seed."""
    first = part.sort_values("run_dir").drop_duplicates("seed")
    return first.set_index(first.seed.astype(int))


def _cell_intervals(
    rows: pd.DataFrame, keys: list[str], scores: _MixtureScores
) -> dict[tuple, st.Interval]:
    """The ``ci`` interval of each group of finished-run metric rows (``keys`` end with
    ``metric``): t over seeds with several seeds, else the bootstrap over the one run's
    per-mixture values (:func:`benchmark.tables.stats.cell_sample`)."""
    groups, samples, means = [], [], []
    for key, part in rows.groupby(keys, sort=False, dropna=False):
        runs = _first_per_seed(part)
        per_seed = {int(s): float(v) for s, v in runs.value.items()}
        per_mixture = {}
        if len(per_seed) == 1:
            ((seed, value),) = per_seed.items()
            found = scores.values(runs.run_dir[seed], key[-1], value)
            per_mixture[seed] = None if found is None else found[1]
        groups.append(key)
        samples.append(st.cell_sample(per_seed, per_mixture))
        means.append(float(np.mean(list(per_seed.values()))))
    return dict(zip(groups, st.intervals(samples, means), strict=True))


def _diff_intervals(
    rows: pd.DataFrame,
    all_rows: pd.DataFrame,
    compare: str,
    labels: dict[str, str],
    scores: _MixtureScores,
) -> tuple[dict[tuple, object], list[str]]:
    """The difference to method ``compare`` of each (method, variant, metric) of ``rows``.

    The reference runs (of ``all_rows``, the task and preset's finished runs) are ``compare``'s
    with the row's ``--set`` overrides, else its default ones (and, for a variant of
    ``compare`` itself, its default ones); they pair with the row's runs of the same seed
    whose task settings and number of mixtures agree (and, for one seed, whose
    ``scores.parquet`` ``mixture`` columns agree).

    Returns:
        ``(method, variant, metric) -> Interval | _REF | None`` (None: n/a) and the reasons
        of the n/a cells (for the note).
    """
    name = display_name(compare)
    ref_runs = all_rows[all_rows.method == compare]
    variants = set(ref_runs.variant)
    out: dict[tuple, object] = {}
    keys, samples, reasons, no_values = [], [], [], []

    def skip(key: tuple, reason: str) -> None:
        out[key] = None
        if reason not in reasons:
            reasons.append(reason)

    for key, part in rows.groupby(["method", "variant", "metric"], sort=False):
        method, variant, metric = key
        if method == compare and variant and "" in variants:
            ref_variant = ""
        elif variant in variants:
            ref_variant = variant
        elif "" in variants:
            ref_variant = ""
        else:
            skip(key, f"no finished {name} run with these settings")
            continue
        if (method, variant) == (compare, ref_variant):
            out[key] = _REF
            continue
        ref = ref_runs[(ref_runs.variant == ref_variant) & (ref_runs.metric == metric)]
        if ref.empty:
            skip(key, f"{name} has no {labels.get(metric, metric)}")
            continue
        b, a = _first_per_seed(part), _first_per_seed(ref)
        shared = sorted(set(b.index) & set(a.index))
        common = [
            s
            for s in shared
            if b.task_config[s] == a.task_config[s]
            and _same_count(b.n_mixtures[s], a.n_mixtures[s])
        ]
        if not common:
            if shared:
                skip(key, "other task settings (other evaluation mixtures)")
            else:
                skip(key, f"no seed in common with {name}")
            continue
        per_b = {s: float(b.value[s]) for s in common}
        per_a = {s: float(a.value[s]) for s in common}
        mix_b: dict[int, np.ndarray] = {}
        mix_a: dict[int, np.ndarray] = {}
        if len(common) == 1:
            (seed,) = common
            found_b = scores.values(b.run_dir[seed], metric, per_b[seed])
            found_a = scores.values(a.run_dir[seed], metric, per_a[seed])
            if found_b is None or found_a is None:
                out[key] = None
                if labels.get(metric, metric) not in no_values:
                    no_values.append(labels.get(metric, metric))
                continue
            if not np.array_equal(found_b[0], found_a[0]):
                skip(key, "other evaluation mixtures (the `mixture` columns of scores.parquet)")
                continue
            mix_b[seed], mix_a[seed] = found_b[1], found_a[1]
        keys.append(key)
        samples.append(st.paired_sample(per_b, per_a, mix_b, mix_a))
    out.update(zip(keys, st.intervals(samples), strict=True))
    if no_values:
        reasons.append(f"one seed and no per-mixture values ({', '.join(no_values)})")
    return out, reasons


def _percent(level: float) -> str:
    return f"{level * 100:g} %"


def _interval_notes(
    kinds: set[str], no_interval: list[str], compare: str | None, diff_kinds: set[str],
    reasons: list[str],
) -> tuple[str | None, str | None]:  # fmt: skip
    """The notes that say which interval the ``ci`` cells (``kinds``: those used; none: no
    note) and the ``Δ`` cells use: ``(cells note, compare note)``."""
    level = _percent(st.CONFIDENCE)
    boot = (
        f"BCa bootstrap ({st.N_RESAMPLES:,} resamples of the evaluation mixtures, "
        f"scipy.stats.bootstrap, fixed seed {st.BOOTSTRAP_SEED}: reproducible)"
    )
    cells_note = compare_note = None
    if kinds:
        text = (
            f"Cells: mean [{level} confidence interval of the mean] (n=seeds); n/a: not "
            "computed (or undefined on this evaluation set); –: the paper has no number."
        )
        if st.BOOTSTRAP in kinds:
            text += (
                f" n=1: {boot} of the per-mixture values; it covers the choice of evaluation "
                "mixtures, not training-seed variation."
            )
        if st.T in kinds:
            text += " n≥2: Student t-interval over the seeds' means (n-1 degrees of freedom)."
        if no_interval:
            text += (
                f" No interval for {', '.join(no_interval)} of one seed: no per-mixture values "
                "(not a mean over mixtures)."
            )
        cells_note = text
    if compare is not None:
        name = display_name(compare)
        text = (
            f"Δ vs {name}: the row minus {name} on the same evaluation mixtures ({name}'s run "
            "with the row's `--set` overrides, else its default run; same seed and task "
            "settings), with its interval:"
        )
        if st.BOOTSTRAP in diff_kinds or not diff_kinds:
            text += f" one common seed (n=1): mean of the per-mixture differences, {boot};"
        if st.T in diff_kinds or not diff_kinds:
            text += " n≥2 common seeds: mean of the per-seed differences, t-interval;"
        text += (
            f" bold: the {level} interval excludes 0 (which sign is better: the heading's "
            f"arrow); ref.: {name}'s own row."
        )
        if reasons:
            text += f" n/a: {'; '.join(reasons)}."
        compare_note = text
    return cells_note, compare_note


# ----------------------------------------------------------------------- structure


@dataclass
class Cell:
    """A cell's text; ``bold`` for the best of a study (SURF Table 9)."""

    text: str
    bold: bool = False


@dataclass
class Grid:
    """One rendered table, independent of the output format.

    Attributes:
        title: the layout's title.
        header: column headings; the first ``n_labels`` columns are row labels.
        rows: cells per row; ``breaks`` the indices of rows that start a group (a study).
        notes: lines under the table.
        records: one dict per cell (the ``csv`` lines).
    """

    title: str
    header: list[str]
    n_labels: int
    rows: list[list[Cell]] = field(default_factory=list)
    breaks: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


@dataclass
class Block:
    """The tables of one task at one preset, with the runs that are not finished."""

    task_title: str
    preset: str
    n_mixtures: str
    grids: list[Grid] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def heading(self) -> str:
        """``Task · preset `p` · N evaluation mixtures``."""
        text = f"{self.task_title} · preset `{self.preset}`"
        return text + (f" · {self.n_mixtures} evaluation mixtures" if self.n_mixtures else "")


@dataclass
class _Options:
    """What the cells show besides the mean: ``ci`` intervals, ``compare`` differences; the
    per-mixture values are read through ``scores``."""

    ci: bool = False
    compare: str | None = None
    scores: _MixtureScores = field(default_factory=_MixtureScores)


def _task_title(task: str) -> str:
    try:
        return get_task(task).display_name
    except KeyError:
        return task


def _n_mixtures(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    lo, hi = int(values.min()), int(values.max())
    return f"{hi:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _seeds_note(seeds) -> str:
    seeds = sorted({int(s) for s in seeds})
    return f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}" if seeds else ""


def _metric_notes(done: pd.DataFrame, layout: TableLayout, any_na: bool) -> list[str]:
    """How the perceptual metrics of the table were computed, and (when a cell is ``n/a``)
    why some were not: once per table, one line per missing weights file."""
    records = list(done.drop_duplicates("run_dir")["perceptual"]) if len(done) else []
    reasons, how = unavailable_notes(records, [c.metric for c in layout.metrics])
    return how + ([f"n/a reason: {r}" for r in reasons] if any_na else [])


def _generic_layout(task: str, found_metrics: list[str], paper: pd.DataFrame) -> TableLayout:
    """The layout of a task no built-in paper table covers: its ``Task.metrics`` (or, for a
    task that is no longer registered, the metrics found), every method run, and beside them
    the numbers of the first paper source that has numbers for this task (a plug-in's own
    CSV, ``paper_numbers``), if any."""
    try:
        metrics = list(get_task(task).metrics)
    except KeyError:
        metrics = sorted(found_metrics)
    sources = list(dict.fromkeys(paper[paper.task == task].source))
    source = sources[0] if sources else None
    return TableLayout(
        task,
        "table1",
        f"Results beside {source}" if source else "Results (no paper table covers this task)",
        (task,),
        tuple(MetricColumn(m, m.upper()) for m in metrics),
        properties=True,
        paper_source=source,
    )


# ------------------------------------------------------------------ method-row tables


def _method_grid(
    layout: TableLayout,
    task: str,
    preset: str,
    runs: pd.DataFrame,
    paper: pd.DataFrame,
    opts: _Options | None = None,
) -> Grid:
    """Rows are (method, ``--set`` variant) of the finished runs, in the layout's order, plus
    the paper's rows without a run when ``layout.paper_rows``; with ``opts.ci`` cells carry
    their interval, with ``opts.compare`` a ``Δ`` column follows each metric."""
    opts = opts or _Options()
    done = runs[runs.state == "done"]
    all_rows = done.dropna(subset=["metric"])
    if layout.only_listed:
        done = done[done.method.isin(layout.rows or ())]
    summary = summarize(done.dropna(subset=["metric"]), ["method", "variant", "metric"])
    stats = {(r.method, r.variant, r.metric): r for r in summary.itertuples(index=False)}
    shown_metrics = [c.metric for c in layout.metrics]
    rows = all_rows[all_rows.metric.isin(shown_metrics) & all_rows.run_dir.isin(done.run_dir)]
    keys3 = ["method", "variant", "metric"]
    cis = _cell_intervals(rows, keys3, opts.scores) if opts.ci else {}
    diffs, reasons = {}, []
    if opts.compare:
        labels = {c.metric: c.label for c in layout.metrics}
        diffs, reasons = _diff_intervals(rows, all_rows, opts.compare, labels, opts.scores)
    paper = paper[(paper.source == layout.paper_source) & (paper.task == task)]
    if layout.only_listed:
        paper = paper[paper.method.isin(layout.rows or ())]
    groups = list(dict.fromkeys(zip(paper.method, paper.variant, paper.label, strict=True)))
    numbers = {
        (r.method, r.variant, r.label, r.metric): float(r.value)
        for r in paper.itertuples(index=False)
    }
    order = list(layout.rows or ())

    def rank(method: str) -> tuple:
        if layout.rows is None:
            return (_reference_first(method), method)
        return (order.index(method) if method in order else len(order), method)

    # (sort key, method, variant, paper group or None, paper-only)
    entries: list[tuple] = []
    shown: set = set()
    for method, variant in sorted(set(zip(done.method, done.variant, strict=True))):
        wanted = (method, _norm_variant(variant) if layout.by_variant else "")
        group = next((g for g in groups if g[:2] == wanted), None)
        shown.add(group)
        entries.append(((*rank(method), 0, variant, 0), method, variant, group, False))
    if layout.paper_rows:
        for i, group in enumerate(groups):
            if group not in shown:
                entries.append(((*rank(group[0]), 1, "", i), group[0], group[1], group, True))
    entries.sort(key=lambda e: e[0])

    header = ["Method"] + (["Unsupervised", "Generative"] if layout.properties else [])
    n_labels = len(header)
    for column in layout.metrics:
        header += [_heading(column, task), "paper"]
        if opts.compare:
            header.append(f"Δ {column.label} vs {display_name(opts.compare)}")
    grid = Grid(layout.title, header, n_labels)
    any_na = False
    kinds, diff_kinds, no_interval = set(), set(), []
    for _, method, variant, group, paper_only in entries:
        label = group[2] if group else ""
        name = display_name(method, label)
        if paper_only:
            name += f" ({label}; paper only)" if label and label != name else " (paper only)"
        elif variant:
            name += f" [{variant}]"
        cells = [Cell(name)] + [Cell(t) for t in (_properties(method) if layout.properties else [])]
        for column in layout.metrics:
            key = (method, variant, column.metric)
            hit = None if paper_only else stats.get(key)
            ref = numbers.get((*group, column.metric)) if group else None
            interval = cis.get(key) if hit is not None else None
            pair = _pair(column, hit, ref, interval=interval)
            if paper_only:
                pair[0] = Cell("not run")
            any_na |= hit is None and not paper_only
            cells += pair
            if interval is not None:
                kinds.add(interval.kind)
                if interval.kind == st.NONE and column.label not in no_interval:
                    no_interval.append(column.label)
            diff = diffs.get(key)
            if opts.compare:
                cells.append(Cell("") if paper_only else _diff_cell(column, diff))
                if isinstance(diff, st.Interval):
                    diff_kinds.add(diff.kind)
            keys = {"task": task, "preset": preset, "method": method, "variant": variant}
            grid.records.append(
                _record(
                    layout,
                    column,
                    hit,
                    ref,
                    interval,
                    opts.compare,
                    diff,
                    paper_label=label,
                    **keys,
                )  # fmt: skip
            )
        grid.rows.append(cells)
    not_run = " not run: a paper row we did not run." if layout.paper_rows else ""
    cells_note, compare_note = _interval_notes(
        kinds, no_interval, opts.compare, diff_kinds, reasons
    )
    grid.notes = [(cells_note or _CELLS_NOTE) + not_run]
    if compare_note:
        grid.notes.append(compare_note)
    if layout.note:
        grid.notes.append(layout.note)
    grid.notes += _metric_notes(done, layout, any_na)
    seeds = _seeds_note(done.seed)
    if seeds:
        grid.title += f" · {seeds}"
    return grid


def _method_blocks(
    frame: pd.DataFrame, which: str, paper: pd.DataFrame, opts: _Options | None = None
) -> tuple[list[Block], list[str]]:
    blocks, skipped = [], []
    valid = frame[frame.state != "corrupt"]
    finished = valid[valid.state == "done"]
    for task, preset in sorted(set(zip(finished.task, finished.preset, strict=True))):
        runs = valid[(valid.task == task) & (valid.preset == preset)]
        layouts = layouts_for(task, which)
        if not layouts and which == "table1":
            layouts = [_generic_layout(task, list(runs.metric.dropna().unique()), paper)]
        if not layouts:
            skipped.append(task)
            continue
        done = runs[runs.state == "done"]
        block = Block(_task_title(task), preset, _n_mixtures(done.n_mixtures))
        block.grids = [_method_grid(lay, task, preset, runs, paper, opts) for lay in layouts]
        pending = runs[runs.state != "done"].drop_duplicates("run_dir")
        for row in pending.itertuples(index=False):
            variant = f" [{row.variant}]" if row.variant else ""
            block.notes.append(
                f"Not finished: {row.method} seed {row.seed} ({row.state}){variant}."
            )
        blocks.append(block)
    notes = []
    for task in dict.fromkeys(skipped):
        others = sorted({lay.which for lay in LAYOUTS.values() if task in lay.tasks} | {"table1"})
        notes.append(
            f"{_task_title(task)}: no {which} layout for task {task!r} "
            f"(`--which {'|'.join(others)}` shows its runs)."
        )
    return blocks, notes


# ---------------------------------------------------------------- ablation tables


_WHO = ("ours", "paper")


def _study_block(
    layout: TableLayout,
    task: str,
    preset: str,
    methods: list[str],
    frame: pd.DataFrame,
    paper: pd.DataFrame,
    overrides: list,
    results_dir: Path,
    opts: _Options | None = None,
) -> Block | None:
    """SURF Table 9 shape: rows the studies' grid points, a column group per method. The grid
    is planned again (:func:`benchmark.ablation.plan_ablation`, seeds: those stored) and each
    point's run folder looked up in ``frame``, so a point shared with the main table counts in
    every study it belongs to. ``opts.ci``: cells with their intervals."""
    opts = opts or _Options()
    from benchmark.ablation import STUDIES, plan_ablation

    studies = [STUDIES[s] for s in layout.studies]
    valid = frame[(frame.state != "corrupt") & (frame.preset == preset)]
    seeds = sorted(set(valid[valid.method.isin(methods)].seed))
    if not seeds:
        return None
    points, _ = plan_ablation(studies, methods, task, seeds, preset, overrides, results_dir)
    grid_runs = pd.DataFrame(
        [(p.study, p.value, p.method, p.seed, p.shared, str(p.run.run_dir)) for p in points],
        columns=["study", "grid_value", "method", "seed", "shared", "run_dir"],
    )
    cols = ["run_dir", "state", "metric", "value", "n_mixtures", "perceptual"]
    merged = grid_runs.merge(valid[cols], on="run_dir", how="left")
    merged["state"] = merged["state"].fillna("absent")
    done = merged[merged.state == "done"]
    if done.metric.dropna().empty:
        return None
    started = set(merged[merged.state != "absent"].method)
    methods = [m for m in methods if m in started]  # a variant never run gets no columns
    keys = ["study", "grid_value", "method", "metric"]
    summary = summarize(done.dropna(subset=["metric"]), keys)
    stats = {tuple(r[:4]): r for r in summary.itertuples(index=False)}
    shown = done.dropna(subset=["metric"])
    shown = shown[shown.metric.isin([c.metric for c in layout.metrics])]
    cis = _cell_intervals(shown, keys, opts.scores) if opts.ci else {}
    kinds, no_interval = set(), []
    paper = paper[(paper.source == layout.paper_source) & (paper.task == task)]
    numbers = {
        (r.study, r.grid_value, r.method, r.metric): float(r.value)
        for r in paper.itertuples(index=False)
    }
    header = ["Ablation", "Variant"]
    for method in methods:
        for column in layout.metrics:
            header += [f"{display_name(method)} {_heading(column, task)}", "paper"]
    grid = Grid(layout.title, header, 2)
    any_na = False
    for study in studies:
        bold: dict[tuple, set] = {}  # (ours | paper, method, metric) -> best grid values
        for method in methods:
            for column in layout.metrics if layout.bold_best else ():
                higher, m = _direction(column, task), column.metric
                ours = {v: getattr(stats.get((study.name, v, method, m)), "mean", None)
                        for v in study.values}  # fmt: skip
                refs = {v: numbers.get((study.name, v, method, m)) for v in study.values}
                bold["ours", method, m] = _best(ours, higher, column.digits)
                bold["paper", method, m] = _best(refs, higher, column.digits)
        grid.breaks.add(len(grid.rows))
        for i, value in enumerate(study.values):
            shared = merged[
                (merged.study == study.name) & (merged.grid_value == value) & merged.shared
            ]
            label = study.label(value) + (" *" if len(shared) else "")
            cells = [Cell(study.title if i == 0 else ""), Cell(label)]
            for method in methods:
                for column in layout.metrics:
                    key = (study.name, value, method, column.metric)
                    hit, ref = stats.get(key), numbers.get(key)
                    interval = cis.get(key) if hit is not None else None
                    any_na |= hit is None
                    best = [value in bold.get((who, method, column.metric), ()) for who in _WHO]
                    cells += _pair(column, hit, ref, best, interval)
                    if interval is not None:
                        kinds.add(interval.kind)
                        if interval.kind == st.NONE and column.label not in no_interval:
                            no_interval.append(column.label)
                    keys = {"task": task, "preset": preset, "method": method}
                    keys.update(study=study.name, grid_value=value)
                    grid.records.append(_record(layout, column, hit, ref, interval, **keys))
            grid.rows.append(cells)
    cells_note, _ = _interval_notes(kinds, no_interval, None, set(), [])
    grid.notes = [cells_note or _CELLS_NOTE]
    if layout.bold_best:
        grid.notes.append("bold: best of the study per method and metric (ours and the paper's).")
    grid.notes.append(layout.note)
    grid.notes += _metric_notes(done, layout, any_na)
    seeds_shown = _seeds_note(merged[merged.method.isin(methods)].seed)
    grid.title += f" · {seeds_shown}"
    block = Block(_task_title(task), preset, _n_mixtures(done.n_mixtures), [grid])
    pending = merged[(merged.state != "done") & merged.method.isin(methods)]
    pending = pending.drop_duplicates(["study", "grid_value", "method", "seed"])
    for (method, seed, state), part in pending.groupby(["method", "seed", "state"], sort=True):
        points_text = ", ".join(
            f"{study} {STUDIES[study].label(value)}"
            for study, value in zip(part.study, part.grid_value, strict=True)
        )
        what = "Not run" if state == "absent" else f"Not finished ({state})"
        block.notes.append(f"{what}: {method} seed {seed}: {points_text}.")
    return block


def _study_blocks(
    layout: TableLayout,
    frame: pd.DataFrame,
    task: str,
    preset: str | None,
    methods: list[str] | None,
    overrides: list,
    results_dir: Path,
    paper: pd.DataFrame,
    opts: _Options | None = None,
) -> list[Block]:
    methods = list(methods or layout.column_methods)
    for method in methods:
        get_method(method)  # KeyError naming the valid ones
    valid = frame[(frame.state != "corrupt") & frame.method.isin(methods)]
    presets = [preset] if preset else sorted(set(valid.preset) - {""})
    blocks = []
    for p in presets:
        block = _study_block(layout, task, p, methods, frame, paper, overrides, results_dir, opts)
        if block is not None:
            blocks.append(block)
    return blocks


# ------------------------------------------------------------------------ writers


def _md(blocks: list[Block], notes: list[str]) -> str:
    parts = []
    for block in blocks:
        lines = [f"### {block.heading}"]
        for grid in block.grids:
            lines += ["", f"#### {grid.title}", ""]
            lines.append("| " + " | ".join(grid.header) + " |")
            lines.append("|" + "---|" * len(grid.header))
            for row in grid.rows:
                texts = [f"**{c.text}**" if c.bold else c.text for c in row]
                lines.append("| " + " | ".join(texts) + " |")
            lines += ["", *grid.notes]
        if block.notes:
            lines += ["", *block.notes]
        parts.append("\n".join(lines))
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "→": r"$\rightarrow$",
    "✓": r"\checkmark{}",
    "×": r"$\times$",
    "–": "--",
    "—": "---",
    "·": r"$\cdot$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "≈": r"$\approx$",
    "Δ": r"$\Delta$",
    "≥": r"$\geq$",
}


def latex_escape(text: str) -> str:
    """Plain text as LaTeX (pdflatex, packages of :data:`_LATEX_PACKAGES`): special characters
    escaped, the symbols tables use (± ↑ ↓ ✓ × – · α β) as commands, ``--`` kept two hyphens
    (``--weights-dir``, not an en dash), `code` as ``\\texttt``. Other characters outside ASCII
    are kept for pdflatex's UTF-8 input (accented letters)."""
    out = []
    for i, part in enumerate(text.split("`")):
        part = part.replace("--", "-\x00-")  # NUL: a marker no table text contains
        escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in part).replace("\x00", "{}")
        out.append(rf"\texttt{{{escaped}}}" if i % 2 else escaped)
    return "".join(out)


def _latex(blocks: list[Block], notes: list[str]) -> str:
    lines = [f"% python -m benchmark table --format latex; preamble: {_LATEX_PACKAGES}"]
    for block in blocks:
        for grid in block.grids:
            spec = "l" * grid.n_labels + "r" * (len(grid.header) - grid.n_labels)
            lines += [
                "",
                r"\begin{table}[htbp]",
                r"\centering",
                rf"\caption{{{latex_escape(grid.title + ' · ' + block.heading)}}}",
                r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
                rf"\begin{{tabular}}{{{spec}}}",
                r"\toprule",
                " & ".join(latex_escape(h) for h in grid.header) + r" \\",
                r"\midrule",
            ]
            for i, row in enumerate(grid.rows):
                if i in grid.breaks and i > 0:
                    lines.append(r"\midrule")
                texts = [
                    rf"\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text)
                    for c in row
                ]
                lines.append(" & ".join(texts) + r" \\")
            lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip\footnotesize\raggedright"]
            lines += [latex_escape(note) + r"\par" for note in grid.notes]
            lines.append(r"\end{table}")
        if block.notes:
            lines += ["", r"\begin{flushleft}\footnotesize"]
            lines += [latex_escape(note) + r"\par" for note in block.notes]
            lines.append(r"\end{flushleft}")
    if notes:
        lines += ["", r"\begin{flushleft}\footnotesize"]
        lines += [latex_escape(note) + r"\par" for note in notes]
        lines.append(r"\end{flushleft}")
    return "\n".join(lines)


def _csv(blocks: list[Block]) -> str:
    text = dict.fromkeys(("variant", "study", "grid_value", "paper_label"), "")
    records = [{**text, **rec} for block in blocks for grid in block.grids for rec in grid.records]
    frame = pd.DataFrame(records, columns=list(CSV_COLUMNS))
    for column in ("n_mixtures", "n_items", "diff_n_items"):
        frame[column] = frame[column].astype("Int64")
    return frame.to_csv(index=False)


_HTML_TABLE_STYLE = "border-collapse:collapse;white-space:nowrap;margin:0.4em 0 0.6em"
_HTML_ROW_STYLE = "border-bottom:1px solid #ccc"
_HTML_CELL_STYLE = "padding:2px 8px"
_HTML_NOTE_STYLE = "font-size:0.85em;margin:0.15em 0"


def _html_text(text: str) -> str:
    """Plain table text as HTML: escaped (``& < > " '``), `code` as ``<code>``."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: keep it as text
        parts = [text]
    return "".join(
        f"<code>{html.escape(part)}</code>" if i % 2 else html.escape(part)
        for i, part in enumerate(parts)
    )


def _html_column(header: list[str], j: int, n_labels: int) -> str:
    """``class`` and ``style`` of column ``j``: the row label left, properties centred,
    numbers right, the paper's numbers grey, the ``Δ`` columns marked."""
    if j == 0:
        return f'class="label" style="{_HTML_CELL_STYLE};text-align:left"'
    if j < n_labels:
        return f'class="label" style="{_HTML_CELL_STYLE};text-align:center"'
    kind = "paper" if header[j] == "paper" else "delta" if header[j].startswith("Δ") else "ours"
    colour = ";color:#666" if kind == "paper" else ""
    return f'class="{kind}" style="{_HTML_CELL_STYLE};text-align:right{colour}"'


def _html(blocks: list[Block], notes: list[str]) -> str:
    """A self-contained HTML fragment: a ``<section>`` per task and preset (``<h3>``), a
    ``<table>`` per paper table (``<h4>`` title, ``<thead>``, one ``<tbody>`` per row group),
    notes as ``<p class="note">``; inline styles only (no CSS or script file), every text
    escaped. Well-formed XML as well as HTML (a demo page can embed it as is)."""
    out = ['<div class="benchmark-tables">']
    for block in blocks:
        out += ['<section class="benchmark-block">', f"<h3>{_html_text(block.heading)}</h3>"]
        for grid in block.grids:
            styles = [_html_column(grid.header, j, grid.n_labels) for j in range(len(grid.header))]
            out.append(f"<h4>{_html_text(grid.title)}</h4>")
            out.append(f'<table class="benchmark-table" style="{_HTML_TABLE_STYLE}">')
            heads = "".join(
                f'<th scope="col" {style}>{_html_text(h)}</th>'
                for h, style in zip(grid.header, styles, strict=True)
            )
            out.append(f'<thead><tr style="{_HTML_ROW_STYLE}">{heads}</tr></thead>')
            out.append("<tbody>")
            for i, row in enumerate(grid.rows):
                if i in grid.breaks and i > 0:
                    out.append("</tbody><tbody>")
                cells = []
                for j, (cell, style) in enumerate(zip(row, styles, strict=True)):
                    text = _html_text(cell.text)
                    if cell.bold:
                        text = f"<strong>{text}</strong>"
                    tag = "th" if j == 0 else "td"
                    scope = ' scope="row"' if j == 0 else ""
                    cells.append(f"<{tag}{scope} {style}>{text}</{tag}>")
                out.append(f'<tr style="{_HTML_ROW_STYLE}">{"".join(cells)}</tr>')
            out.append("</tbody></table>")
            out += [
                f'<p class="note" style="{_HTML_NOTE_STYLE}">{_html_text(n)}</p>'
                for n in grid.notes
                if n
            ]
        out += [
            f'<p class="note" style="{_HTML_NOTE_STYLE}">{_html_text(n)}</p>' for n in block.notes
        ]
        out.append("</section>")
    out += [f'<p class="note" style="{_HTML_NOTE_STYLE}">{_html_text(n)}</p>' for n in notes]
    out.append("</div>")
    return "\n".join(out)


# ------------------------------------------------------------------------- entry


def render(
    results_dir: Path,
    task: str | None = None,
    fmt: str = "md",
    preset: str | None = None,
    which: str = "table1",
    methods: list[str] | None = None,
    overrides: list[tuple[str | None, str, str]] | None = None,
    *,
    ci: bool = False,
    compare: str | None = None,
) -> tuple[str, list[str]]:
    """Render the tables; returns ``(text, notes)``, ``notes`` the lines about the store
    (unreadable run folders or scores files, tasks without a layout) that ``md``, ``latex``
    and ``html`` already contain and a ``csv`` caller should print elsewhere. Arguments as
    :func:`render_table` (the demo page calls
    ``render(results_dir, task, "html", preset, "table1", None, None, ci=True, compare=None)``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if which not in WHICH:
        raise ValueError(f"unknown table {which!r}; valid: {', '.join(WHICH)}")
    studies = [lay for lay in LAYOUTS.values() if lay.which == which and lay.studies]
    if compare is not None:
        get_method(compare)  # UnknownName (a KeyError) naming the valid ones
        if studies:
            raise ValueError(
                f"--compare compares the method rows of one table; {studies[0].title} has "
                "SURF variants as columns: use --compare with --which table1 or table2 "
                "(--ci works with table9)"
            )
    opts = _Options(ci=ci, compare=compare)
    paper = paper_numbers()
    if studies:
        layout = studies[0]
        task = task or layout.tasks[0]
        if task not in layout.tasks:
            raise ValueError(
                f"{layout.title} is laid out for the tasks {', '.join(layout.tasks)}, not {task!r}"
            )
    frame = load_results(results_dir, task)
    corrupt = frame[frame.state == "corrupt"]
    if preset is not None:
        frame = frame[frame.preset == preset]
        corrupt = corrupt[corrupt.preset.isin(["", preset])]
    notes = [f"Left out (unreadable): {error}" for error in corrupt.error]
    if studies:
        blocks = _study_blocks(
            layout, frame, task, preset, methods, overrides or [], results_dir, paper, opts
        )
        empty = (
            f"no finished ablation runs for task {task!r} in {results_dir}. Start one with "
            f"`python -m benchmark ablate --study ema|batch|beta --task {task}`."
        )
    else:
        blocks, skipped = _method_blocks(frame, which, paper, opts)
        notes = skipped + notes
        where = f" for task {task!r}" if task else ""
        empty = (
            f"no finished runs{where} in {results_dir}. Start one with "
            "`python -m benchmark run --methods ... --task ...`."
        )
    notes += [f"No intervals from an unreadable scores file: {e}" for e in opts.scores.errors]
    if fmt == "csv":
        return _csv(blocks), notes
    if not blocks:
        notes = [empty, *notes]
    writer = {"md": _md, "latex": _latex, "html": _html}[fmt]
    return writer(blocks, notes), notes


def render_table(
    results_dir: Path,
    task: str | None = None,
    fmt: str = "md",
    preset: str | None = None,
    which: str = "table1",
    methods: list[str] | None = None,
    overrides: list[tuple[str | None, str, str]] | None = None,
    *,
    ci: bool = False,
    compare: str | None = None,
) -> str:
    """Render the paper-shaped tables of the results store.

    Args:
        results_dir: results directory.
        task: one task (None: every task found; ``table9``: its layout's first task).
        fmt: ``md``, ``latex`` (booktabs; needs ``\\usepackage{booktabs,amssymb,graphicx}``),
            ``csv`` (long, one line per cell) or ``html`` (a self-contained fragment).
        preset: one preset (None: each preset found, one block each).
        which: ``table1`` (SURF Table 1 for image tasks, the audio tasks' paper tables),
            ``table2`` (SURF Table 2) or ``table9`` (SURF Table 9 ablations).
        methods: ``table9``: the SURF variants (default: the layout's).
        overrides: ``table9``: the ``--set`` overrides the ablation was run with.
        ci: cells ``mean [low, high] (n=seeds)`` with the 95 % interval of
            :mod:`benchmark.tables.stats` (one seed: BCa bootstrap over the evaluation
            mixtures; several: t over seeds); the note under each table says which.
        compare: a method key: a ``Δ`` column per metric, the row minus this method on the
            same evaluation mixtures and seeds, with its interval, bold where it excludes 0
            (``table1``/``table2`` layouts).

    Raises:
        ValueError: unknown ``fmt`` or ``which``, a task the ``table9`` layout does not cover,
            ``compare`` with ``table9``, or a malformed ``results/paper`` file. KeyError:
            unknown method (``methods``, ``compare``).

    Returns:
        The tables as text (a hint on how to produce runs when there are none).
    """
    return render(
        results_dir, task, fmt, preset, which, methods, overrides, ci=ci, compare=compare
    )[0]
