"""Execution plumbing without a cluster: run locks, concurrent writers, a failing job in a grid,
the GPU slot pool, stop signals, cluster options and ``--dry-run``."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.preempt import RunLocked, run_is_locked, run_lock
from benchmark.slots import GpuSlots
from benchmark.slurm import ClusterOptions, load_cluster_options
from benchmark.store import (
    RunRecord,
    atomic_write_csv,
    atomic_write_json,
    iter_run_dirs,
    read_json,
    read_status,
    write_status,
)

REPO = Path(__file__).resolve().parent.parent


def _writer(results_dir: str, index: int, rounds: int) -> None:
    """One of many concurrent jobs: its own record, plus a file every writer fights over."""
    run_dir = Path(results_dir) / "runs" / "mnist" / "mixit" / f"run{index:02d}"
    atomic_write_json(run_dir / "config.json", {"hash": run_dir.name, "config": {"seed": index}})
    shared = Path(results_dir) / "runs" / "mnist" / "mixit" / "shared"
    for r in range(rounds):
        write_status(run_dir, "running", step=r)
        atomic_write_csv(run_dir / "curve.csv", pd.DataFrame({"step": range(r + 1)}))
        atomic_write_json(shared / "status.json", {"writer": index, "round": r, "pad": "x" * 4096})
    atomic_write_json(run_dir / "metrics.json", {"psnr": float(index), "n_mixtures": 32})
    write_status(run_dir, "done")


def test_sixteen_concurrent_writers_leave_sixteen_intact_records(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i, 40)) for i in range(16)]
    for proc in procs:
        proc.start()
    shared = tmp_path / "runs" / "mnist" / "mixit" / "shared" / "status.json"
    reads = 0
    while any(p.is_alive() for p in procs):  # a reader never sees a half-written file
        if shared.is_file():
            assert json.loads(shared.read_text())["pad"] == "x" * 4096
            reads += 1
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    runs = [d for d in iter_run_dirs(tmp_path) if d.name.startswith("run")]
    assert len(runs) == 16 and reads > 0
    for run_dir in runs:
        index = int(run_dir.name[3:])
        assert read_status(run_dir)["state"] == "done"
        assert read_json(run_dir / "metrics.json") == {"psnr": float(index), "n_mixtures": 32}
        assert pd.read_csv(run_dir / "curve.csv")["step"].tolist() == list(range(40))
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert leftovers == []


def test_run_lock_keeps_a_second_invocation_off_a_running_run(data_root, tmp_path, capsys):
    from benchmark.job import execute_run
    from benchmark.runner import plan_runs, prepare_runs

    runs = plan_runs(["mixit"], "mnist", [0], "smoke", [], tmp_path)
    todo = prepare_runs(runs)
    mixit = next(r for r in todo if r.config.method == "mixit")
    lock = run_lock(mixit.run_dir)
    with lock:  # "another invocation" executing the run
        assert run_is_locked(mixit.run_dir)
        write_status(mixit.run_dir, "running", pid=12345)
        with pytest.raises(RunLocked, match="already being executed"):
            execute_run(str(mixit.run_dir), str(data_root), "cpu")
        assert read_status(mixit.run_dir)["pid"] == 12345  # status untouched
        assert mixit not in prepare_runs(runs)  # not planned again while locked
    assert not run_is_locked(mixit.run_dir)
    # "running" but nobody holds the lock: a killed job, shown as stale and planned again
    assert main(["status", "--results-dir", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if " mixit " in x)
    assert line.split()[5] == "stale"
    assert mixit in prepare_runs(runs)


def test_grid_with_one_raising_job_records_the_rest_done(data_root, tmp_path, capsys):
    # a U-Net of nf = 2 channels cannot be built (GroupNorm): only the MixIT job raises, inside
    # the job (the config itself is valid)
    args = ["--methods", "mixit,mixpit,supervised", "--task", "mnist", "--executor", "debug"]
    code = main(smoke_argv(tmp_path, data_root, *args, "--set", "mixit:net.nf=2"))
    assert code == 1
    states = {d.parent.name: read_status(d) for d in iter_run_dirs(tmp_path)}
    assert {m: s["state"] for m, s in states.items()} == {
        "mixit": "failed",
        "mixpit": "done",
        "supervised": "done",
        "mixture": "done",
    }
    assert "GroupNorm" in states["mixit"]["error"]
    assert states["mixit"]["traceback"].startswith("Traceback (most recent call last)")
    capsys.readouterr()
    assert main(["status", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 done, 1 failed" in out and "GroupNorm" in out


def test_local_jobs_get_their_own_gpu_slot(data_root, tmp_path, monkeypatch):
    pool = GpuSlots([3, 5])
    assert pool.acquire() == 3 and pool.acquire() == 5 and pool.acquire() is None
    pool.release(3)
    with pytest.raises(ValueError, match="not in use"):
        pool.release(3)
    # two concurrent local jobs (real submitit subprocesses) on a pool of GPUs "3" and "5"
    args = ["--methods", "mixit", "--task", "mnist", "--executor", "local", "--device", "cpu"]
    args += ["--max-parallel", "2", "--gpus", "3,5"]
    args += ["--set", "train.steps=1", "task.eval_mixtures=8"]  # the jobs' content is not tested
    assert main(smoke_argv(tmp_path, data_root, *args)) == 0
    runs = list(iter_run_dirs(tmp_path))
    gpus = sorted(RunRecord(d).provenance["cuda_visible_devices"] for d in runs)
    assert gpus == ["3", "5"]
    # without a pool, jobs see this process's GPUs (submitit alone would give them none: "")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    args = ["--methods", "mixture", "--task", "mnist", "--device", "cpu"]
    assert (
        main(smoke_argv(tmp_path / "one", data_root, *args, "--set", "task.eval_mixtures=8")) == 0
    )
    (run_dir,) = iter_run_dirs(tmp_path / "one")
    assert RunRecord(run_dir).provenance["cuda_visible_devices"] == "7"


def test_sigterm_checkpoints_at_an_iteration_and_resumes_identically(data_root, tmp_path):
    overrides = ["train.steps=40", "train.ckpt_every=1000", "train.log_every=4"]
    args = ["--methods", "mixit", "--task", "mnist", "--executor", "debug", "--set", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env["BENCHMARK_STEP_DELAY_S"] = "0.05"
    stopped = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "benchmark", *smoke_argv(stopped, data_root, *args)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    run_dir = None
    while time.time() < deadline:
        runs = [d for d in iter_run_dirs(stopped) if d.parent.name == "mixit"]
        if runs and (read_json(runs[0] / "progress.json") or {}).get("step", 0) >= 6:
            run_dir = runs[0]
            break
        time.sleep(0.05)
    assert run_dir is not None, "training did not start"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    status = read_status(run_dir)
    assert status["state"] == "preempted" and "SIGTERM" in status["error"]
    assert 6 <= status["step"] < 40
    assert main(smoke_argv(stopped, data_root, *args)) == 0
    clean = tmp_path / "clean"
    assert main(smoke_argv(clean, data_root, *args)) == 0
    (clean_dir,) = [d for d in iter_run_dirs(clean) if d.parent.name == "mixit"]
    a, b = (pd.read_csv(d / "curve.csv") for d in (run_dir, clean_dir))
    assert a["step"].tolist() == list(range(4, 41, 4))
    assert a["loss"].tolist() == b["loss"].tolist()  # incl. the record spanning the stop
    a_record, b_record = RunRecord(run_dir), RunRecord(clean_dir)
    assert a_record.metric_values() == b_record.metric_values()
    assert a_record.metrics_record["training"] == b_record.metrics_record["training"]


def test_cluster_options_yaml_then_flags(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "partition: gpu\naccount: lab\ngpus_per_job: 1\ntime_min: 600\n"
        "sbatch: {constraint: a100, exclusive: true}\n"
    )
    options = load_cluster_options(path, time_min=120, qos=None, sbatch={"constraint": "h100"})
    assert options == ClusterOptions(
        partition="gpu",
        account="lab",
        gpus_per_job=1,
        time_min=120,
        sbatch={"constraint": "h100", "exclusive": True},
    )
    path.write_text("partition: gpu\ngpu: 1\n")
    with pytest.raises(ValueError, match=r"unknown cluster option\(s\) \['gpu'\].*gpus_per_job"):
        load_cluster_options(path)
    with pytest.raises(ValueError, match="time_min must be >= 1"):
        load_cluster_options(None, time_min=0)


def test_dry_run_prints_the_grid_and_writes_nothing(data_root, tmp_path, capsys):
    args = ["--methods", "mixit,surf_sr", "--task", "mnist", "--seeds", "0,1"]
    args += ["--executor", "slurm", "--slurm-max-array-size", "2", "--set", "surf.ema_decay=0.99"]
    assert main(smoke_argv(tmp_path, data_root, *args, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    assert "5 runs: 0 done, 5 would be submitted" in out
    assert "stage 0: 3 jobs as 2 SLURM job array(s) of <= 2" in out
    assert "stage 1: 2 jobs as 1 SLURM job array(s)" in out and "afterany" in out
    assert "surf.ema_decay=0.99" in out and "nothing was submitted" in out
    # a finished run is reported as done and not resubmitted
    assert main(smoke_argv(tmp_path, data_root, "--methods", "mixit", "--task", "mnist",
                       "--executor", "debug")) == 0  # fmt: skip
    capsys.readouterr()
    assert main(smoke_argv(tmp_path, data_root, *args, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "5 runs: 2 done, 3 would be submitted" in out and "skip (done)" in out
    assert main(smoke_argv(tmp_path, data_root, "--methods", "mixit", "--task", "mnist",
                       "--slurm-partition", "x")) == 2  # fmt: skip
    assert "need --executor slurm" in capsys.readouterr().err
