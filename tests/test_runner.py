"""End-to-end runs through the CLI on real data (smoke preset): every method, the results
store, skipping finished work, teacher reuse, kill -9 resume, failures and divergence."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status

REPO = Path(__file__).resolve().parent.parent
ALL_IMAGE_METHODS = "mixit,remixit,self_remixing,surf_rm,surf_sr"


def _run(results_dir: Path, data_root: Path, *args: str) -> int:
    return main(smoke_argv(results_dir, data_root, *args))


def _runs(results_dir: Path, method: str) -> list[Path]:
    return [d for d in iter_run_dirs(results_dir) if d.parent.name == method]


@pytest.mark.parametrize("task", ["mnist", "cifar10"])
def test_every_method_end_to_end(task, data_root, results_dir, capsys):
    assert (
        _run(
            results_dir,
            data_root,
            "--methods",
            ALL_IMAGE_METHODS,
            "--task",
            task,
            "--executor",
            "debug",
        )
        == 0
    )
    for method in ["mixture", *ALL_IMAGE_METHODS.split(",")]:
        (run,) = _runs(results_dir, method)
        assert read_status(run)["state"] == "done", method
        record = RunRecord(run)
        metrics = record.metric_values()
        assert record.counts["n_mixtures"] == 32
        assert 0.0 < metrics["psnr"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
        scores = pd.read_parquet(run / "scores.parquet")
        assert list(scores.columns[:3]) == ["mixture", "psnr", "ssim"] and len(scores) == 32
        meta = record.provenance
        assert meta["versions"]["torch"] == importlib.metadata.version("torch")
        assert "git_commit" in meta and meta["wall_time_s"] > 0
        if method != "mixture":
            curve = pd.read_csv(run / "curve.csv")
            assert curve["step"].tolist() == [2, 4, 6]
    # one MixIT teacher serves all four remixing methods
    assert len(_runs(results_dir, "mixit")) == 1
    teacher = _runs(results_dir, "mixit")[0]
    for method in ("remixit", "self_remixing", "surf_rm", "surf_sr"):
        info = read_json(_runs(results_dir, method)[0] / "config.json")
        assert info["teacher_dir"] == str(teacher)
    capsys.readouterr()
    assert main(["table", "--task", task, "--results-dir", str(results_dir)]) == 0
    table = capsys.readouterr().out
    for label in (
        "Mixture (no separation)",
        "MixIT",
        "Regression (ReMixIT)",
        "Regression (Self-Remixing)",
        "SURF (ReMixIT)",
        "SURF (Self-Remixing)",
    ):
        assert f"| {label} |" in table
    assert "PSNR ↑" in table and "SSIM ↑" in table


def test_main_job_with_local_executor_then_nothing_recomputed(data_root, results_dir, capsys):
    """The README's main job (smoke scale) through real submitit subprocess jobs."""
    args = ["--methods", "surf_sr,remixit", "--task", "cifar10"]
    assert _run(results_dir, data_root, *args) == 0
    first = {d: (d / "metrics.json").stat().st_mtime for d in iter_run_dirs(results_dir)}
    assert len(first) == 4  # mixture, mixit teacher, remixit, surf_sr
    assert all(read_status(d)["state"] == "done" for d in first)
    capsys.readouterr()
    started = time.time()
    assert _run(results_dir, data_root, *args) == 0
    assert time.time() - started < 15
    assert "nothing to do" in capsys.readouterr().out
    assert {d: (d / "metrics.json").stat().st_mtime for d in first} == first
    assert (
        main(["table", "--task", "cifar10", "--format", "csv", "--results-dir", str(results_dir)])
        == 0
    )
    frame = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert set(frame.columns) >= {"task", "method", "metric", "mean", "std", "n", "paper"}
    assert set(frame.method) == {"mixture", "mixit", "remixit", "surf_sr"}
    paper = frame[(frame.method == "surf_sr") & (frame.metric == "psnr")]["paper"].iloc[0]
    assert paper == pytest.approx(19.49)


def test_unknown_names_list_valid_ones(data_root, results_dir, capsys):
    assert _run(results_dir, data_root, "--methods", "mixit,nope", "--task", "mnist") == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "surf_sr" in err and "remixit" in err
    assert _run(results_dir, data_root, "--methods", "mixit", "--task", "imagenet") == 2
    err = capsys.readouterr().err
    assert "unknown task 'imagenet'" in err and "cifar10" in err and "mnist" in err
    assert (
        _run(
            results_dir, data_root, "--methods", "mixit", "--task", "mnist", "--set", "surf.nope=1"
        )
        == 2
    )
    assert "unknown config field 'surf.nope'" in capsys.readouterr().err


def test_failed_run_is_recorded_and_the_grid_goes_on(data_root, results_dir, capsys):
    # M = 1 output cannot be reduced to K = 2 estimates: the MixIT run fails at evaluation
    code = _run(
        results_dir,
        data_root,
        "--methods",
        "mixit,remixit",
        "--task",
        "mnist",
        "--set",
        "mixit:net.nf=2",
    )
    assert code == 1
    (mixit,) = _runs(results_dir, "mixit")
    status = read_status(mixit)
    assert status["state"] == "failed"
    assert "GroupNorm" in status["error"]  # 2 channels cannot be normalised
    assert "Traceback" in status["traceback"]
    (remixit,) = _runs(results_dir, "remixit")
    assert read_status(remixit)["state"] == "failed"
    assert "teacher run" in read_status(remixit)["error"]
    (mixture,) = _runs(results_dir, "mixture")
    assert read_status(mixture)["state"] == "done"
    # failed runs are not retried unless asked
    capsys.readouterr()
    _run(
        results_dir,
        data_root,
        "--methods",
        "mixit",
        "--task",
        "mnist",
        "--set",
        "mixit:net.nf=2",
    )
    assert "use --retry-failed" in capsys.readouterr().out


def test_nan_loss_marks_run_diverged(data_root, results_dir):
    code = _run(
        results_dir,
        data_root,
        "--methods",
        "mixit",
        "--task",
        "mnist",
        "--executor",
        "local",
        "--set",
        "train.lr=1e30",
        "train.steps=20",
    )
    assert code == 1
    (run,) = _runs(results_dir, "mixit")
    status = read_status(run)
    assert status["state"] == "diverged", status
    assert "loss became" in status["error"]


def _final_metrics(run_dir: Path) -> dict:
    record = RunRecord(run_dir)
    metrics = record.metric_values()
    return {
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "final_loss": record.metrics_record["training"]["final_loss"],
    }


def test_killed_run_resumes_from_checkpoint_with_identical_metrics(data_root, tmp_path):
    overrides = ["train.steps=400", "train.ckpt_every=10", "train.log_every=10"]
    args = [
        "--methods",
        "mixit",
        "--task",
        "mnist",
        "--preset",
        "smoke",
        "--executor",
        "debug",
        "--data-root",
        str(data_root),
        "--set",
        *overrides,
    ]
    killed = tmp_path / "killed"
    # same intra-op thread count as this process (conftest): CPU results are bitwise
    # reproducible only for a fixed thread count
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--results-dir", str(killed), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline:
        runs = [d for d in iter_run_dirs(killed) if d.parent.name == "mixit"]
        if runs and (runs[0] / "checkpoint.pt").is_file():
            ckpt = runs[0] / "checkpoint.pt"
            break
        time.sleep(0.05)
    assert ckpt is not None, "no checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = ckpt.parent
    saved_step = torch.load(ckpt, weights_only=False)["step"]
    assert 10 <= saved_step < 400
    assert read_status(run_dir)["state"] == "running"  # what a killed job leaves behind
    assert not (run_dir / "metrics.json").exists()

    assert main(["run", "--results-dir", str(killed), *args]) == 0
    assert read_status(run_dir)["state"] == "done"
    log = (run_dir / "log.txt").read_text()
    assert "resumed from checkpoint at step" in log
    curve = pd.read_csv(run_dir / "curve.csv")
    assert curve["step"].tolist() == list(range(10, 401, 10))  # no gap, no duplicate

    clean = tmp_path / "clean"
    assert main(["run", "--results-dir", str(clean), *args]) == 0
    (clean_dir,) = [d for d in iter_run_dirs(clean) if d.parent.name == "mixit"]
    assert clean_dir.name == run_dir.name  # same config, same address
    assert _final_metrics(run_dir) == pytest.approx(_final_metrics(clean_dir), rel=1e-6)


def test_results_are_written_atomically(tmp_path):
    from benchmark.store import atomic_write_json

    target = tmp_path / "x" / "metrics.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temp files left
