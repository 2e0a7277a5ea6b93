"""Benchmarks of the harness itself (speed, not separation quality): ``python -m benchmarks.perf``
prints the performance ratios of issue 13; ``benchmarks/gpu_check.py`` is the short script for a
CUDA machine. Neither is part of the test suite's timing: tests only check that they run."""
