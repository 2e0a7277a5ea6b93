"""Image tasks ``mnist`` and ``cifar10`` (SURF §5.1, the protocol of BASIS).

Protocol: sources are images of the **test** split in [0, 1]; a mixture is the average of K = 2
images drawn at random. Training mixtures are drawn on the fly; the evaluation set is a fixed
set of ``task.eval_mixtures`` mixtures drawn with the task seed.

Scale convention. The task *averages* images, ``y = (1/K) sum_k x^(k)``; the models follow the
flow formulation ``m = sum_k x^(k)`` (SURF eq. 1). Methods therefore receive ``m = K y`` and
estimate the images themselves: a source estimate is directly an image in the [0, 1] scale,
clamped to [0, 1] for scoring. The ``mixture`` reference row estimates each source by
``y = m / K``.

MNIST digits (28x28) are zero-padded by 2 pixels on every side to 32x32 so that both tasks use
the same 32x32 network.

Loading order: torchvision's official dataset classes (``MNIST``/``CIFAR10`` with
``train=False``) under ``<data-root>``; otherwise the MNIST IDX test files in
``<data-root>/MNIST/raw/`` (read with torchvision's IDX reader) and the CIFAR-10 test images in
``<data-root>/cifar10-jpg/test/<class>/*.jpg`` (``ImageFolder``); otherwise, when
``BENCHMARK_DOWNLOAD=1``, torchvision downloads the official files into ``<data-root>``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from benchmark.registry import register_task
from tasks.base import DatasetNotFoundError, EvalSet, Task
from tasks.image_metrics import image_separation_scores
from tasks.perceptual import PerceptualConfig

__all__ = ["Cifar10Task", "ImageTask", "MnistTask", "load_images"]

_HOW_TO_GET = {
    "mnist": (
        "Get the MNIST test split: run once on a machine with internet\n"
        "  BENCHMARK_DOWNLOAD=1 python -m benchmark run --task mnist ... --data-root DIR\n"
        "or place t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) in DIR/MNIST/raw/."
    ),
    "cifar10": (
        "Get the CIFAR-10 test split: run once on a machine with internet\n"
        "  BENCHMARK_DOWNLOAD=1 python -m benchmark run --task cifar10 ... --data-root DIR\n"
        "or place the test images as DIR/cifar10-jpg/test/<class>/<n>.jpg (ImageFolder layout)."
    ),
}


def _official(name: str, root: Path, download: bool) -> Tensor:
    import torchvision

    if name == "mnist":
        ds = torchvision.datasets.MNIST(str(root), train=False, download=download)
        return ds.data[:, None].clone()  # (N, 1, 28, 28) uint8
    ds = torchvision.datasets.CIFAR10(str(root), train=False, download=download)
    return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).clone()


def _mnist_raw(root: Path) -> Tensor | None:
    from torchvision.datasets.mnist import read_image_file

    raw = root / "MNIST" / "raw"
    plain = raw / "t10k-images-idx3-ubyte"
    if plain.is_file():
        return read_image_file(str(plain))[:, None].clone()
    packed = raw / "t10k-images-idx3-ubyte.gz"
    if not packed.is_file():
        return None
    # torchvision's reader takes an uncompressed path: decompress to a temporary file.
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / plain.name
        with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return read_image_file(str(target))[:, None].clone()


def _cifar_jpg(root: Path) -> Tensor | None:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    folder = root / "cifar10-jpg" / "test"
    if not folder.is_dir():
        return None
    ds = ImageFolder(str(folder))
    images = []
    for path, _label in ds.samples:
        images.append(pil_to_tensor(ds.loader(path)))
    return torch.stack(images)  # (N, 3, 32, 32) uint8


@lru_cache(maxsize=4)
def load_images(name: str, data_root: str) -> Tensor:
    """Load the test split of ``mnist`` or ``cifar10`` as float images.

    Args:
        name: ``"mnist"`` or ``"cifar10"``.
        data_root: the data-root folder (see module docstring for the layouts searched).

    Returns:
        ``(10000, C, 32, 32)`` float32 in [0, 1] on the CPU (C = 1 for MNIST, padded from 28x28;
        C = 3 for CIFAR-10).

    Raises:
        DatasetNotFoundError: nothing found; the message lists every place searched and how to
            get the data.
    """
    root = Path(data_root).expanduser()
    searched = []
    images: Tensor | None = None
    try:
        images = _official(name, root, download=False)
    except (RuntimeError, FileNotFoundError, OSError):
        searched.append(
            f"torchvision.datasets.{'MNIST' if name == 'mnist' else 'CIFAR10'} "
            f"(official files) under {root}"
        )
    if images is None:
        if name == "mnist":
            images = _mnist_raw(root)
            searched.append(f"MNIST IDX test files in {root / 'MNIST' / 'raw'}")
        else:
            images = _cifar_jpg(root)
            searched.append(f"CIFAR-10 JPEG test images in {root / 'cifar10-jpg' / 'test'}")
    if images is None and os.environ.get("BENCHMARK_DOWNLOAD") == "1":
        try:
            images = _official(name, root, download=True)
        except Exception as exc:  # noqa: BLE001 - any network failure means "not available"
            searched.append(f"download into {root} failed: {exc}")
    if images is None:
        places = "\n".join(f"  - {s}" for s in searched)
        raise DatasetNotFoundError(
            f"{name} test split not found. Searched:\n{places}\n{_HOW_TO_GET[name]}\n"
            "The data root comes from --data-root, else $BENCHMARK_DATA_ROOT, else the user "
            "cache folder."
        )
    images = images.float() / 255.0
    if images.shape[-1] == 28:
        images = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return images.contiguous()


def _draw_distinct(num_pool: int, shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Indices ``(N, K)`` into the pool, distinct within each row (redrawn on collision)."""
    device = generator.device
    idx = torch.randint(num_pool, shape, generator=generator, device=device)
    for _ in range(100):
        sorted_idx = idx.sort(dim=1).values
        dup_rows = (sorted_idx[:, 1:] == sorted_idx[:, :-1]).any(dim=1)
        if not bool(dup_rows.any()):
            return idx
        redraw = torch.randint(
            num_pool, (int(dup_rows.sum()), shape[1]), generator=generator, device=device
        )
        idx[dup_rows] = redraw
    raise RuntimeError("could not draw distinct images; is the pool smaller than K?")


class ImageTask(Task):
    """Averaged pairs of test-split images (see module docstring for the conventions)."""

    dataset: ClassVar[str]
    metrics: ClassVar[dict[str, str]] = {"psnr": "max", "ssim": "max"}
    #: LPIPS, FID and IS are computed for every run on an image task
    config_schema: ClassVar[dict[str, type]] = {"perceptual": PerceptualConfig}

    def __init__(self, config, data_root) -> None:
        super().__init__(config, data_root)
        self.images = load_images(self.dataset, str(self.data_root))
        self._eval: EvalSet | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def to(self, device: torch.device) -> ImageTask:
        self.device = torch.device(device)
        self.images = self.images.to(self.device)
        return self

    def _gather(self, idx: Tensor) -> Tensor:
        return self.images[idx.to(self.device)]

    def sample_sources(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, K, C, H, W)`` distinct test images in [0, 1]."""
        idx = _draw_distinct(len(self.images), (batch_size, self.num_sources), generator)
        return self._gather(idx)

    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, C, H, W)`` training mixtures ``m = sum_k x^(k)`` (model convention)."""
        return self.sample_sources(batch_size, generator).sum(dim=1)

    def sample_mixit_references(
        self, batch_size: int, generator: torch.Generator, single_source_prob: float = 0.5
    ) -> Tensor:
        """``(B, 2, C, H, W)`` reference mixtures of one or K images (probability
        ``single_source_prob`` = 0.5 each, SURF D.4): mixtures of mixtures hold 2, 3 or 4 images
        with probabilities 25 / 50 / 25 % for K = 2. All images of a row are distinct."""
        k = self.num_sources
        idx = _draw_distinct(len(self.images), (batch_size, 2 * k), generator)
        images = self._gather(idx).reshape(batch_size, 2, k, *self.sample_shape)
        keep = torch.ones(batch_size, 2, k, device=self.device)
        single = torch.rand(batch_size, 2, generator=generator, device=generator.device)
        single = single < single_source_prob
        keep[..., 1:] = (~single).to(self.device, keep.dtype)[..., None]
        return (images * keep.reshape(batch_size, 2, k, 1, 1, 1)).sum(dim=2)

    def eval_set(self) -> EvalSet:
        """Fixed ``(N, C, H, W)`` mixtures and ``(N, K, C, H, W)`` sources from the task seed."""
        if self._eval is None:
            gen = torch.Generator().manual_seed(self.config.seed)
            idx = _draw_distinct(
                len(self.images), (self.config.eval_mixtures, self.num_sources), gen
            )
            sources = self._gather(idx)
            self._eval = EvalSet(mixtures=sources.sum(dim=1), sources=sources)
        return self._eval

    def mixture_set(self, num_mixtures: int, seed: int) -> EvalSet:
        """Another fixed set of ``num_mixtures`` mixtures drawn like :meth:`eval_set` with
        ``seed`` (e.g. SURF Table 2's 25,000 mixtures); sources on the task's device."""
        gen = torch.Generator().manual_seed(seed)
        idx = _draw_distinct(len(self.images), (num_mixtures, self.num_sources), gen)
        sources = self._gather(idx)
        return EvalSet(mixtures=sources.sum(dim=1), sources=sources)

    def score(self, estimates: Tensor, sources: Tensor, mixtures: Tensor) -> pd.DataFrame:
        return image_separation_scores(estimates, sources)


@register_task
class MnistTask(ImageTask):
    """MNIST test split, 2-image averages, 1x32x32 (padded)."""

    name = "mnist"
    display_name = "MNIST (2 Source Mixtures)"
    dataset = "mnist"


@register_task
class Cifar10Task(ImageTask):
    """CIFAR-10 test split, 2-image averages, 3x32x32."""

    name = "cifar10"
    display_name = "CIFAR10 (2 Source Mixtures)"
    dataset = "cifar10"
