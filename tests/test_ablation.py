"""SURF Table 9 ablations end to end on real CIFAR-10 (smoke preset, the three real grids),
reuse of the main-table run, ``table --which table9`` and the figures (ablations, separation)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from helpers import smoke_argv
from PIL import Image

from benchmark.ablation import STUDIES, plan_ablation, point_overrides
from benchmark.cli import main
from benchmark.config import parse_overrides
from benchmark.runner import plan_runs
from benchmark.store import iter_run_dirs, read_json, read_status
from benchmark.tables import paper_numbers, summarize
from tasks.perceptual import ALEXNET_FILE

# cheap but real: 2 MixIT and 2 SURF iterations, 8 evaluation mixtures; the grids are the paper's
SET = ["train.steps=2", "task.eval_mixtures=8"]
COMMON = ["--task", "cifar10", "--preset", "smoke", "--executor", "debug"]


def _surf_runs(results_dir: Path) -> list[Path]:
    return [d for d in iter_run_dirs(results_dir) if d.parent.name == "surf_sr"]


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, data_root):
    """Main-table SURF-SR run, then the beta, EMA and batch studies on top of it. LPIPS runs
    with AlexNet weights the test makes (random torchvision AlexNet, no download); FID has no
    weights here and stays n/a."""
    base = tmp_path_factory.mktemp("ablation")
    results, weights = base / "results", base / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights / ALEXNET_FILE)
    io = ["--results-dir", str(results), "--data-root", str(data_root)]
    run = ["run", "--methods", "surf_sr", *COMMON, *io, "--weights-dir", str(weights)]
    assert main([*run, "--set", *SET]) == 0
    (main_run,) = _surf_runs(results)
    before = {
        "status": read_json(main_run / "status.json"),
        "mtime": (main_run / "metrics.json").stat().st_mtime_ns,
    }
    counts = {}
    for study in ("beta", "ema", "batch"):
        args = ["ablate", "--study", study, "--methods", "surf_sr", *COMMON, *io]
        args += ["--weights-dir", str(weights), "--set", *SET]
        assert main(args) == 0
        counts[study] = len(_surf_runs(results))
    return {"results": results, "main_run": main_run, "before": before, "counts": counts, "io": io}


def test_studies_run_end_to_end_and_reuse_the_main_run(ablated):
    counts = ablated["counts"]
    # beta: 4 grid values, the proposed linear schedule is the main-table run
    assert counts["beta"] == 1 + 3
    # ema: alpha = 0.9 is the smoke preset's own value, hence the main run again
    assert counts["ema"] == counts["beta"] + 4
    # batch: the smoke batch (8) is not on the paper's grid, so all 5 are new
    assert counts["batch"] == counts["ema"] + 5
    main_run = ablated["main_run"]
    assert read_json(main_run / "status.json") == ablated["before"]["status"]
    assert (main_run / "metrics.json").stat().st_mtime_ns == ablated["before"]["mtime"]
    for run_dir in _surf_runs(ablated["results"]):
        assert read_status(run_dir)["state"] == "done"
    # one MixIT teacher for every point: overrides are prefixed with the SURF method
    mixit = [d for d in iter_run_dirs(ablated["results"]) if d.parent.name == "mixit"]
    assert len(mixit) == 1
    # each batch point really trained with its B (the stored config) and the others did not
    batches = sorted(
        read_json(d / "config.json")["config"]["train"]["batch_size"]
        for d in _surf_runs(ablated["results"])
    )
    assert batches == [1, 4, 8, 8, 8, 8, 8, 8, 8, 8, 16, 64, 256]


def test_shared_points_resolve_to_the_main_table_config(tmp_path):
    """At ``paper`` scale alpha = 0.999, B = 256 and the linear beta are the main-table run."""
    overrides = parse_overrides(SET)
    (main_run,) = [
        r
        for r in plan_runs(["surf_rm"], "cifar10", [0], "paper", overrides, tmp_path)
        if r.config.method == "surf_rm"
    ]
    points, runs = plan_ablation(
        list(STUDIES.values()), ["surf_rm"], "cifar10", [0], "paper", overrides, tmp_path
    )
    shared = {(p.study, p.value) for p in points if p.shared}
    assert shared == {("ema", "0.999"), ("batch", "256"), ("beta", "linear")}
    for p in points:
        assert (p.run.run_dir == main_run.run_dir) == p.shared
        assert p.run.teacher.run_dir == main_run.teacher.run_dir
    # 14 points, 3 of them the same run: 12 SURF runs + MixIT + mixture reference
    assert len(points) == 14 and len(runs) == 12 + 2
    assert point_overrides(STUDIES["ema"], "0.9", "surf_rm", "cifar10", 0, "paper", []) == [
        ("surf_rm", "surf.ema_decay", "0.9")
    ]
    # seeds multiply the grid
    points2, _ = plan_ablation(
        [STUDIES["beta"]], ["surf_sr", "surf_rm"], "cifar10", [0, 1], "paper", [], tmp_path
    )
    assert len(points2) == 4 * 2 * 2


def test_table9_shows_grid_bold_best_and_paper(ablated, capsys):
    io = ablated["io"][:2]
    args = ["table", "--which", "table9", "--task", "cifar10", *io, "--set", *SET]
    assert main([*args, "--methods", "surf_sr"]) == 0
    out = capsys.readouterr().out
    for label in ["α=0 ", "α=0.9999", "B=1 ", "B=256", "β=0.1", "β=1.0", "proposed schedule"]:
        assert label in out
    assert "**" in out  # best per study
    assert "**19.49**" in out and "**0.751**" in out  # the paper's best SURF-SR row, bold
    assert "8.79" in out and "13.36" in out  # paper B = 1 and alpha = 0.9999 (SR)
    assert "(n=1)" in out and "± 0.000 (n=1)" not in out  # one seed: no spread claimed
    assert "| n/a |" not in out  # LPIPS computed with the test's AlexNet weights
    assert "LPIPS: AlexNet" in out  # footnote: how LPIPS was computed
    lpips = [line.split(" | ")[6] for line in out.splitlines() if line.startswith("|  | α=")]
    assert len(lpips) == 4 and all("(n=1)" in c and "±" not in c for c in lpips)
    assert main([*args, "--methods", "surf_sr", "--format", "csv"]) == 0
    from io import StringIO

    csv = pd.read_csv(StringIO(capsys.readouterr().out), dtype={"grid_value": str})
    assert set(csv.study) == {"ema", "batch", "beta"}
    assert len(csv) == 14 * 3 and (csv.n == 1).all()  # PSNR, SSIM, LPIPS per point
    assert csv.paper.notna().all()


def test_summarize_ablation_mean_std_n():
    rows = [
        {"study": "ema", "grid_value": "0.9", "method": "surf_sr", "metric": "psnr", "value": s}
        for s in (10.0, 12.0, 14.0)
    ]
    keys = ["study", "grid_value", "method", "metric"]
    summary = summarize(pd.DataFrame(rows), keys)
    assert summary["mean"].item() == 12.0 and summary["std"].item() == 2.0
    assert summary["n"].item() == 3
    one = summarize(pd.DataFrame(rows[:1]), keys)
    assert one["n"].item() == 1 and pd.isna(one["std"].item())  # no spread from one seed


def test_paper_table9_is_complete():
    paper = paper_numbers()
    paper = paper[paper.source == "SURF Table 9"]
    assert len(paper) == 14 * 2 * 3
    proposed = paper[(paper.study == "beta") & (paper.grid_value == "linear")]
    assert proposed[(proposed.method == "surf_rm") & (proposed.metric == "psnr")].value.item() == (
        19.73
    )


def test_ablation_figures(ablated, tmp_path, capsys):
    out = tmp_path / "figs"
    args = ["figure", "--which", "ablations", "--task", "cifar10", "--preset", "smoke"]
    # without the runs' --set nothing matches the grid: a clear error, no empty figure
    assert main([*args, "--methods", "surf_sr", *ablated["io"][:2], "--out", str(out)]) == 2
    assert "no finished ablation runs" in capsys.readouterr().err
    assert main([*args, "--methods", "surf_sr", *ablated["io"][:2], "--out", str(out), "--set",
                 *SET]) == 0  # fmt: skip
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [
        f"ablation_{s}_cifar10_smoke.png" for s in ("batch", "beta", "ema")
    ]
    for png in pngs:
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            # three metric panels (PSNR, SSIM, LPIPS) of 4.2 x 3.6 in at 120 dpi
            assert img.size == (1512, 432)


def test_separation_figure(ablated, tmp_path, capsys):
    out = tmp_path / "sep.png"
    args = ["figure", "--task", "cifar10", "--preset", "smoke", *ablated["io"], "--out", str(out)]
    assert main([*args, "--methods", "mixit,floss,surf_sr", "--num-mixtures", "3"]) == 0
    text = capsys.readouterr().out
    assert "skipping floss" in text and "mixit, surf_sr" in text
    with Image.open(out) as img:
        # 3 rows; mixture + ground-truth pair + 2 methods' pairs = 7 columns of 0.95 in
        assert img.size == (798, 420) and img.mode == "RGBA"
    assert main([*args, "--methods", "floss"]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert main([*args, "--methods", "nope"]) == 2
    assert "valid" in capsys.readouterr().err


def test_separation_figure_mnist_default(tmp_path, data_root, capsys):
    """`figure --task mnist` with no other option: every finished method, 4 mixtures."""
    io = ["--results-dir", str(tmp_path / "r"), "--data-root", str(data_root)]
    run = ["run", "--methods", "mixit", "--task", "mnist", "--preset", "smoke"]
    assert main([*run, "--executor", "debug", *io, "--set", *SET]) == 0
    out = tmp_path / "mnist.png"
    assert main(["figure", "--task", "mnist", *io, "--out", str(out)]) == 0
    assert "(mixit)" in capsys.readouterr().out
    with Image.open(out) as img:
        # 4 rows; mixture + ground-truth pair + MixIT pair = 5 columns
        assert img.size == (570, 540)


def test_bad_input_is_refused(tmp_path, capsys):
    assert main(["ablate", "--study", "lr", "--results-dir", str(tmp_path)]) == 2
    assert "valid studies: ema, batch, beta" in capsys.readouterr().err
    assert main(["ablate", "--study", "ema", "--methods", "mixit"]) == 2
    err = capsys.readouterr().err
    assert "'mixit' runs have no 'surf' section" in err
    assert "studies that apply to 'mixit': batch" in err


def test_ablation_figure_of_a_study_with_only_its_main_table_point(
    data_root, tmp_path, monkeypatch
):
    """Before an ablation is run, a study's grid holds only the main-table run (the preset's own
    value): its figure shows that one point on the whole grid's axis, without warnings, and its
    legend names only methods that have points."""
    import warnings

    import benchmark.figures as figures

    results = tmp_path / "results"
    args = ["--methods", "surf_sr", "--task", "mnist", "--executor", "debug", "--set", *SET]
    assert main(smoke_argv(results, data_root, *args)) == 0
    legends: dict[str, list[str]] = {}
    save = figures._save

    def recording_save(fig, path, dpi):
        legends[Path(path).name] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return save(fig, path, dpi)

    monkeypatch.setattr(figures, "_save", recording_save)
    overrides = parse_overrides(SET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's singular-limits warning
        written = figures.ablation_figures(
            results, tmp_path / "figs", "mnist", "smoke", ["surf_sr", "surf_rm"], None, overrides
        )
    assert {p.name for p in written} == {
        "ablation_ema_mnist_smoke.png",
        "ablation_beta_mnist_smoke.png",
    }
    assert all(labels == ["SURF (Self-Remixing)"] for labels in legends.values()), legends
    for png in written:
        with Image.open(png) as img:
            img.verify()
