"""Paper-shaped tables for the audio tasks, next to the papers' numbers (``results/paper``).

One layout per audio task (:data:`AUDIO_LAYOUTS`), each a list of blocks:

- ``libri2mix``: SURF Table 4 (SI-SDR, ESTOI, PESQ, DNSMOS), and the Libri2Mix column of the
  MixPIT/MixCycle Table I layout (SI-SNRi) when those methods were run.
- ``fuss``: SURF Table 3, left half (1S, 2Si, 3Si, 4Si, Under, Equal, Over), and the
  sparse-MixIT Table 1 columns (MSi, 1S) for the MixIT variants (rows matched to the paper's
  by their ``--set`` overrides; the paper's other settings listed as "not run").
- ``libri_fuss``: SURF Table 3, right half (SI-SDR, ESTOI, PESQ, DNSMOS).
- ``fsdd2mix``: the MixPIT/MixCycle Table I layout (SI-SNRi; the SI-SNR of that paper's eq. 9
  is our SI-SDR without mean removal, the D.2 default) with SC09Mix's published numbers shown as
  the reference protocol's (SC09Mix is Speech Commands digits, not FSDD: same protocol,
  different recordings, so the numbers show the expected order, not a target), then SI-SDR.

Cells are ``mean ± std (n seeds)`` of the per-run means, as the image tables. Metric names are
the task's ``score()`` columns. :func:`render_audio_block` is called by
:func:`benchmark.tables.render_table` for tasks listed here (markdown format).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = [
    "AUDIO_LAYOUTS",
    "AudioBlock",
    "audio_paper_numbers",
    "render_audio_block",
    "render_audio_task",
]

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"

#: method rows of SURF Tables 3 and 4, in the paper's order
SURF_METHODS = ("floss", "mixit", "remixit", "self_remixing", "surf_rm", "surf_sr")
#: rows of MixPIT/MixCycle Table I (``irm``: the oracle ideal ratio mask, paper only)
MIXPIT_METHODS = ("irm", "supervised", "mixit", "mixpit", "mixcycle", "mixture")

LABELS = {
    "si_sdr": "SI-SDR ↑",
    "si_sdri": "SI-SNRi ↑",
    "estoi": "ESTOI ↑",
    "pesq": "PESQ ↑",
    "dnsmos": "DNSMOS ↑",
    "fuss_1s": "1S ↑",
    "fuss_2si": "2Si ↑",
    "fuss_3si": "3Si ↑",
    "fuss_4si": "4Si ↑",
    "fuss_msi": "MSi ↑",
    "under": "Under ↓",
    "equal": "Equal ↑",
    "over": "Over ↓",
}
PAPER_ONLY_NAMES = {"irm": "IRM (oracle)"}


@dataclass
class AudioBlock:
    """One paper table's layout.

    Attributes:
        title: heading, naming the paper table.
        metrics: metric columns (``score()`` names).
        methods: row methods in order (others run on the task are appended, except when
            ``only_listed``).
        source: the ``source`` of the paper rows shown beside ours.
        note: a line under the table.
        by_variant: rows are (method, ``--set`` variant) matched to the paper's ``variant``
            column (sparse-MixIT Table 1).
        only_listed: show only ``methods``.
    """

    title: str
    metrics: tuple[str, ...]
    methods: tuple[str, ...]
    source: str
    note: str = ""
    by_variant: bool = False
    only_listed: bool = False
    digits: dict[str, int] = field(default_factory=dict)


_TABLE4 = AudioBlock(
    "SURF Table 4 (Libri2Mix, 2 sources)",
    ("si_sdr", "estoi", "pesq", "dnsmos"),
    ("mixture", *SURF_METHODS),
    "SURF Table 4",
    "paper: SURF Table 4 (16 kHz, 3,000 test mixtures, full-scale training).",
)
_TABLE1_LIBRI = AudioBlock(
    "MixPIT/MixCycle Table I layout (Libri2Mix)",
    ("si_sdri",),
    ("irm", "supervised", "mixit", "mixpit", "mixcycle"),
    "MixPIT/MixCycle Table I (Libri2Mix)",
    "paper: MixPIT/MixCycle Table I, Libri2Mix column (8 kHz, min mode).",
    only_listed=True,
)
_TABLE3_FUSS = AudioBlock(
    "SURF Table 3 (FUSS, 1-4 sources)",
    ("fuss_1s", "fuss_2si", "fuss_3si", "fuss_4si", "under", "equal", "over"),
    ("mixture", *SURF_METHODS),
    "SURF Table 3",
    "paper: SURF Table 3 (models trained on AudioSet, evaluated on FUSS).",
)
_SPARSE_MIXIT = AudioBlock(
    "sparse-MixIT Table 1 columns (MixIT variants on FUSS)",
    ("fuss_msi", "fuss_1s"),
    ("mixit",),
    "sparse-MixIT Table 1",
    "paper: sparse/efficient MixIT Table 1 (trained on YFCC100m or AudioSet, tested on FUSS); "
    "a run sits beside the paper row with the same settings (its `--set` overrides).",
    by_variant=True,
    only_listed=True,
)
_TABLE3_LIBRI_FUSS = AudioBlock(
    "SURF Table 3 (LibriSpeech + FUSS, 2 sources)",
    ("si_sdr", "estoi", "pesq", "dnsmos"),
    ("mixture", *SURF_METHODS),
    "SURF Table 3",
    "paper: SURF Table 3 (models trained on AudioSet).",
)
_TABLE1_FSDD = AudioBlock(
    "MixPIT/MixCycle Table I layout (FSDD2Mix; paper: SC09Mix)",
    ("si_sdri", "si_sdr"),
    MIXPIT_METHODS,
    "MixPIT/MixCycle Table I (SC09Mix)",
    "paper: MixPIT/MixCycle Table I, SC09Mix column: the reference protocol (two 1-s 8 kHz "
    "spoken digits, standardised), on Speech Commands recordings, not FSDD; it shows the "
    "expected order, not a target.",
)

#: task -> blocks
AUDIO_LAYOUTS: dict[str, list[AudioBlock]] = {
    "libri2mix": [_TABLE4, _TABLE1_LIBRI],
    "fuss": [_TABLE3_FUSS, _SPARSE_MIXIT],
    "libri_fuss": [_TABLE3_LIBRI_FUSS],
    "fsdd2mix": [_TABLE1_FSDD],
}


def audio_paper_numbers() -> pd.DataFrame:
    """Every row of ``results/paper/*.csv`` with the optional ``variant``/``label`` columns
    (empty strings where a file has none)."""
    frames = [pd.read_csv(p, dtype={"variant": str, "label": str}) for p in PAPER_DIR.glob("*.csv")]
    table = pd.concat(frames, ignore_index=True)
    for col in ("variant", "label"):
        if col not in table:
            table[col] = ""
        table[col] = table[col].fillna("")
    return table


def _norm_variant(variant: str) -> str:
    return " ".join(sorted(variant.split()))


def _digits(metric: str) -> int:
    return 3 if metric in ("estoi", "under", "equal", "over") else 2


def _cell(hit: pd.DataFrame, metric: str) -> str:
    if not len(hit) or not math.isfinite(float(hit["mean"].iloc[0])):
        return "–"  # not computed, or no item of this kind (e.g. no 4-source FUSS example)
    row = hit.iloc[0]
    d = _digits(metric)
    return f"{row['mean']:.{d}f} ± {row['std']:.{d}f} ({int(row['n'])})"


def _paper_cell(paper: pd.DataFrame, metric: str) -> str:
    hit = paper[paper.metric == metric]
    if not len(hit) or math.isnan(float(hit["value"].iloc[0])):
        return "–"
    return f"{float(hit['value'].iloc[0]):.{_digits(metric)}f}"


def _display(method: str) -> str:
    from benchmark.registry import get_method

    if method in PAPER_ONLY_NAMES:
        return PAPER_ONLY_NAMES[method]
    try:
        return get_method(method).display_name
    except KeyError:
        return method


def render_audio_block(block: AudioBlock, summary: pd.DataFrame, task: str, preset: str) -> str:
    """Markdown for one block of an audio task at one preset.

    Args:
        block: the layout.
        summary: :func:`benchmark.tables.summarize` output (mean/std/n per run group).
        task: task name.
        preset: preset name.
    """
    part = summary[(summary.task == task) & (summary.preset == preset)]
    paper_all = audio_paper_numbers()
    paper_all = paper_all[(paper_all.task == task) & (paper_all.source == block.source)]
    run_rows = part[["method", "variant"]].drop_duplicates()
    if block.only_listed:
        run_rows = run_rows[run_rows.method.isin(block.methods)]
    order = list(block.methods)
    rows: list[tuple[str, str]] = sorted(
        {(r.method, r.variant) for r in run_rows.itertuples(index=False)},
        key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0], r[1]),
    )
    cols = ["Method"]
    for metric in block.metrics:
        cols += [LABELS.get(metric, metric), "paper"]
    lines = [f"#### {block.title} · preset `{preset}`", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    shown_paper: set[tuple[str, str]] = set()
    listed = {m for m, _ in rows}
    # paper-only rows in the paper's order (methods not run, e.g. the oracle IRM)
    for method in order:
        if method not in listed and not block.by_variant:
            paper = paper_all[paper_all.method == method]
            if len(paper):
                rows.append((method, "\0paper"))
    rows.sort(key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0], r[1]))
    for method, variant in rows:
        paper_only = variant == "\0paper"
        if block.by_variant:
            paper = paper_all[
                (paper_all.method == method)
                & (paper_all.variant.map(_norm_variant) == _norm_variant(variant))
            ]
            if len(paper):
                label = paper["label"].iloc[0]
                paper = paper[paper.label == label]
                shown_paper.add((method, label))
        elif variant and not paper_only:  # the paper's number belongs to its default setting
            paper = paper_all.iloc[0:0]
        else:
            paper = paper_all[(paper_all.method == method) & (paper_all.variant == "")]
        name = _display(method) + (f" [{variant}]" if variant and not paper_only else "")
        if paper_only:
            name += " (paper only)"
        cells = [name]
        for metric in block.metrics:
            hit = part[
                (part.method == method) & (part.variant == variant) & (part.metric == metric)
            ]
            cells += ["not run" if paper_only else _cell(hit, metric), _paper_cell(paper, metric)]
        lines.append("| " + " | ".join(cells) + " |")
    if block.by_variant:  # the paper's other settings, for reference
        for (method, label), paper in paper_all.groupby(["method", "label"], sort=False):
            if (method, label) in shown_paper:
                continue
            cells = [f"{_display(method)} ({label}; paper only)"]
            for metric in block.metrics:
                cells += ["not run", _paper_cell(paper, metric)]
            lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Cells: mean ± std over seeds (number of seeds); – : not computed."]
    if block.note:
        notes.append(block.note)
    return "\n".join(lines + notes)


def render_audio_task(summary: pd.DataFrame, task: str, preset: str, runs: pd.DataFrame) -> str:
    """Every block of :data:`AUDIO_LAYOUTS` for ``task`` at ``preset``, under one heading, with
    unfinished runs listed."""
    from benchmark.registry import get_task

    try:
        title = get_task(task).display_name
    except KeyError:
        title = task
    part = summary[(summary.task == task) & (summary.preset == preset)]
    header = f"### {title} · preset `{preset}`"
    n_mix = part["n_mixtures"].dropna() if "n_mixtures" in part else pd.Series(dtype=float)
    if len(n_mix):
        header += f" · {int(n_mix.max()):,} evaluation mixtures"
    out = [header]
    for block in AUDIO_LAYOUTS[task]:
        out += ["", render_audio_block(block, summary, task, preset)]
    pending = runs[(runs.task == task) & (runs.preset == preset) & (runs.state != "done")]
    for row in pending.itertuples(index=False):
        out.append(f"Not finished: {row.method} seed {row.seed} ({row.state}).")
    return "\n".join(out)
