"""Learning curves (``eval.every``): points of the task's curve metrics on the first
``eval.curve_mixtures`` evaluation mixtures during training, at no change to the trained model.
(Resuming after ``kill -9`` and SIGTERM keeps the curve without gaps or duplicates:
tests/test_interrupts.py.)"""

from __future__ import annotations

import pandas as pd
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.store import RunRecord, iter_records


def _run(results, data_root, *extra: str) -> dict[str, RunRecord]:
    args = ["--methods", "mixit,surf_sr", "--task", "mnist", "--executor", "debug", "--set"]
    args += ["train.steps=6", "task.eval_mixtures=12", *extra]
    assert main(smoke_argv(results, data_root, *args)) == 0
    return {r.method: r for r in iter_records(results)}


def test_curve_points_change_nothing_else(data_root, tmp_path):
    plain = _run(tmp_path / "plain", data_root)
    curved = _run(tmp_path / "curved", data_root, "eval.every=2", "eval.curve_mixtures=8")
    for method in ("mixit", "surf_sr"):
        a, b = plain[method], curved[method]
        assert a.run_hash == b.run_hash  # eval.every is not part of the address
        assert a.metric_values() == b.metric_values()  # the model trained identically
        assert a.metrics_record["training"] == b.metrics_record["training"]
        assert a.curve()["loss"].tolist() == b.curve()["loss"].tolist()
        assert not (a.path / "eval_curve.csv").exists()
        points = pd.read_csv(b.path / "eval_curve.csv")
        assert points["step"].tolist() == [0, 2, 4, 6]
        assert {"psnr", "ssim", "train_time_s", "eval_time_s"} <= set(points.columns)
        assert points["train_time_s"].is_monotonic_increasing
        assert b.timings["curve_eval_time_s"] > 0
        assert b.timings["curve_eval_time_s"] == points["eval_time_s"].sum()
    # the last point is the final model on the first 8 evaluation mixtures: its PSNR equals the
    # mean of those rows of the final evaluation (same separation, same seed)
    surf = curved["surf_sr"]
    last = pd.read_csv(surf.path / "eval_curve.csv").iloc[-1]
    assert abs(last["psnr"] - surf.scores()["psnr"].iloc[:8].mean()) < 1e-9


def test_curves_figure_draws_every_method(data_root, tmp_path, capsys):
    from PIL import Image

    from benchmark.figures import curve_points

    results = tmp_path / "results"
    _run(results, data_root, "eval.every=2", "eval.curve_mixtures=8")
    points = curve_points(results, "mnist")
    assert set(points.method) == {"mixit", "surf_sr"} and set(points.metric) == {"psnr", "ssim"}
    out = tmp_path / "curves.png"
    args = ["figure", "--which", "curves", "--task", "mnist", "--results-dir", str(results)]
    assert main([*args, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size[0] > 1000 and image.size[1] > 400
    assert main([*args, "--task", "cifar10"]) == 2  # no curves there: one clear line
    assert "--set eval.every=N" in capsys.readouterr().err


def test_curve_label_names_a_stopped_run_by_its_state():
    from benchmark.figures import curve_label

    assert curve_label("mixit", "", 1, {"done"}) == "MixIT"
    assert curve_label("surf_sr", "beta=0.5", 3, {"done", "running"}).endswith(
        " [beta=0.5] (3 seeds) (training)"
    )
    assert curve_label("mixit", "", 1, {"preempted"}) == "MixIT (preempted)"
    assert curve_label("mixit", "", 2, {"interrupted", "running"}) == (
        "MixIT (2 seeds) (interrupted, training)"
    )
