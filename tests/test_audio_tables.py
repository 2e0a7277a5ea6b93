"""Audio tables: SURF Tables 3/4, MixPIT/MixCycle Table I and sparse-MixIT Table 1 layouts with
the papers' numbers transcribed in results/paper."""

from __future__ import annotations

import pandas as pd

from benchmark.audio_tables import AUDIO_LAYOUTS, audio_paper_numbers, render_audio_task
from benchmark.tables import paper_numbers


def _summary(task: str, rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "task": task,
                "preset": "cpu",
                "method": m,
                "variant": v,
                "metric": k,
                "mean": x,
                "std": 0.0,
                "n": 1,
                "n_mixtures": 500,
            }
            for m, v, k, x in rows
        ]
    )


_NO_RUNS = pd.DataFrame(columns=["task", "preset", "method", "seed", "state"])


def test_paper_numbers_are_transcribed():
    paper = audio_paper_numbers()

    def value(task, method, metric, variant=""):
        hit = paper[
            (paper.task == task)
            & (paper.method == method)
            & (paper.metric == metric)
            & (paper.variant == variant)
        ]
        return float(hit["value"].iloc[0])

    assert value("libri2mix", "surf_rm", "si_sdr") == 16.54  # SURF Table 4
    assert value("libri2mix", "mixit", "dnsmos") == 2.36
    assert value("fuss", "floss", "fuss_1s") == 38.79  # SURF Table 3
    assert value("fuss", "surf_sr", "over") == 0.312
    assert value("libri_fuss", "self_remixing", "si_sdr") == 14.81
    assert value("fsdd2mix", "mixcycle", "si_sdri") == 15.9  # MixPIT/MixCycle Table I
    assert value("libri2mix", "mixpit", "si_sdri") == 7.1
    sparse = "mixit.sparsity=l1_l2 mixit.sparsity_weight=16"
    assert value("fuss", "mixit", "fuss_1s", sparse) == 18.6  # sparse-MixIT Table 1, AudioSet
    # rows of single settings stay out of the generic (task, method, metric) merge
    generic = paper_numbers()
    assert not generic.duplicated(["task", "method", "metric"]).any()
    assert "label" not in generic.columns


def test_fsdd2mix_table_layout():
    summary = _summary(
        "fsdd2mix",
        [
            ("mixture", "", "si_sdri", 0.0),
            ("mixit", "", "si_sdri", 4.0),
            ("mixcycle", "", "si_sdri", 9.5),
            ("mixcycle", "", "si_sdr", 9.6),
        ],
    )
    text = render_audio_task(summary, "fsdd2mix", "cpu", _NO_RUNS)
    assert "MixPIT/MixCycle Table I layout" in text and "500 evaluation mixtures" in text
    lines = text.splitlines()
    mixcycle = next(line for line in lines if line.startswith("| MixCycle |"))
    assert "9.50 ± 0.00 (1)" in mixcycle and "| 15.90 |" in mixcycle
    assert any(line.startswith("| IRM (oracle) (paper only) | not run | 18.40") for line in lines)
    assert any(line.startswith("| MixPIT (paper only) | not run | 10.40") for line in lines)
    order = [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]
    assert order.index("IRM (oracle) (paper only)") < order.index("MixIT") < order.index("MixCycle")


def test_fuss_tables_with_sparse_mixit_variants():
    sparse = "mixit.sparsity_weight=16 mixit.sparsity=l1_l2"  # any order of --set items
    summary = _summary(
        "fuss",
        [
            ("mixit", "", "fuss_1s", 11.0),
            ("mixit", "", "fuss_msi", 9.0),
            ("mixit", sparse, "fuss_1s", 15.0),
            ("surf_sr", "", "over", 0.25),
        ],
    )
    text = render_audio_task(summary, "fuss", "cpu", _NO_RUNS)
    assert [b.title for b in AUDIO_LAYOUTS["fuss"]][1] in text
    surf = next(line for line in text.splitlines() if line.startswith("| SURF (Self-Remixing)"))
    assert "0.250 ± 0.000 (1) | 0.312" in surf  # SURF Table 3 Over beside ours
    table3, table1 = [r for r in text.splitlines() if f"[{sparse}]" in r]
    assert "| 15.00 ± 0.00 (1) | – |" in table3  # no SURF number beside a non-default setting
    assert "| 15.00 ± 0.00 (1) | 18.60 |" in table1  # sparse-MixIT's 16 C_l1/l2, M = 4
    assert any(
        "trained on YFCC100m, 23 C_l1/l2 M=8; paper only" in line for line in text.split("\n")
    )
