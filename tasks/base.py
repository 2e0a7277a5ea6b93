"""Task interface: where mixtures come from and how separations are scored.

Data flows one way: task -> mixtures -> method -> checkpoint -> evaluation -> results store.
A task hands methods **mixtures only** through :meth:`Task.sample_mixtures` and
:meth:`Task.sample_mixit_references`; clean sources are reachable only through
:meth:`Task.sample_sources` (supervised references) and the evaluation set.

Scale convention: tensors given to methods follow the flow formulation of SURF eq. (1),
``m = sum_k x^(k)``; each task documents how its native data maps to that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from benchmark.config import TaskConfig

__all__ = ["DatasetError", "DatasetNotFoundError", "EvalSet", "Task", "parse_perm"]


class DatasetError(ValueError):
    """A dataset file is corrupt, truncated or malformed (a bad image, audio file, IDX file,
    metadata CSV or list line). The message names the file (and line) and the fix; the command
    line prints it as ``error: ...`` and exits 2. Base of every dataset error a user can cause.
    """


class DatasetNotFoundError(FileNotFoundError, DatasetError):
    """A dataset is missing; the message names the places searched and how to get it.

    Both a :class:`FileNotFoundError` (what it is) and a :class:`DatasetError` (so that one
    ``except DatasetError`` catches every dataset problem).
    """


@dataclass
class EvalSet:
    """A fixed evaluation set (identical for every method and seed).

    Attributes:
        mixtures: ``(N, *D)`` mixtures in the model convention ``m = sum_k x^(k)``.
        sources: ``(N, K, *D)`` reference sources.
        lengths: ``(N,)`` valid samples per item for variable-length audio zero-padded to a
            common ``T`` (scores are computed on ``[:length]``); None when all are full length.
    """

    mixtures: Tensor
    sources: Tensor
    lengths: Tensor | None = None


def parse_perm(perm: str) -> list[int]:
    """The integers of a ``perm`` score column (``"1,0"``), checked to be a permutation.

    Raises:
        ValueError: not a comma-separated permutation of ``0..K-1``.
    """
    try:
        values = [int(p) for p in str(perm).split(",")]
    except ValueError:
        values = []
    if not values or sorted(values) != list(range(len(values))):
        raise ValueError(f"perm {perm!r} is not a permutation of 0..K-1 like '1,0'")
    return values


class Task(ABC):
    """A separation task (dataset + mixing protocol + metrics)."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    #: metric columns in table order, with the direction of "better"
    metrics: ClassVar[dict[str, str]]
    #: ``"image"`` (sources ``(C, H, W)``) or ``"audio"`` (sources ``(T,)``, see tasks/audio.py);
    #: the one answer to "image or audio" (it picks the network section and family)
    modality: ClassVar[str] = "image"
    #: the class of this task's ``task`` config section (a :class:`TaskConfig` subclass may add
    #: fields, e.g. the audio tasks' sample rate and segment lengths)
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    #: further config sections this task adds to every run on it (e.g. ``perceptual``)
    config_schema: ClassVar[dict[str, type]] = {}
    #: preset YAML file relative to the module (default: the module's name with ``.yaml``)
    presets_file: ClassVar[str | None] = None
    #: CSV of published numbers on this task, relative to the module (``results/paper``
    #: format), shown beside ours in the tables; or None
    paper_numbers: ClassVar[str | None] = None

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Checks of a resolved run config that concern this task (called before any job).

        Raises:
            benchmark.config.ConfigError: naming the setting and the fix.
        """
        del config  # nothing to check by default

    def __init__(self, config: TaskConfig, data_root: Path) -> None:
        self.config = config
        self.data_root = Path(data_root)
        self.device = torch.device("cpu")
        #: worker processes for CPU-bound metrics (``run --workers``; not part of run hashes)
        self.workers = 1

    def check_data(self, train: bool = True) -> None:
        """Check, cheaply, that the files this task reads are there and readable, so that a
        missing or broken dataset is reported once before any job starts (``run``/``ablate``
        build each task once in the parent and call this).

        Tasks that load their data in ``__init__`` (image tasks, ``fsdd2mix``) have checked it
        already; tasks that read lazily (the audio corpora) index their splits here (metadata
        CSVs, list files, folder listings) without reading audio.

        Args:
            train: also check the training split (False when only the ``mixture`` reference,
                which needs the evaluation set alone, will run).

        Raises:
            DatasetNotFoundError: a dataset folder or index file is missing.
            DatasetError: an index file is malformed or names a missing file.
        """
        return None

    @property
    def num_sources(self) -> int:
        """K, sources per mixture."""
        return self.config.num_sources

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape ``D`` of one source, e.g. ``(C, H, W)`` or ``(T,)``."""

    def to(self, device: torch.device) -> Task:
        """Move the task's in-memory data to ``device`` (batches are then drawn there)."""
        self.device = device
        return self

    @abstractmethod
    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Training mixtures ``(B, *D)`` drawn on the fly (no sources: unsupervised input)."""

    @abstractmethod
    def sample_mixit_references(
        self, batch_size: int, generator: torch.Generator, single_source_prob: float = 0.5
    ) -> Tensor:
        """Reference mixtures ``(B, 2, *D)`` whose sum is a MixIT mixture of mixtures; each
        holds a single source with probability ``single_source_prob`` where the task has
        single sources to offer (image tasks), else a regular mixture."""

    @abstractmethod
    def sample_sources(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Clean training sources ``(B, K, *D)`` (supervised references only)."""

    @abstractmethod
    def eval_set(self) -> EvalSet:
        """The fixed evaluation set, drawn with ``config.seed`` (independent of method seeds)."""

    @abstractmethod
    def score(self, estimates: Tensor, sources: Tensor, mixtures: Tensor) -> pd.DataFrame:
        """Per-mixture scores, one row per mixture, one column per metric (plus ``mixture``)."""

    #: metrics of the learning curve (``eval.every``), the task's main metric first; empty: the
    #: first of :attr:`metrics`
    curve_metrics: ClassVar[tuple[str, ...]] = ()

    def curve_scores(
        self, estimates: Tensor, sources: Tensor, mixtures: Tensor, lengths: Tensor | None = None
    ) -> dict[str, float]:
        """Means of the :attr:`curve_metrics` over a few evaluation mixtures (one point of a
        learning curve; ``benchmark.job.LearningCurve``). By default :meth:`score` and the
        means of its columns; tasks with costly metrics compute only the curve's.

        Args:
            estimates: ``(n, K, *D)`` estimates of the first ``n`` evaluation mixtures.
            sources: ``(n, K, *D)`` their sources.
            mixtures: ``(n, *D)`` the mixtures.
            lengths: ``(n,)`` valid samples (zero-padded audio), or None.

        Returns:
            ``{metric: mean}`` in the metric's unit (dB for PSNR and SI-SDR).
        """
        kwargs = {} if lengths is None else {"lengths": lengths}
        scores = self.score(estimates, sources, mixtures, **kwargs)
        names = self.curve_metrics or (next(iter(self.metrics)),)
        return {m: float(scores[m].mean()) for m in names}

    def summarize(self, scores: pd.DataFrame) -> dict[str, dict[str, object]]:
        """Entries for the sections of ``metrics.json`` beyond the per-mixture means of
        :attr:`metrics` (which the job computes): ``{"metrics": {...}, "spread": {...},
        "counts": {...}, "settings": {...}}``, any of them optional. A metric given here
        replaces the job's mean (e.g. FUSS's pooled scores). None by default.

        Args:
            scores: the frame :meth:`score` returned.
        """
        del scores
        return {}

    def mixture_estimate(self, mixtures: Tensor) -> Tensor:
        """The do-nothing reference: every source estimated by the mixture, brought back to
        the sources' scale (``m / K`` in the sum convention). ``(N, *D) -> (N, K, *D)``."""
        k = self.num_sources
        return (mixtures / k)[:, None].expand(-1, k, *mixtures.shape[1:]).contiguous()

    @classmethod
    def estimate_order(cls, perm: str) -> list[int]:
        """The estimate scored against each reference source, from the ``perm`` column of a
        :meth:`score` row: ``order[j]`` is the index of the estimate matched to source ``j``, so
        ``estimates[order]`` lines up with ``sources`` (the demo page shows estimate
        ``order[j]`` under target ``j``; :mod:`benchmark.demo`).

        The default reads ``perm`` as the image and speech scores write it: estimate ``k`` is
        matched to source ``perm[k]`` (:func:`tasks.image_metrics.image_separation_scores`,
        :func:`tasks.audio_metrics.pit_si_sdr`, the FUSS alignment: every metric follows the
        one convention of :func:`methods.pit.best_permutation`). A task whose scores write
        another convention overrides this.

        Args:
            perm: ``"1,0"``-style permutation of ``0..K-1``.

        Raises:
            ValueError: ``perm`` is not a permutation of ``0..K-1``.
        """
        matched = parse_perm(perm)
        order = [0] * len(matched)
        for k, j in enumerate(matched):
            order[j] = k
        return order
