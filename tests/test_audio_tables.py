"""Audio tables: SURF Tables 3/4, MixPIT/MixCycle Table I and sparse-MixIT Table 1 layouts with
the papers' numbers transcribed in results/paper, rendered from run folders in a results store."""

from __future__ import annotations

from run_folders import write_run

from benchmark.tables import LAYOUTS, paper_numbers, render_table


def test_paper_numbers_are_transcribed():
    paper = paper_numbers()

    def value(task, method, metric, variant="", source=None):
        hit = paper[
            (paper.task == task)
            & (paper.method == method)
            & (paper.metric == metric)
            & (paper.variant == variant)
        ]
        if source:
            hit = hit[hit.source == source]
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
    assert value("cifar10", "mixture", "table2_fid", source="SURF Table 2") == 28.02
    # one number per (source, task, method, setting, row label, grid point, metric)
    assert not paper.duplicated([c for c in paper.columns if c != "value"]).any()
    # every layout's paper source has numbers
    sources = set(paper.source)
    assert all(lay.paper_source in sources for lay in LAYOUTS.values() if lay.paper_source)


def test_fsdd2mix_table_layout(tmp_path):
    results = tmp_path / "results"
    write_run(results, "mixture", "fsdd2mix", metrics={"si_sdri": 0.0, "si_sdr": -0.3})
    write_run(results, "mixit", "fsdd2mix", metrics={"si_sdri": 4.0})
    write_run(results, "mixcycle", "fsdd2mix", metrics={"si_sdri": 9.5, "si_sdr": 9.6})
    text = render_table(results, task="fsdd2mix")
    assert "MixPIT/MixCycle Table I layout" in text and "500 evaluation mixtures" in text
    lines = text.splitlines()
    mixcycle = next(line for line in lines if line.startswith("| MixCycle |"))
    assert "| 9.50 (n=1) | 15.90 |" in mixcycle and "±" not in mixcycle
    assert any(line.startswith("| IRM (oracle) (paper only) | not run | 18.40") for line in lines)
    assert any(line.startswith("| MixPIT (paper only) | not run | 10.40") for line in lines)
    order = [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]
    assert order.index("IRM (oracle) (paper only)") < order.index("MixIT") < order.index("MixCycle")
    mixit = next(line for line in lines if line.startswith("| MixIT |"))
    assert mixit.endswith("| 4.00 (n=1) | 5.30 | n/a | – |")  # SI-SDR not computed: n/a


def test_fuss_tables_with_sparse_mixit_variants(tmp_path):
    results = tmp_path / "results"
    sparse = ("mixit.sparsity_weight=16", "mixit.sparsity=l1_l2")  # any order of --set items
    write_run(results, "mixit", "fuss", metrics={"fuss_1s": 11.0, "fuss_msi": 9.0})
    write_run(results, "mixit", "fuss", seed=1, metrics={"fuss_1s": 13.0, "fuss_msi": 10.0})
    write_run(results, "mixit", "fuss", overrides=sparse, metrics={"fuss_1s": 15.0})
    write_run(results, "surf_sr", "fuss", metrics={"over": 0.25, "fuss_4si": float("nan")})
    text = render_table(results, task="fuss")
    assert LAYOUTS["sparse_mixit_table1"].title in text
    assert LAYOUTS["surf_table3_fuss"].title in text
    lines = text.splitlines()
    surf = next(line for line in lines if line.startswith("| SURF (Self-Remixing)"))
    assert "0.250 (n=1) | 0.312" in surf  # SURF Table 3 Over beside ours
    assert "| 4Si ↑ |" in text and "| n/a | 8.80 |" in surf  # NaN (no 4-source mixture): n/a
    variant = next(line for line in lines if "[mixit." in line)
    table3, table1 = [r for r in lines if r.startswith(variant.split(" |")[0] + " |")]
    assert "| 15.00 (n=1) | – |" in table3  # no SURF number beside a non-default setting
    assert "| 15.00 (n=1) | 18.60 |" in table1  # sparse-MixIT's 16 C_l1/l2, M = 4
    baseline = [r for r in lines if r.startswith("| MixIT |")]
    assert "| 12.00 ± 1.41 (n=2) | 13.30 |" in baseline[1]  # AudioSet baseline, two seeds
    assert any("trained on YFCC100m, 23 C_l1/l2 M=8; paper only" in line for line in lines)
