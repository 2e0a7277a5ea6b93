"""SLURM through submitit on a real single-node cluster on loopback (tests/slurm/*.sh).

The module fixture starts munged, slurmctld and slurmd (Debian packages slurmctld slurmd
slurm-client munge; root) and stops the daemons it started afterwards. The preemption tests
requeue a job and release it early (``StartTime=now``) only once SLURM would start it
(:meth:`_Waiter.release_requeued`), and wait with generous deadlines: the machine is shared.
Without SLURM the tests skip locally, but FAIL when ``CI`` is set: CI must install the packages
(.ci/run does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "slurm"
# a deadline only turns a hang into a failure: generous, the 2 cores are shared with other jobs
DEADLINE_S = 900
# the preemption tests: one MixIT run of 60 steps, a curve record every 5
GRID = ["--methods", "mixit", "--task", "mnist"]
OVERRIDES = ["--set", "train.steps=60", "train.ckpt_every=1000", "train.log_every=5"]


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


def _mixit_dir(results: Path) -> Path:
    (run_dir,) = [d for d in iter_run_dirs(results) if d.parent.name == "mixit"]
    return run_dir


def _train_step(run_dir: Path) -> int:
    """The last training step the run's job reported (``progress.json``), -1 outside training."""
    progress = read_json(run_dir / "progress.json") or {}
    return progress["step"] if progress.get("phase") == "train" else -1


def _scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o JOB_ID`` as ``{field: value}``; ``{}`` when scontrol fails or
    SLURM forgot the job (``MinJobAge`` after it ended)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60
    )
    fields: dict[str, str] = {}
    for token in out.stdout.split() if out.returncode == 0 else []:
        key, sep, value = token.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


# job states that never run again (a requeued job is PENDING, COMPLETING or REQUEUED)
_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
_ENDED |= {"BOOT_FAIL", "DEADLINE"}


class _Waiter:
    """Polls a condition until a deadline; a failure shows the job and the controller's log."""

    def __init__(self, conf: str, seconds: float = DEADLINE_S) -> None:
        self.log = Path(conf).parent / "log" / "slurmctld.log"
        self.deadline = time.time() + seconds

    def diagnosis(self, job_id: str | None) -> str:
        job = _scontrol_job(job_id) if job_id else {}
        state = {k: job.get(k) for k in ("JobState", "Reason", "Restarts", "SubmitTime")}
        tail = self.log.read_text().splitlines()[-15:] if self.log.is_file() else []
        return f"job {job_id}: {state}\nslurmctld.log:\n" + "\n".join(tail)

    def until(self, condition: Callable[[], bool], what: str, job_id: str | None = None) -> None:
        """Wait for ``condition()``; with ``job_id``, fail at once if that job ended for good."""
        while not condition():
            # only a state SLURM reports: a failed scontrol call (busy controller) is no proof
            ended = job_id is not None and _scontrol_job(job_id).get("JobState") in _ENDED
            if ended and condition():  # the job finished right after the first check
                return
            if ended or time.time() > self.deadline:
                why = "its job ended" if ended else "timed out"
                pytest.fail(f"waiting for {what}: {why}; {self.diagnosis(job_id)}")
            time.sleep(0.2)

    def pending_after_requeue(self, job_id: str, restarts: int) -> dict[str, str]:
        """Wait until the job is PENDING after its ``restarts``-th requeue; its fields."""
        job: dict[str, str] = {}

        def pending() -> bool:
            job.update(_scontrol_job(job_id))
            return job.get("JobState") == "PENDING" and int(job.get("Restarts", 0)) >= restarts

        self.until(pending, f"job {job_id} pending after requeue {restarts}")
        return job

    def release_requeued(self, job_id: str, restarts: int) -> None:
        """Start a requeued job now rather than at SLURM's begin time (requeue + credential
        lifetime + 1 s, about 2 minutes).

        A requeue revokes the job's launch credential, with a time in whole seconds, and resets
        the job's SubmitTime to that moment; slurmd refuses a credential created in or before
        the second it was revoked ("Killing non-startable batch JobId=...: Job credential
        revoked", and the job leaves the queue). So: wait until the job is PENDING after this
        requeue, then until its SubmitTime is 2 s past, then set StartTime=now.
        """
        job = self.pending_after_requeue(job_id, restarts)
        revoked = time.mktime(time.strptime(job["SubmitTime"], "%Y-%m-%dT%H:%M:%S"))
        time.sleep(max(0.0, revoked + 2 - time.time()))
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)

    def assert_never_refused(self, job_id: str) -> None:
        """SLURM never killed the job as non-startable (a release too early after a requeue)."""
        number = _scontrol_job(job_id)["JobId"]  # an array task's own job number
        lines = self.log.read_text().splitlines()
        refused = [x for x in lines if f"non-startable batch JobId={number}:" in x]
        assert not refused, refused


@pytest.fixture(scope="module")
def clean_mixit(data_root, tmp_path_factory) -> Path:
    """The uninterrupted reference of the preemption tests: the same MixIT run in this process
    (debug executor; one intra-op thread, as the jobs)."""
    assert "BENCHMARK_STEP_DELAY_S" not in os.environ
    clean = tmp_path_factory.mktemp("clean")
    argv = ["run", "--preset", "smoke", "--executor", "debug", "--results-dir", str(clean)]
    assert main([*argv, "--data-root", str(data_root), *GRID, *OVERRIDES]) == 0
    return _mixit_dir(clean)


def _assert_same_as_clean(run_dir: Path, clean_dir: Path) -> None:
    assert clean_dir.name == run_dir.name  # the same run address
    assert _metrics(run_dir) == _metrics(clean_dir)  # bitwise: same seed, same thread count
    curve, clean_curve = pd.read_csv(run_dir / "curve.csv"), pd.read_csv(clean_dir / "curve.csv")
    assert curve["step"].tolist() == list(range(5, 61, 5))  # no gap, no duplicate
    assert curve["loss"].tolist() == clean_curve["loss"].tolist()


def test_requeued_job_resumes_from_checkpoint_with_identical_metrics(
    slurm_cluster, clean_mixit, data_root, tmp_path, capsys, monkeypatch
):
    started = time.time()
    results = tmp_path / "preempted"
    # slow enough to be caught mid-training; sleeping changes no result
    monkeypatch.setenv("BENCHMARK_STEP_DELAY_S", "0.1")
    assert _slurm_run(results, data_root, *GRID, *OVERRIDES) == 0  # returns at once
    run_dir = _mixit_dir(results)
    job_id = read_json(run_dir / "job.json")["job_id"]
    wait = _Waiter(slurm_cluster)
    wait.until(lambda: _train_step(run_dir) >= 10, "training to reach step 10", job_id)
    assert read_status(run_dir)["state"] == "running"
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait.until(lambda: read_status(run_dir)["state"] != "running", "the checkpoint", job_id)
    status = read_status(run_dir)
    assert status["state"] == "preempted", status
    assert 10 <= status["step"] < 60
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == status["step"]
    lines = []

    def status_says_pending() -> bool:  # COMPLETING, then PENDING
        capsys.readouterr()
        assert main(["status", "--results-dir", str(results)]) == 0
        lines[:] = [x for x in capsys.readouterr().out.splitlines() if " mixit " in x]
        return "PENDING" in lines[0]

    wait.until(status_says_pending, "`status` to show the requeued job PENDING", job_id)
    assert lines[0].split()[5:8] == ["preempted", job_id, "PENDING"], lines
    assert "not queued" not in lines[0]  # its requeued job resumes it: no note
    assert main(["table", "--task", "mnist", "--results-dir", str(results)]) == 0
    assert "Not finished: mixit seed 0 (preempted)" in capsys.readouterr().out
    wait.release_requeued(job_id, restarts=1)

    def resumed_and_trained() -> bool:
        assert read_status(run_dir)["state"] in ("preempted", "running"), read_status(run_dir)
        return _train_step(run_dir) >= max(20, status["step"] + 5)

    wait.until(resumed_and_trained, "the resumed job to train 5 more steps", job_id)
    # submitit's own path: its timeout/preemption signal (USR2, what `#SBATCH --signal` sends
    # before the time limit) -> our checkpoint -> RunJob.checkpoint() -> scontrol requeue
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    wait.until(lambda: read_status(run_dir)["state"] != "running", "the checkpoint", job_id)
    second = read_status(run_dir)
    assert second["state"] == "preempted" and "SIGUSR2" in second["error"], second
    assert status["step"] < second["step"] < 60
    wait.release_requeued(job_id, restarts=2)
    wait.until(lambda: read_status(run_dir)["state"] == "done", "the run to finish", job_id)
    wait.assert_never_refused(job_id)
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from checkpoint at step {status['step']}/60" in log
    assert f"resumed from checkpoint at step {second['step']}/60" in log
    submitit_log = "".join(p.read_text() for p in (results / "submitit" / job_id).glob("*_log.*"))
    assert "Calling checkpoint method" in submitit_log and "Requeued job" in submitit_log
    _assert_same_as_clean(run_dir, clean_mixit)
    steps = f"{status['step']}, {second['step']}"
    print(f"[requeued twice, at steps {steps}: {time.time() - started:.1f}s]")


def test_preempted_run_whose_job_left_the_queue_is_resubmitted_by_run(
    slurm_cluster, clean_mixit, data_root, tmp_path, capsys
):
    started = time.time()
    results = tmp_path / "cancelled"
    argv = smoke_argv(results, data_root, "--executor", "slurm", *GRID, *OVERRIDES)
    # `run --wait` in its own process, while this test preempts its job and cancels the requeue
    waiter = subprocess.Popen(
        [sys.executable, "-m", "benchmark", *argv, "--wait"],
        cwd=REPO,
        env={**os.environ, "BENCHMARK_STEP_DELAY_S": "0.1"},  # catchable mid-training
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait = _Waiter(slurm_cluster)
        runs = results / "runs"
        wait.until(lambda: any(runs.glob("mnist/mixit/*/job.json")), "the submission")
        run_dir = _mixit_dir(results)
        job_id = read_json(run_dir / "job.json")["job_id"]
        wait.until(lambda: _train_step(run_dir) >= 10, "training to reach step 10", job_id)
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        wait.until(lambda: read_status(run_dir)["state"] != "running", "the checkpoint", job_id)
        step = read_status(run_dir)["step"]
        assert read_status(run_dir)["state"] == "preempted" and 10 <= step < 60
        # the requeued job leaves the queue before it restarts (what SLURM also does to a
        # requeued job it refuses to start): nothing will resume the run
        wait.pending_after_requeue(job_id, restarts=1)
        subprocess.run(["scancel", job_id], check=True)
        out, _ = waiter.communicate(timeout=max(1.0, wait.deadline - time.time()))
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 1, out
    assert (
        f"job {job_id} left the queue without being requeued; not failed: `run` (the same "
        f"command) resubmits it and it resumes from its checkpoint at step {step}"
    ) in out, out
    assert "finished: 1 done; not finished: 1 preempted (run the same command again" in out, out
    assert read_status(run_dir)["state"] == "preempted"  # not failed

    assert main(["status", "--results-dir", str(results)]) == 0
    status = capsys.readouterr().out
    line = next(x for x in status.splitlines() if " mixit " in x)
    assert line.split()[5:8] == ["preempted", job_id, "gone"], line
    note = f"not queued: `run` resubmits it and it resumes from its checkpoint at step {step}/60"
    assert line.endswith(note), line
    assert "1 preempted, not queued: `python -m benchmark run` with the same arguments" in status
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert next(x for x in plan.splitlines() if " mixit " in x).endswith(" resume"), plan
    assert "2 runs: 1 done, 1 would be submitted" in plan

    # the same command again: resubmitted, resumed from the checkpoint, identical results
    assert main([*argv, "--wait"]) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and "submitted 1 SLURM jobs" in out, out
    second_job = read_json(run_dir / "job.json")["job_id"]
    assert second_job != job_id and read_status(run_dir)["job_id"] == second_job
    assert read_status(run_dir)["state"] == "done"
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from checkpoint at step {step}/60" in log
    _assert_same_as_clean(run_dir, clean_mixit)
    assert main(["status", "--results-dir", str(results)]) == 0
    status = capsys.readouterr().out
    assert "2 done" in status and "not queued" not in status
    print(f"[preempted at step {step}, cancelled, resubmitted: {time.time() - started:.1f}s]")


def test_plugin_method_and_task_run_as_slurm_jobs(slurm_cluster, data_root, tmp_path):
    """A method and a task from another package (tests/plugin_example, imported with
    --plugins, not installed) run as SLURM jobs: the runs record the plug-in modules, and the
    jobs, on the node, import them before reading their config."""
    source = tmp_path / "plugin_example"
    shutil.copytree(REPO / "tests" / "plugin_example", source)
    results = tmp_path / "results"
    modules = "example_plugin.noisy_student,example_plugin.mnist3"
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{REPO}"}  # exported to the jobs
    command = [sys.executable, "-m", "benchmark", *smoke_argv(results, data_root)]
    command += ["--methods", "noisy_student", "--task", "mnist3", "--executor", "slurm"]
    command += ["--plugins", modules, "--wait"]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 3 SLURM jobs in 2 job(s)/array(s)" in done.stdout, done.stdout
    records = {d.parent.name: d for d in iter_run_dirs(results)}
    assert set(records) == {"mixture", "mixit", "noisy_student"}
    for method, run_dir in records.items():
        record = RunRecord(run_dir)
        assert record.state == "done", (method, record.status)
        assert record.info["plugins"] == modules.split(",")
        assert read_json(run_dir / "job.json")["scheduler"] == "slurm"
    assert RunRecord(records["noisy_student"]).raw_config["task"]["num_sources"] == 3
