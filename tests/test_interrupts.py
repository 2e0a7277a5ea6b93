"""Interrupted runs resume with the same command, and every stop ends in one clear line.

Real ``python -m benchmark run`` processes with real submitit local jobs (subprocesses) on real
MNIST at smoke scale: SIGTERM to the ``run`` process alone, Ctrl-C to its process group,
``kill -9`` of the worker, two concurrent invocations of one grid, the progress bar from the
first iteration, and the closing lines. ``BENCHMARK_STEP_DELAY_S`` slows the jobs' iterations
so that a test can catch them mid-training; it changes no result.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status

REPO = Path(__file__).resolve().parent.parent
# a checkpoint every 10 iterations, a curve record every 5 (ckpt_every a multiple of log_every),
# a learning-curve point every 5 (eval.every: not part of the run's address)
OVERRIDES = ["train.steps=40", "train.ckpt_every=10", "train.log_every=5", "eval.every=5"]
# on the CPU: bitwise-identical results after a resume are a CPU property (cuDNN autotunes)
MIXIT = ["--methods", "mixit", "--task", "mnist", "--device", "cpu", "--set", *OVERRIDES]
KEYS = ("psnr", "ssim", "final_loss")


def _env(step_delay_s: float | None = None) -> dict[str, str]:
    # one intra-op thread, as in this process (conftest): CPU results are bitwise reproducible
    # only for a fixed thread count
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("BENCHMARK_STEP_DELAY_S", None)
    if step_delay_s:
        env["BENCHMARK_STEP_DELAY_S"] = str(step_delay_s)
    return env


def _command(results: Path, data_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "benchmark", *smoke_argv(results, data_root, *args)]


def _start(results: Path, data_root: Path, *args: str, **popen) -> subprocess.Popen:
    """``python -m benchmark run --preset smoke ...`` with slowed iterations (0.1 s each)."""
    return subprocess.Popen(
        _command(results, data_root, *args),
        cwd=REPO,
        env=_env(0.1),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _run_dir(results: Path, method: str) -> Path | None:
    runs = [d for d in iter_run_dirs(results) if d.parent.name == method]
    return runs[0] if runs else None


def _wait_for(condition, what: str, timeout: float = 240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _training(results: Path, method: str = "mixit") -> Path | None:
    """The run folder once its job has done a training iteration (progress.json says so)."""
    run_dir = _run_dir(results, method)
    if run_dir is None:
        return None
    progress = read_json(run_dir / "progress.json") or {}
    return run_dir if progress.get("phase") == "train" and progress.get("step", 0) >= 1 else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _metrics(run_dir: Path) -> list:
    record = RunRecord(run_dir)
    metrics = {**record.metric_values(), **record.metrics_record["training"]}
    return [metrics[k] for k in KEYS]


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    """The uninterrupted run of ``MIXIT`` (in-process, one thread like the jobs)."""
    results = tmp_path_factory.mktemp("reference")
    assert main(smoke_argv(results, data_root, *MIXIT, "--executor", "debug")) == 0
    return _run_dir(results, "mixit")


def _resume_and_compare(results: Path, data_root: Path, run_dir: Path, reference: Path) -> str:
    """The same command again (no flag): the run resumes and ends as the reference did."""
    done = subprocess.run(
        _command(results, data_root, *MIXIT),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_status(run_dir)["state"] == "done"
    assert run_dir.name == reference.name  # same config, same address
    assert _metrics(run_dir) == _metrics(reference)
    curve, clean = (pd.read_csv(d / "curve.csv") for d in (run_dir, reference))
    assert curve["step"].tolist() == list(range(5, 41, 5))  # no gap, no duplicate
    assert curve["loss"].tolist() == clean["loss"].tolist()
    # the learning curve survives the stop: every point once, equal to the uninterrupted run's
    points, clean_points = (pd.read_csv(d / "eval_curve.csv") for d in (run_dir, reference))
    assert points["step"].tolist() == list(range(0, 41, 5))
    assert points["psnr"].tolist() == clean_points["psnr"].tolist()
    assert points["ssim"].tolist() == clean_points["ssim"].tolist()
    return (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_run_process_alone_checkpoints_its_worker_then_same_command_resumes(
    data_root, tmp_path, reference, signum
):
    """SIGTERM (``kill PID``, ``timeout``): ``run`` forwards it and says so. SIGKILL (``kill -9``,
    the OOM killer): ``run`` can do nothing; its worker notices within its watch interval
    (:class:`benchmark.preempt.ParentWatch`). Either way no worker is left and the worker
    checkpointed."""
    results = tmp_path / "results"
    proc = _start(results, data_root, *MIXIT)
    try:
        run_dir = _wait_for(lambda: _training(results), "the MixIT job to train")
        status = read_status(run_dir)
        worker, controller = status["pid"], int(status["job_id"])
        assert worker != proc.pid and _alive(worker)
        os.kill(proc.pid, signum)  # the run process alone
        out, _ = proc.communicate(timeout=180)
        left_when_run_returned = _alive(worker) or _alive(controller)
        _wait_for(lambda: not _alive(worker) and not _alive(controller), "the worker to end", 120)
    finally:
        proc.kill()
    if signum == signal.SIGTERM:
        assert proc.returncode == 143, out
        assert "stopped by SIGTERM: 1 run checkpointed (preempted)" in out
        assert "the same command resumes" in out and "Traceback" not in out
        assert not left_when_run_returned  # no worker outlives its run
    else:
        assert proc.returncode == -signal.SIGKILL
    status = read_status(run_dir)
    assert status["state"] == "preempted" and status["signal"] == "SIGTERM", status
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert status["step"] == step and 1 <= step < 40
    log = _resume_and_compare(results, data_root, run_dir, reference)
    assert f"resumed from checkpoint at step {step}/40" in log
    if signum == signal.SIGKILL:
        assert f"(pid {proc.pid}) is gone: checkpointing" in log


def test_ctrl_c_prints_one_line_and_the_run_is_checkpointed(data_root, tmp_path):
    results = tmp_path / "results"
    # its own process group, as a terminal's foreground job: Ctrl-C signals the whole group
    proc = _start(results, data_root, *MIXIT, start_new_session=True)
    try:
        run_dir = _wait_for(lambda: _training(results), "the MixIT job to train")
        worker = read_status(run_dir)["pid"]
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("benchmark run: task=mnist")  # the start-up line
    # not on a terminal: a progress line may come before the stop
    assert [x for x in lines[1:] if not x.startswith("  progress mixit/mnist/seed0 train ")] == [
        "interrupted (Ctrl-C): 1 run checkpointed (preempted), 1 run not started; "
        "the same command resumes them"
    ], out
    assert not _alive(worker)
    status = read_status(run_dir)
    assert status["state"] == "preempted" and status["signal"] == "SIGINT", status
    assert (run_dir / "checkpoint.pt").is_file()


def test_kill_9_of_the_worker_is_interrupted_and_resumes_without_a_flag(
    data_root, tmp_path, reference, capsys
):
    results = tmp_path / "results"
    proc = _start(results, data_root, *MIXIT)
    try:
        run_dir = _wait_for(
            lambda: (d := _training(results)) and (d / "checkpoint.pt").is_file() and d,
            "the first checkpoint",
        )
        os.kill(read_status(run_dir)["pid"], signal.SIGKILL)  # the worker, as the OOM killer
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    status = read_status(run_dir)
    assert status["state"] == "interrupted", status
    assert "ended without recording a status" in status["error"]
    assert "finished: 1 done; not finished: 1 interrupted (run the same command again: it " in out
    assert "failed" not in out and "shows the results" not in out.split("finished:")[1]
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert step % 10 == 0 and 10 <= step < 40
    assert main(["status", "--results-dir", str(results)]) == 0
    assert " interrupted " in capsys.readouterr().out
    log = _resume_and_compare(results, data_root, run_dir, reference)
    assert f"resumed from checkpoint at step {step}/40" in log


def test_parent_watch_tells_the_live_run_process_from_a_gone_or_reused_pid():
    from benchmark.preempt import PARENT_ENV, ParentWatch

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{parent.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        watch = ParentWatch(environ={PARENT_ENV: f"{parent.pid}:{start}"})
        assert watch.parent == parent.pid and not watch.gone()
        # the same pid with another start time: a later process that reuses the number
        assert ParentWatch(environ={PARENT_ENV: f"{parent.pid}:1"}).gone()
    finally:
        parent.kill()
        parent.wait()
    assert watch.gone()
    unwatched = ParentWatch(environ={})  # SLURM and in-process jobs: nothing to watch
    assert unwatched.parent is None and not unwatched.gone()
    with unwatched:
        assert unwatched._thread is None


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_ctrl_c_while_the_command_line_starts_prints_one_line(tmp_path):
    """A Ctrl-C during the seconds of importing torch, before any command runs.

    The child gets SIGINT's default disposition: started in the background by a shell without
    job control (as CI may start the suite), the tests inherit SIGINT ignored, and Python then
    leaves it ignored (no KeyboardInterrupt at all)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "list"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # torch's first shared library is mapped: its import (seconds of Python) is under way
        _wait_for(
            lambda: proc.poll() is not None or "libc10" in _maps(proc.pid),
            "torch to start loading",
            60,
        )
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["interrupted (Ctrl-C) while starting; nothing was run"]


def _lines(proc: subprocess.Popen, into: list[str]) -> threading.Thread:
    def read() -> None:
        for line in proc.stdout:
            into.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_second_invocation_waits_for_the_teacher_another_one_trains(data_root, tmp_path):
    """Two invocations of one grid: the second never records a run failed; its ReMixIT waits
    for the MixIT teacher the first one trains (held still with SIGSTOP until it says so)."""
    results = tmp_path / "results"
    args = ["--methods", "remixit", "--task", "mnist", "--device", "cpu"]
    args += ["--set", "mixit:train.steps=40"]
    first = _start(results, data_root, *args)
    second = None
    out_first: list[str] = []
    out_second: list[str] = []
    readers = [_lines(first, out_first)]
    try:
        teacher = _wait_for(lambda: _training(results), "the MixIT teacher to train")
        worker = read_status(teacher)["pid"]
        os.kill(worker, signal.SIGSTOP)  # the teacher stays locked, unfinished
        try:
            second = _start(results, data_root, *args)
            readers.append(_lines(second, out_second))
            _wait_for(lambda: any("waiting" in x for x in out_second), "the waiting line")
        finally:
            os.kill(worker, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, "".join(out_first)
        assert second.wait(timeout=300) == 0, "".join(out_second)
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
    for reader in readers:
        reader.join(timeout=10)
    text_first, text_second = "".join(out_first), "".join(out_second)
    (waiting,) = [x for x in out_second if "waiting" in x]
    assert (
        f"remixit/mnist/seed0: its teacher mixit/mnist/seed0 is being trained by another "
        f"process (pid {worker} on " in waiting
    )
    assert "skipped mixit/mnist/seed0: being run by another process" in text_second
    for text in (text_first, text_second):
        assert "failed" not in text and "Traceback" not in text
    states = {d.parent.name: read_status(d)["state"] for d in iter_run_dirs(results)}
    assert states == {"mixit": "done", "mixture": "done", "remixit": "done"}
    # every run was executed once: one start line in each log
    for run_dir in iter_run_dirs(results):
        log = (run_dir / "log.txt").read_text()
        assert len(re.findall(r"INFO run \w+: ", log)) == 1, (run_dir, log)


def test_progress_bar_from_the_first_iteration(data_root, tmp_path):
    """With ``run`` on a terminal, its bar shows the training step from the first iterations,
    before the first curve record (``train.log_every`` = 1000 > the 30 steps); the loss joins
    it at the first record, when the losses are read from the device (issue 13: no host read
    between records)."""
    results = tmp_path / "results"
    args = ["--methods", "mixit", "--task", "mnist", "--device", "cpu"]
    args += ["--set", "train.steps=30", "train.log_every=1000", "train.ckpt_every=1000"]
    master, terminal = pty.openpty()
    # a terminal of 24 x 160 characters (a new pty has 0 columns: tqdm would draw nothing)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(
        _command(results, data_root, *args),
        cwd=REPO,
        env=_env(0.1),
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    chunks: list[bytes] = []

    def read() -> None:  # drain the terminal, or the bar's writes would block
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=300) == 0
    finally:
        proc.kill()
    reader.join(timeout=10)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    bars = re.findall(r"mixit/mnist/seed0 train:.*?\| *(\d+)/30 \[", screen)
    steps = sorted({int(step) for step in bars})
    assert steps and steps[0] < 30, screen[-2000:]  # shown before the first curve record


def test_progress_lines_when_not_on_a_terminal(data_root, tmp_path):
    """With ``run``'s output going to a file or a pipe (nohup, a batch system), a plain line
    says how far training is as soon as the job reports its first iterations."""
    results = tmp_path / "results"
    args = ["--methods", "mixit", "--task", "mnist", "--device", "cpu", "--set", "train.steps=30"]
    proc = _start(results, data_root, *args)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    lines = out.splitlines()
    pattern = re.compile(r"  progress mixit/mnist/seed0 +train \d+/30 ")
    progress = [i for i, x in enumerate(lines) if pattern.match(x)]
    (done,) = [i for i, x in enumerate(lines) if x.startswith("  done     mixit/mnist/seed0")]
    assert progress and progress[0] < done, out
    step = int(re.search(r"train (\d+)/30", lines[progress[0]]).group(1))
    assert step < 30, out  # shown while training, not only at the end
    assert "\r" not in out and "\x1b" not in out  # no bar drawn into a file


def test_closing_lines_name_what_failed_and_where_its_log_is(data_root, tmp_path, capsys):
    # a U-Net of nf = 2 channels cannot be built (GroupNorm): the MixIT run fails in its job
    args = ["--methods", "mixit", "--task", "mnist", "--executor", "debug"]
    args += ["--set", "net.nf=2", "train.steps=2"]
    assert main(smoke_argv(tmp_path, data_root, *args)) == 1
    out = capsys.readouterr().out
    closing = out[out.index("finished:") :]
    (run_dir,) = [d for d in iter_run_dirs(tmp_path) if d.parent.name == "mixit"]
    assert closing.startswith("finished: 1 done, 1 failed.")  # the mixture reference is done
    assert "mixit/mnist/seed0 failed: " in closing and "GroupNorm" in closing
    assert f"(log: {run_dir / 'log.txt'})" in closing
    assert f"python -m benchmark status --results-dir {tmp_path}" in closing
    assert "shows the results" not in closing  # nothing but the mixture reference finished
