"""MNIST with three sources per mixture: an example plug-in task.

The image protocol of ``tasks.images`` (averages of distinct test-split digits, 32x32, fixed
evaluation set from the task seed), with K = 3 instead of 2. The task declares its own ``task``
section class (``num_sources`` defaults to 3) and its preset values (``mnist3.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import TaskConfig, param
from benchmark.registry import register_task
from tasks.images import ImageTask


@dataclass
class Mnist3Config(TaskConfig):
    """The ``task`` section of ``mnist3``: three sources by default."""

    num_sources: int = param(3, ge=2)


@register_task
class Mnist3Task(ImageTask):
    """MNIST test split, 3-image averages, 1x32x32 (padded)."""

    name = "mnist3"
    display_name = "MNIST (3 Source Mixtures, example plug-in)"
    dataset = "mnist"
    config_class = Mnist3Config
