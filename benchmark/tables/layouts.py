"""The papers' tables, declared as data; :mod:`benchmark.tables.engine` renders any of them.

A :class:`TableLayout` says which rows, which metric columns (with digits and, for metrics a
task does not declare, the direction of "better") and which paper's numbers
(``results/paper/*.csv``, matched on their ``source`` column) make up one paper table, and for
which tasks ``table --which <which>`` shows it. A task without a layout for ``--which table1``
gets a generic one built from its ``Task.metrics`` (engine).

Layouts (SURF: Separation via Unsupervised Rectified Flow, 2026; sparse/efficient MixIT:
Wisdom et al. 2021; MixPIT/MixCycle: Karamatlı & Kırbız 2022):

- ``surf_table1``: SURF Table 1 (PSNR, LPIPS, SSIM, FID) on ``mnist`` and ``cifar10``;
- ``surf_table2``: SURF Table 2 (Inception Score and FID of a second mixture set);
- ``surf_table4`` + ``mixpit_table1_libri2mix``: ``libri2mix`` (SURF Table 4, and the
  Libri2Mix column of MixPIT/MixCycle Table I);
- ``surf_table3_fuss`` + ``sparse_mixit_table1``: ``fuss`` (SURF Table 3 left half, and the
  sparse-MixIT Table 1 columns for MixIT settings, matched to the paper's rows by their
  ``--set`` overrides);
- ``surf_table3_libri_fuss``: ``libri_fuss`` (SURF Table 3 right half);
- ``mixpit_table1_fsdd2mix``: ``fsdd2mix``, the MixPIT/MixCycle Table I layout with SC09Mix's
  published numbers as the reference protocol's (the SI-SNR of that paper's eq. 9 is our SI-SDR
  without mean removal; SC09Mix is Speech Commands digits, not FSDD: same protocol, other
  recordings, so the numbers show the expected order, not a target);
- ``surf_table9``: SURF Table 9 (Appendix E.1), rows the grid points of the ablation studies
  of :data:`STUDIES` (planned by :mod:`benchmark.ablation`), one column group per SURF variant.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_TASK",
    "FIGURE2_TASK",
    "LAYOUTS",
    "STUDIES",
    "WHICH",
    "MetricColumn",
    "Study",
    "TableLayout",
    "layouts_for",
]

# ---------------------------------------------------------------------------- SURF Table 9 studies
# (the ablation grid of SURF Appendix E.1: benchmark.ablation plans it, the surf_table9 layout
# below renders it)

#: SURF Figure 2 (qualitative separations) shows MNIST
FIGURE2_TASK = "mnist"
#: the two SURF variants of Table 9 (column order of the paper: Self-Remixing, then ReMixIT)
DEFAULT_METHODS = ("surf_sr", "surf_rm")
#: Table 9 is on CIFAR-10
DEFAULT_TASK = "cifar10"


@dataclass(frozen=True)
class Study:
    """One ablation: a config field and the values it takes (SURF Table 9).

    Attributes:
        name: ``ema``, ``batch`` or ``beta``.
        key: dotted config path swept (``surf.ema_decay``).
        values: grid values as ``--set`` strings, in the paper's row order.
        symbol: the paper's symbol (alpha, B, beta) for labels.
        title: row-group title of Table 9.
    """

    name: str
    key: str
    values: tuple[str, ...]
    symbol: str
    title: str

    def label(self, value: str) -> str:
        """Row label of a grid value, e.g. ``α=0.999``, ``B=256``, ``proposed schedule``."""
        if self.name == "beta" and value == "linear":
            return "proposed schedule"
        return f"{self.symbol}={value}"


STUDIES: dict[str, Study] = {
    "ema": Study("ema", "surf.ema_decay", ("0", "0.9", "0.99", "0.999", "0.9999"), "α", "EMA α"),
    "batch": Study("batch", "train.batch_size", ("1", "4", "16", "64", "256"), "B", "Batch size B"),
    "beta": Study("beta", "surf.beta", ("0.1", "0.5", "1.0", "linear"), "β", "Teacher β(t)"),
}


@dataclass(frozen=True)
class MetricColumn:
    """One metric column (and the paper's number beside it).

    Attributes:
        metric: the ``metrics.json`` key (e.g. ``psnr``, ``si_sdr``, ``fuss_1s``).
        label: column heading (an arrow is added when the direction is known).
        digits: decimals of our cells and the paper's.
        higher_is_better: direction for a metric the task's ``metrics`` does not declare
            (paper-only metrics such as LPIPS, FID); the task's declaration wins. None with
            ``arrow=False``: no direction (e.g. the Inception Score's split std).
        arrow: show the direction arrow in the heading.
    """

    metric: str
    label: str
    digits: int = 2
    higher_is_better: bool | None = None
    arrow: bool = True


@dataclass(frozen=True)
class TableLayout:
    """One paper table as data.

    Attributes:
        name: key in :data:`LAYOUTS` (and the ``table`` column of ``--format csv``).
        which: the ``table --which`` choice that renders it (``table1``, ``table2``, ``table9``).
        title: heading naming the paper table.
        tasks: tasks it applies to. A ``studies`` layout renders for the first when no
            ``--task`` is given.
        metrics: metric columns, in the paper's order.
        rows: methods in the paper's row order; methods run but not listed follow,
            alphabetically (None: every method run, the ``mixture`` reference first).
        only_listed: show only the methods in ``rows``.
        paper_source: the ``source`` of the ``results/paper`` rows shown beside ours (None: no
            paper column values).
        paper_rows: also list the paper's rows that have no run ("(paper only)", "not run").
        by_variant: a run sits beside the paper row with the same ``--set`` overrides (the
            paper's ``variant``; "" its default setting), so a run with other settings gets no
            paper number. False: the method's default-setting number sits beside all its runs
            (SURF Tables 1 and 2, whose runs differ from the paper in scale anyway).
        properties: add the "Unsupervised" and "Generative" columns (SURF Table 1).
        studies: rows are the grid points of these ablation studies
            (:data:`benchmark.ablation.STUDIES`) instead of methods; columns are one group of
            ``metrics`` per method of ``column_methods``.
        column_methods: the methods of a ``studies`` layout (``table --methods`` replaces them).
        bold_best: bold the best mean of each study per column, ours and the paper's.
        note: provenance of the paper's numbers, printed under the table.
    """

    name: str
    which: str
    title: str
    tasks: tuple[str, ...]
    metrics: tuple[MetricColumn, ...]
    rows: tuple[str, ...] | None = None
    only_listed: bool = False
    paper_source: str | None = None
    paper_rows: bool = False
    by_variant: bool = True
    properties: bool = False
    studies: tuple[str, ...] = ()
    column_methods: tuple[str, ...] = ()
    bold_best: bool = False
    note: str = ""


#: the ``--which`` choices
WHICH = ("table1", "table2", "table9")

#: row order of SURF Tables 1 and 2
_SURF_IMAGE_ROWS = (
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
)
#: method rows of SURF Tables 3 and 4, in the paper's order
_SURF_AUDIO_ROWS = ("mixture", "floss", "mixit", "remixit", "self_remixing", "surf_rm", "surf_sr")
_SPEECH = (
    MetricColumn("si_sdr", "SI-SDR"),
    MetricColumn("estoi", "ESTOI", 3),
    MetricColumn("pesq", "PESQ"),
    MetricColumn("dnsmos", "DNSMOS"),
)
_IMAGE_TASKS = ("mnist", "cifar10")

_LAYOUTS = (
    TableLayout(
        "surf_table1",
        "table1",
        "SURF Table 1",
        _IMAGE_TASKS,
        (
            MetricColumn("psnr", "PSNR"),
            MetricColumn("lpips", "LPIPS", 3, higher_is_better=False),
            MetricColumn("ssim", "SSIM", 3),
            MetricColumn("fid", "FID", higher_is_better=False),
        ),
        rows=_SURF_IMAGE_ROWS,
        paper_source="SURF Table 1",
        by_variant=False,
        properties=True,
        note="paper: SURF Table 1 (5,000 mixtures, paper-scale training); numbers at the "
        "smoke/cpu presets are not comparable in magnitude.",
    ),
    TableLayout(
        "surf_table2",
        "table2",
        "SURF Table 2",
        _IMAGE_TASKS,
        (
            MetricColumn("table2_is", "Inception Score", higher_is_better=True),
            MetricColumn("table2_is_std", "IS split std", arrow=False),
            MetricColumn("table2_fid", "FID", higher_is_better=False),
        ),
        rows=_SURF_IMAGE_ROWS,
        paper_source="SURF Table 2",
        by_variant=False,
        note="IS split std: the Inception Score's std over its splits, the ± of the paper's "
        "IS column. paper: SURF Table 2 (CIFAR-10, 25,000 mixtures = 50,000 separated "
        "images; its 'Average' row is the mixture row).",
    ),
    TableLayout(
        "surf_table4",
        "table1",
        "SURF Table 4 (Libri2Mix, 2 sources)",
        ("libri2mix",),
        _SPEECH,
        rows=_SURF_AUDIO_ROWS,
        paper_source="SURF Table 4",
        paper_rows=True,
        note="paper: SURF Table 4 (16 kHz, 3,000 test mixtures, full-scale training).",
    ),
    TableLayout(
        "mixpit_table1_libri2mix",
        "table1",
        "MixPIT/MixCycle Table I layout (Libri2Mix)",
        ("libri2mix",),
        (MetricColumn("si_sdri", "SI-SNRi"),),
        rows=("irm", "supervised", "mixit", "mixpit", "mixcycle"),
        only_listed=True,
        paper_source="MixPIT/MixCycle Table I (Libri2Mix)",
        paper_rows=True,
        note="paper: MixPIT/MixCycle Table I, Libri2Mix column (8 kHz, min mode).",
    ),
    TableLayout(
        "surf_table3_fuss",
        "table1",
        "SURF Table 3 (FUSS, 1-4 sources)",
        ("fuss",),
        (
            MetricColumn("fuss_1s", "1S"),
            MetricColumn("fuss_2si", "2Si"),
            MetricColumn("fuss_3si", "3Si"),
            MetricColumn("fuss_4si", "4Si"),
            MetricColumn("under", "Under", 3),
            MetricColumn("equal", "Equal", 3),
            MetricColumn("over", "Over", 3),
        ),
        rows=_SURF_AUDIO_ROWS,
        paper_source="SURF Table 3",
        paper_rows=True,
        note="paper: SURF Table 3 (models trained on AudioSet, evaluated on FUSS).",
    ),
    TableLayout(
        "sparse_mixit_table1",
        "table1",
        "sparse-MixIT Table 1 columns (MixIT variants on FUSS)",
        ("fuss",),
        (MetricColumn("fuss_msi", "MSi"), MetricColumn("fuss_1s", "1S")),
        rows=("mixit",),
        only_listed=True,
        paper_source="sparse-MixIT Table 1",
        paper_rows=True,
        note="paper: sparse/efficient MixIT Table 1 (trained on YFCC100m or AudioSet, tested "
        "on FUSS); a run sits beside the paper row with the same settings (its `--set` "
        "overrides).",
    ),
    TableLayout(
        "surf_table3_libri_fuss",
        "table1",
        "SURF Table 3 (LibriSpeech + FUSS, 2 sources)",
        ("libri_fuss",),
        _SPEECH,
        rows=_SURF_AUDIO_ROWS,
        paper_source="SURF Table 3",
        paper_rows=True,
        note="paper: SURF Table 3 (models trained on AudioSet).",
    ),
    TableLayout(
        "mixpit_table1_fsdd2mix",
        "table1",
        "MixPIT/MixCycle Table I layout (FSDD2Mix; paper: SC09Mix)",
        ("fsdd2mix",),
        (MetricColumn("si_sdri", "SI-SNRi"), MetricColumn("si_sdr", "SI-SDR")),
        rows=("irm", "supervised", "mixit", "mixpit", "mixcycle", "mixture"),
        paper_source="MixPIT/MixCycle Table I (SC09Mix)",
        paper_rows=True,
        note="paper: MixPIT/MixCycle Table I, SC09Mix column: the reference protocol (two "
        "1-s 8 kHz spoken digits, standardised), on Speech Commands recordings, not FSDD; it "
        "shows the expected order, not a target.",
    ),
    TableLayout(
        "surf_table9",
        "table9",
        "SURF Table 9 (ablations, Appendix E.1)",
        (DEFAULT_TASK, *(t for t in _IMAGE_TASKS if t != DEFAULT_TASK)),
        (
            MetricColumn("psnr", "PSNR"),
            MetricColumn("ssim", "SSIM", 3),
            MetricColumn("lpips", "LPIPS", 3, higher_is_better=False),
        ),
        paper_source="SURF Table 9",
        studies=("ema", "batch", "beta"),
        column_methods=DEFAULT_METHODS,
        bold_best=True,
        note="paper: SURF Table 9 (CIFAR-10, paper-scale training; other tasks and presets "
        "are not comparable in magnitude). * the preset's own value: the main-table run, "
        "shared with `python -m benchmark table`, not recomputed.",
    ),
)

#: every paper table, by name
LAYOUTS: dict[str, TableLayout] = {layout.name: layout for layout in _LAYOUTS}


def layouts_for(task: str, which: str) -> list[TableLayout]:
    """The layouts ``table --which <which>`` shows for ``task``, in declaration order (empty:
    none; the engine then uses a generic layout for ``table1``)."""
    return [lay for lay in LAYOUTS.values() if lay.which == which and task in lay.tasks]
