"""The table engine (benchmark/tables): LaTeX that compiles with a real ``pdflatex``, escaped
method keys, one-seed cells, weights notes once per table, and corrupt run folders reported
while the other rows render. The store holds a real smoke run (``mixture`` on MNIST, without
the perceptual weights) and run folders written through ``benchmark.store`` at their real
addresses for every other layout (tests/run_folders.py)."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from helpers import smoke_argv
from run_folders import write_planned, write_run

from benchmark.ablation import STUDIES, plan_ablation
from benchmark.cli import main
from benchmark.store import read_json
from benchmark.tables import LAYOUTS, format_cell, latex_escape, load_results, render_table
from tasks.perceptual import ALEXNET_FILE, INCEPTION_FILE

SMOKE_SET = [
    "task.eval_mixtures=4",
    "perceptual.fid_reference_images=4",
    "perceptual.table2_mixtures=2",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_root) -> dict:
    """A results store with runs for every layout; see the module docstring."""
    results = tmp_path_factory.mktemp("tables") / "results"
    argv = smoke_argv(results, data_root, "--methods", "mixture", "--task", "mnist")
    assert main([*argv, "--executor", "debug", "--device", "cpu", "--set", *SMOKE_SET]) == 0
    (real,) = [d for d in (results / "runs" / "mnist" / "mixture").iterdir()]
    perceptual = read_json(real / "metrics.json")["perceptual"]
    assert perceptual["lpips"]["status"] == "unavailable"  # no weights in the test's torch hub

    def image(psnr: float) -> dict:
        return {"n_mixtures": 4, "psnr": psnr, "ssim": 0.6, "lpips": None, "fid": None,
                "table2_is": None, "table2_fid": None, "perceptual": perceptual}  # fmt: skip

    for seed, psnr in ((0, 15.0), (1, 16.0), (2, 17.0)):
        write_run(results, "surf_sr", "mnist", seed, "smoke", SMOKE_SET, image(psnr))
    write_run(results, "remixit", "mnist", 0, "smoke", SMOKE_SET, image(14.37))
    write_run(results, "self_remixing", "mnist", 0, "smoke", SMOKE_SET, state="running")
    corrupt = write_run(results, "mixit", "mnist", 0, "smoke", SMOKE_SET, image(13.0))
    (corrupt / "metrics.json").write_text('{"psnr": 13.0, "ssim"')  # truncated by hand
    # audio layouts, with a --set variant (sparse-MixIT rows) and paper-only rows (IRM)
    sparse = ("mixit.sparsity=l1_l2", "mixit.sparsity_weight=16")
    write_run(results, "mixit", "fuss", metrics={"fuss_1s": 11.0, "fuss_msi": 9.0, "over": 0.5})
    write_run(results, "mixit", "fuss", overrides=sparse, metrics={"fuss_1s": 15.0})
    write_run(results, "mixcycle", "fsdd2mix", metrics={"si_sdri": 9.5, "si_sdr": 9.6})
    write_run(results, "surf_sr", "libri2mix", metrics={"si_sdr": 12.0, "estoi": 0.8})
    write_run(results, "floss", "libri_fuss", metrics={"si_sdr": 11.0, "pesq": 2.1})
    # SURF Table 9 on CIFAR-10: every grid point but alpha = 0 (not run) and B = 1 (running)
    points, _ = plan_ablation(list(STUDIES.values()), ["surf_sr"], "cifar10", [0], "smoke", [],
                              results)  # fmt: skip
    for i, point in enumerate(points):
        if (point.study, point.value) == ("ema", "0"):
            continue
        state = "running" if (point.study, point.value) == ("batch", "1") else "done"
        metrics = {"psnr": 10.0 + i % 5, "ssim": 0.5, "lpips": 0.1 + 0.01 * (i % 3)}
        write_planned(point.run, metrics, state)
    return {"results": results, "corrupt": corrupt, "real": real}


def _pdflatex() -> str:
    """The ``pdflatex`` binary; missing: skip locally, FAIL when ``CI`` is set."""
    path = shutil.which("pdflatex")
    if path is None:
        reason = "pdflatex not found (Debian: texlive-latex-base texlive-latex-recommended)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install them (.ci/run does)")
        pytest.skip(f"{reason}; set CI=1 to make this a failure")
    return path


def _md_headers(md: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for line in md.splitlines()
        if line.startswith(("| Method |", "| Ablation |"))
    ]


def _latex_headers(tex: str) -> list[str]:
    lines = tex.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line == r"\toprule"]


#: ``table --ci --compare mixit`` (``--compare`` is for method rows: not on Table 9)
WITH_CI = {"ci": True, "compare": "mixit"}


def _all(results: Path, fmt: str, ci: bool = False, compare: str | None = None) -> str:
    return "\n\n".join(
        render_table(
            results, fmt=fmt, which=which, ci=ci, compare=compare if which != "table9" else None
        )
        for which in ("table1", "table2", "table9")
    )


def test_latex_of_every_layout_compiles_with_pdflatex(store, tmp_path):
    pdflatex = _pdflatex()
    tex = _all(store["results"], "latex") + "\n\n" + _all(store["results"], "latex", **WITH_CI)
    assert r"$\Delta$ PSNR vs MixIT" in tex and "[95 \\% confidence interval" in tex
    assert tex.startswith("% python -m benchmark table --format latex; preamble:")
    shown = {lay.title for lay in LAYOUTS.values() if latex_escape(lay.title) in tex}
    assert shown == {lay.title for lay in LAYOUTS.values()}  # every paper table is in there
    (tmp_path / "tables.tex").write_text(tex)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{amssymb}\n"
        "\\usepackage{graphicx}\n\\begin{document}\n\\input{tables.tex}\n\\end{document}\n"
    )
    done = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    assert "Missing character" not in log  # no glyph silently dropped
    assert tex.count(r"\begin{table}") == tex.count(r"\bottomrule") == len(_latex_headers(tex))


def test_latex_escapes_keys_and_has_the_md_columns(store):
    assert latex_escape("surf_sr:surf.ema_decay=0.9") == r"surf\_sr:surf.ema\_decay=0.9"
    assert latex_escape("50% & #1 ~ {x}") == r"50\% \& \#1 \textasciitilde{} \{x\}"
    assert latex_escape("in --weights-dir, 1–4") == r"in -{}-weights-dir, 1--4"
    assert latex_escape("preset `smoke` · α=0.9 ± ↑") == (
        r"preset \texttt{smoke} $\cdot$ $\alpha$=0.9 $\pm$ $\uparrow$"
    )
    for options in ({}, WITH_CI):
        md = _all(store["results"], "md", **options)
        tex = _all(store["results"], "latex", **options)
        assert "surf_sr" in md and r"surf\_sr" in tex  # "Not run: surf_sr seed 0: ..." (Table 9)
        body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
        body = re.sub(r"\$\\[a-zA-Z]+\$", "", body).replace(" & ", " ").replace("{!}{%", "")
        assert not re.search(r"(?<!\\)[_%&#$^~]", body), "a special character is not escaped"
        # the same columns as md, paper columns included, in the same order, display names
        md_headers, tex_headers = _md_headers(md), _latex_headers(tex)
        assert len(md_headers) == len(tex_headers) >= len(LAYOUTS)
        for cols, line in zip(md_headers, tex_headers, strict=True):
            assert line == " & ".join(latex_escape(c) for c in cols) + r" \\"
            assert "paper" in cols
        assert r"SURF (Self-Remixing) PSNR $\uparrow$" in tex and r"\textbf{" in tex
        assert r"FID $\downarrow$" in tex and r"LPIPS $\downarrow$" in tex
        # html: every layout well-formed, with the same column headings as md
        page = ET.fromstring(f"<body>{_all(store['results'], 'html', **options)}</body>")
        heads = [[th.text for th in tr] for tr in page.iter("tr") if tr.find("th[@scope='col']")
                 is not None]  # fmt: skip
        assert heads == md_headers


def test_one_seed_shows_no_spread(store):
    assert format_cell(14.372, float("nan"), 1, 2) == "14.37 (n=1)"
    assert format_cell(14.372, 0.5, 3, 2) == "14.37 ± 0.50 (n=3)"
    assert format_cell(None, None, 0, 2) == format_cell(math.nan, math.nan, 2, 3) == "n/a"
    md = render_table(store["results"], task="mnist")
    remixit = next(line for line in md.splitlines() if line.startswith("| Regression (ReMixIT)"))
    assert "| 14.37 (n=1) |" in remixit and "±" not in remixit
    surf = next(line for line in md.splitlines() if line.startswith("| SURF (Self-Remixing)"))
    assert "| 16.00 ± 1.00 (n=3) | 37.03 |" in surf  # three seeds; the paper's MNIST number
    csv = pd.read_csv(io.StringIO(render_table(store["results"], task="mnist", fmt="csv")))
    one = csv[(csv.method == "remixit") & (csv.metric == "psnr")]
    assert one.n.item() == 1 and math.isnan(one["std"].item())


def test_unavailable_notes_once_per_table_and_short(store):
    record = read_json(store["real"] / "metrics.json")["perceptual"]["lpips"]
    hub = str(Path(record["searched"][-1]).parent)  # the torch hub cache
    for which, files in (("table1", (ALEXNET_FILE, INCEPTION_FILE)), ("table2", (INCEPTION_FILE,))):
        md = render_table(store["results"], task="mnist", which=which)
        assert md.count("#### ") == 1
        for file in files:  # five finished runs share the same two missing files
            (line,) = [line for line in md.splitlines() if file in line]
            assert line.startswith("n/a reason: ") and len(line.replace(hub, "")) < 160
            assert f"place it in {hub} or in --weights-dir" in line
        assert ("LPIPS" in md) == (which == "table1")


def test_corrupt_run_folder_is_reported_and_the_rest_renders(store, capsys):
    metrics = store["corrupt"] / "metrics.json"
    md = render_table(store["results"], task="mnist")
    assert f"corrupt results file {metrics}" in md and "Left out (unreadable)" in md
    assert "| SURF (Self-Remixing) [" in md and "| Mixture (no separation) [" in md
    assert "| MixIT" not in md  # its only run is the corrupt one
    assert "Not finished: self_remixing" in md
    frame = load_results(store["results"], "mnist")
    (error,) = frame[frame.state == "corrupt"].error
    assert str(metrics) in error
    # csv keeps machine-readable lines; the note goes to stderr
    args = ["table", "--task", "mnist", "--format", "csv", "--results-dir", str(store["results"])]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert str(metrics) in err and "mixit" not in set(pd.read_csv(io.StringIO(out)).method)
    # a corrupt config.json too: the folder is named by its path
    config = store["corrupt"] / "config.json"
    saved = config.read_bytes()
    try:
        config.write_text("{")
        assert f"corrupt results file {config}" in render_table(store["results"], task="mnist")
    finally:
        config.write_bytes(saved)


def test_every_layout_metric_has_a_direction_for_its_tasks():
    """ "Higher is better" comes from the task's ``metrics`` or, for paper-only metrics, from
    the layout; the task's declaration wins."""
    from benchmark.tables.engine import _direction

    for layout in LAYOUTS.values():
        for task in layout.tasks:
            for column in layout.metrics:
                assert (_direction(column, task) is None) == (not column.arrow), (layout, column)
    lpips = LAYOUTS["surf_table1"].metrics[1]
    assert lpips.metric == "lpips" and _direction(lpips, "mnist") is False  # layout's
    under = next(c for c in LAYOUTS["surf_table3_fuss"].metrics if c.metric == "under")
    assert under.higher_is_better is None and _direction(under, "fuss") is False  # FUSS's
