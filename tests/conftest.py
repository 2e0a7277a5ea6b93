"""Shared fixtures. Tests use the real data in ``../shared/data`` (or ``$BENCHMARK_DATA_ROOT``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The suite trains tiny networks: one intra-op thread is fastest for them and leaves the other
# core to the subprocess jobs some tests start (two threads each would oversubscribe 2 cores).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


def _data_root() -> Path:
    if os.environ.get("BENCHMARK_DATA_ROOT"):
        return Path(os.environ["BENCHMARK_DATA_ROOT"])
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_torch_home(tmp_path_factory) -> None:
    """An empty torch hub cache: runs never pick up (or spend CPU time on) pretrained LPIPS /
    Inception weights a developer has in ~/.cache; perceptual tests place their own."""
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real offline data (MNIST/CIFAR-10 test splits, FSDD). A missing folder is an error,
    not a skip: the suite is meant to run on real data."""
    root = _data_root()
    if not (root / "MNIST" / "raw").is_dir():
        raise RuntimeError(
            f"real data not found at {root}: set BENCHMARK_DATA_ROOT to the shared data folder"
        )
    return root


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"
