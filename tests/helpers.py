"""Shared test helpers: the smoke-preset ``run`` command line and a tiny in-memory image task.
Import with ``from helpers import smoke_argv, TinyImages`` (pytest puts ``tests/`` on the path,
as for ``audio_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.config import TaskConfig
from tasks.base import Task
from tasks.images import ImageTask


def smoke_argv(results_dir: Path, data_root: Path, *args: str) -> list[str]:
    """``run --preset smoke --results-dir R --data-root D *args``: the argument list for
    ``benchmark.cli.main`` or ``python -m benchmark``."""
    return [
        "run",
        "--preset",
        "smoke",
        "--results-dir",
        str(results_dir),
        "--data-root",
        str(data_root),
        *args,
    ]


class TinyImages(ImageTask):
    """The image task's sampling on a small random pool of 16 images of 1x8x8 (not registered)."""

    name = "tiny"
    display_name = "tiny"
    dataset = "none"

    def __init__(self) -> None:
        Task.__init__(self, TaskConfig(name="tiny", num_sources=2, eval_mixtures=4), Path("."))
        self.images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        self._eval = None
