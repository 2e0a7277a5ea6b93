"""The performance scripts run (``benchmarks/perf.py --quick``, ``benchmarks/gpu_check.py`` as a
CPU dry run): real subprocesses on the real data. They print ratios; nothing here checks a
time (timing targets belong to the benchmarks, not to tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(data_root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCHMARK_DATA_ROOT": str(data_root)}
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_perf_suite_quick_run_prints_every_section_and_its_ratios(data_root) -> None:
    out = _run(data_root, "benchmarks.perf", "--quick", "--baseline", "HEAD")
    for heading in ("harness step", "MixIT", "PIT", "image metrics", "audio metric", "SURF"):
        assert f"== {heading}" in out, out
    for ratio in (
        "harness/raw",
        "exhaustive/asteroid" if "asteroid: loaded" in out else "exhaustive/efficient",
        "exhaustive_baseline/exhaustive",
        "ours/ours_baseline",
        "current/baseline",
        "workers1/workers2",
        "beta=0/beta=1",
    ):
        assert f"{ratio} = " in out, (ratio, out)
    # the raw loops compute what the harness computes, and the images scored alike
    assert out.count("equal True") == 2, out
    assert "max |current - baseline| 0.0e+00, same permutations True" in out
    assert "results identical for 1 and 2 workers: True" in out


def test_gpu_check_dry_run_on_cpu(data_root) -> None:
    out = _run(
        data_root,
        *("benchmarks.gpu_check", "--quick", "--device", "cpu"),
        *("--methods", "surf_sr", "--settings", "tf32"),  # builds the MixIT teacher too
    )
    assert "surf_sr  tf32" in out and "failed" not in out, out
