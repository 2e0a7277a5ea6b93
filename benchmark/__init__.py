"""Benchmark harness for unsupervised single-channel source separation.

``python -m benchmark list | run | table`` (see README.md). ``CODE_VERSION`` is part of every
run's results-store address: bump it when a change alters what a finished run would compute.
"""

CODE_VERSION = "1"
__version__ = "0.1.0"
