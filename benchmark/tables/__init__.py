"""Paper-shaped tables from the results store: one engine (:mod:`benchmark.tables.engine`)
renders the layouts declared as data in :mod:`benchmark.tables.layouts` (SURF Tables 1, 2, 3,
4, 9; sparse-MixIT Table 1; MixPIT/MixCycle Table I) as ``md``, ``latex``, ``csv`` or
``html``, with the confidence intervals and paired differences of
:mod:`benchmark.tables.stats` on request (``ci``, ``compare``)."""

from benchmark.tables.engine import (
    display_name,
    format_cell,
    format_interval,
    latex_escape,
    load_results,
    paper_numbers,
    render,
    render_table,
    summarize,
)
from benchmark.tables.layouts import LAYOUTS, MetricColumn, TableLayout, layouts_for

__all__ = [
    "LAYOUTS",
    "MetricColumn",
    "TableLayout",
    "display_name",
    "format_cell",
    "format_interval",
    "latex_escape",
    "layouts_for",
    "load_results",
    "paper_numbers",
    "render",
    "render_table",
    "summarize",
]
