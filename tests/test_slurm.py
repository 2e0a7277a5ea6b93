"""SLURM through submitit on a real single-node cluster on loopback (tests/slurm/*.sh).

The module fixture starts munged, slurmctld and slurmd (Debian packages slurmctld slurmd
slurm-client munge; root) and stops the daemons it started afterwards. Without SLURM the tests
skip locally, but FAIL when ``CI`` is set: CI must install the packages (.ci/run does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.slurm import queue_states
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "slurm"


def _unavailable() -> str | None:
    tools = ("munged", "slurmctld", "slurmd", "sbatch", "srun")
    missing = [x for x in tools if not shutil.which(x)]
    if missing:
        return f"SLURM not installed (missing {missing})"
    if os.geteuid() != 0:
        return "the loopback SLURM cluster must be started as root"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; yields its ``SLURM_CONF`` (also set in os.environ)."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install slurmctld slurmd slurm-client munge")
        # Local machines without SLURM only: grid planning, dry runs, failure isolation, run
        # locks and SIGTERM checkpoint/resume are also covered without a scheduler by
        # tests/test_execution.py and tests/test_runner.py (debug executor, kill -9).
        pytest.skip(f"{reason}; set CI=1 to make this a failure")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        ["bash", str(SCRIPTS / "start_cluster.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, f"cluster did not start:\n{started.stdout}{started.stderr}"
        conf = str(state / "slurm.conf")
        saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "OMP_NUM_THREADS", "PYTHONPATH")}
        # jobs inherit the environment (sbatch --export=ALL): the cluster, one intra-op thread
        # (bitwise-reproducible CPU results need a fixed thread count), this checkout
        os.environ.update(SLURM_CONF=conf, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        yield conf
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), str(state)], timeout=120)
        for key, value in locals().get("saved", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _slurm_run(results_dir: Path, data_root: Path, *args: str) -> int:
    return main(smoke_argv(results_dir, data_root, "--executor", "slurm", *args))


def test_grid_runs_as_one_array_with_dependent_stage(slurm_cluster, data_root, tmp_path, capsys):
    results = tmp_path / "results"
    config = tmp_path / "cluster.yaml"
    config.write_text("partition: debug\ntime_min: 30\narray_parallelism: 8\nsetup: [echo hi]\n")
    # stage 0: MixIT, MixPIT, supervised and the mixture reference (one array of 4);
    # stage 1: ReMixIT, which starts from the MixIT run (a job waiting for its teacher)
    args = ["--methods", "mixit,mixpit,supervised,remixit", "--task", "mnist"]
    args += ["--cluster-config", str(config), "--slurm-array-parallelism", "2"]
    started = time.time()
    assert _slurm_run(results, data_root, *args, "--wait") == 0
    out = capsys.readouterr().out
    assert "submitted 5 SLURM jobs in 2 job(s)/array(s)" in out, out
    runs = {d: read_json(d / "job.json") for d in iter_run_dirs(results)}
    assert len(runs) == 5 and all(read_status(d)["state"] == "done" for d in runs)
    arrays: dict[str, set] = {}
    for run_dir, job in runs.items():
        arrays.setdefault(run_dir.parent.name, set()).add(job["job_id"].split("_")[0])
        assert read_status(run_dir)["job_id"] == job["job_id"]  # the job saw its own id
    # stage 0 is ONE array of 4 tasks; ReMixIT a second submission that waited for MixIT
    assert arrays["mixit"] == arrays["mixture"] == arrays["mixpit"] == arrays["supervised"]
    assert len(arrays["mixit"]) == 1 and arrays["remixit"] != arrays["mixit"]
    (first,) = arrays["mixit"]
    (second,) = arrays["remixit"]
    first_script = (results / "submitit" / first / f"{first}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%2" in first_script  # the flag beat the YAML's 8
    assert "#SBATCH --dependency" not in first_script
    script = (results / "submitit" / second / f"{second}_submission.sh").read_text()
    mixit_job = next(j["job_id"] for d, j in runs.items() if d.parent.name == "mixit")
    assert f"#SBATCH --dependency=afterany:{mixit_job}\n" in script
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=30" in script
    assert "echo hi" in script  # setup lines from the YAML file
    # the ReMixIT job checks at start that its teacher is done (else it fails at once)
    print(f"[slurm grid: 5 jobs in {time.time() - started:.1f}s]")

    assert main(["status", "--results-dir", str(results)]) == 0
    status = capsys.readouterr().out
    assert "5 done" in status and f"{first}_0" in status
    assert main(["table", "--task", "mnist", "--results-dir", str(results)]) == 0
    table = capsys.readouterr().out
    for label in ("MixIT", "MixPIT", "Supervised Regression", "Regression (ReMixIT)"):
        assert f"| {label} |" in table, table

    # everything finished: a second invocation submits nothing
    assert _slurm_run(results, data_root, *args) == 0
    assert "nothing to do" in capsys.readouterr().out


def _metrics(run_dir: Path) -> dict:
    record = RunRecord(run_dir)
    return {**record.metric_values(), **record.metrics_record["training"]}


def test_requeued_job_resumes_from_checkpoint_with_identical_metrics(
    slurm_cluster, data_root, tmp_path, capsys, monkeypatch
):
    overrides = ["--set", "train.steps=60", "train.ckpt_every=1000", "train.log_every=5"]
    grid = ["--methods", "mixit", "--task", "mnist"]
    results = tmp_path / "preempted"
    # slow enough to be caught mid-training; sleeping changes no result
    monkeypatch.setenv("BENCHMARK_STEP_DELAY_S", "0.1")
    assert _slurm_run(results, data_root, *grid, *overrides) == 0  # returns at once
    (run_dir,) = [d for d in iter_run_dirs(results) if d.parent.name == "mixit"]
    job_id = read_json(run_dir / "job.json")["job_id"]
    deadline = time.time() + 300
    while time.time() < deadline:
        progress = read_json(run_dir / "progress.json") or {}
        if progress.get("step", 0) >= 10:
            break
        time.sleep(0.2)
    assert read_status(run_dir)["state"] == "running"
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    while read_status(run_dir)["state"] == "running" and time.time() < deadline:
        time.sleep(0.2)
    status = read_status(run_dir)
    assert status["state"] == "preempted", status
    assert 10 <= status["step"] < 60
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == status["step"]
    line = ""
    while "PENDING" not in line and time.time() < deadline:  # COMPLETING, then PENDING
        capsys.readouterr()
        assert main(["status", "--results-dir", str(results)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if "mixit" in x)
        time.sleep(0.2)
    assert "preempted" in line and job_id in line and "PENDING" in line, line
    assert main(["table", "--task", "mnist", "--results-dir", str(results)]) == 0
    assert "Not finished: mixit seed 0 (preempted)" in capsys.readouterr().out
    # a requeued job waits for its begin time (about 2 minutes); release it now
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
    while time.time() < deadline:
        progress = read_json(run_dir / "progress.json") or {}
        if progress.get("phase") == "train" and progress["step"] >= 30:
            break
        assert read_status(run_dir)["state"] in ("preempted", "running"), read_status(run_dir)
        time.sleep(0.1)
    # submitit's own path: its timeout/preemption signal (USR2, what `#SBATCH --signal` sends
    # before the time limit) -> our checkpoint -> RunJob.checkpoint() -> scontrol requeue
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    while read_status(run_dir)["state"] == "running" and time.time() < deadline:
        time.sleep(0.2)
    second = read_status(run_dir)
    assert second["state"] == "preempted" and "SIGUSR2" in second["error"], second
    assert status["step"] < second["step"] < 60
    while "PENDING" not in (queue_states([job_id]) or {}).get(job_id, ""):
        assert time.time() < deadline
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
    while read_status(run_dir)["state"] != "done" and time.time() < deadline:
        time.sleep(0.5)
    assert read_status(run_dir)["state"] == "done"
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from checkpoint at step {status['step']}/60" in log
    assert f"resumed from checkpoint at step {second['step']}/60" in log
    submitit_log = "".join(p.read_text() for p in (results / "submitit" / job_id).glob("*_log.*"))
    assert "Calling checkpoint method" in submitit_log and "Requeued job" in submitit_log
    curve = pd.read_csv(run_dir / "curve.csv")
    assert curve["step"].tolist() == list(range(5, 61, 5))  # no gap, no duplicate

    monkeypatch.delenv("BENCHMARK_STEP_DELAY_S")
    clean = tmp_path / "clean"  # uninterrupted, in this process (one thread, as the job)
    assert main(["run", "--preset", "smoke", "--executor", "debug", "--results-dir", str(clean),
                 "--data-root", str(data_root), *grid, *overrides]) == 0  # fmt: skip
    (clean_dir,) = [d for d in iter_run_dirs(clean) if d.parent.name == "mixit"]
    assert clean_dir.name == run_dir.name
    assert _metrics(run_dir) == _metrics(clean_dir)  # bitwise: same seed, same thread count
    clean_curve = pd.read_csv(clean_dir / "curve.csv")
    assert curve["loss"].tolist() == clean_curve["loss"].tolist()
