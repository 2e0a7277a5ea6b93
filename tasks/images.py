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

Errors: nothing found raises :class:`tasks.base.DatasetNotFoundError` listing every place
searched; a file that is found but truncated or corrupt (an IDX file, plain or gzip, whose size
does not match its header; a JPEG that does not decode or is not 32x32) raises
:class:`tasks.base.DatasetError` naming the file and how to replace it.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from benchmark.registry import register_task
from tasks.base import DatasetError, DatasetNotFoundError, EvalSet, Task
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


#: IDX magic number and number of dimensions of the MNIST files (LeCun et al.'s format)
_IDX_IMAGES = (0x0803, 3)


def _mnist_md5(file_name: str) -> str:
    """The official md5 of an MNIST ``.gz`` file (torchvision's table), or ``""``."""
    import torchvision

    return dict(torchvision.datasets.MNIST.resources).get(file_name, "")


def _corrupt_mnist(path: Path, problem: str) -> DatasetError:
    md5 = _mnist_md5(path.name if path.suffix == ".gz" else f"{path.name}.gz")
    return DatasetError(
        f"corrupt MNIST file {path}: {problem}. Replace it with a good copy (the official "
        f"{path.stem if path.suffix == '.gz' else path.name}.gz has md5 {md5}), or delete it "
        f"and run once with BENCHMARK_DOWNLOAD=1 so that torchvision downloads the official "
        f"files into {path.parent.parent.parent}."
    )


def _check_idx(data: bytes, path: Path, magic: int, ndim: int, item_shape: tuple) -> None:
    """Check an IDX file's header against its size (a truncated copy fails here).

    Raises:
        DatasetError: wrong magic number, wrong item shape, or a size that does not match the
            header; the message names ``path``.
    """
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise _corrupt_mnist(path, f"{len(data)} bytes, shorter than the {header}-byte IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _corrupt_mnist(
            path, f"IDX magic number {found:#06x}, expected {magic:#06x} (not an MNIST image file)"
        )
    dims = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if tuple(dims[1:]) != item_shape:
        raise _corrupt_mnist(path, f"items of {dims[1:]} pixels, expected {list(item_shape)}")
    expected = header + math.prod(dims)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "too long"
        raise _corrupt_mnist(
            path,
            f"{state}: {len(data):,} bytes (after decompression), the header's {dims} needs "
            f"{expected:,}",
        )


def _read_mnist_images(data: bytes, source: Path) -> Tensor:
    """``(N, 1, 28, 28)`` uint8 from the bytes of an IDX image file, checked first, then read
    with torchvision's IDX reader (which takes a path: the bytes go to a temporary file)."""
    from torchvision.datasets.mnist import read_image_file

    _check_idx(data, source, *_IDX_IMAGES, (28, 28))
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "t10k-images-idx3-ubyte"
        target.write_bytes(data)
        return read_image_file(str(target))[:, None].clone()


def _mnist_raw(root: Path) -> Tensor | None:
    """The MNIST test images from ``<root>/MNIST/raw`` (plain or gzip IDX), None if absent.

    Raises:
        DatasetError: the file is there but truncated or corrupt (named).
    """
    raw = root / "MNIST" / "raw"
    plain = raw / "t10k-images-idx3-ubyte"
    if plain.is_file():
        return _read_mnist_images(plain.read_bytes(), plain)
    packed = raw / "t10k-images-idx3-ubyte.gz"
    if not packed.is_file():
        return None
    try:
        data = gzip.decompress(packed.read_bytes())
    except EOFError:
        raise _corrupt_mnist(packed, "truncated (the gzip stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _corrupt_mnist(packed, f"not a valid gzip file ({exc})") from None
    return _read_mnist_images(data, packed)


def _cifar_jpg(root: Path) -> Tensor | None:
    """The CIFAR-10 test images from ``<root>/cifar10-jpg/test/<class>/*.jpg``, None if absent.

    Raises:
        DatasetError: an image that does not decode or is not 32x32 (named).
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    folder = root / "cifar10-jpg" / "test"
    if not folder.is_dir():
        return None
    try:
        ds = ImageFolder(str(folder))
    except FileNotFoundError:  # no class folders, or no images in them
        return None
    fix = (
        "Replace it with a good copy from where you got the CIFAR-10 JPEG test images, or "
        f"delete {folder.parent} and run once with BENCHMARK_DOWNLOAD=1 so that torchvision "
        f"downloads the official CIFAR-10 files into {root}."
    )
    images = []
    for path, _label in ds.samples:
        try:
            image = pil_to_tensor(ds.loader(path))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated / unidentified
            raise DatasetError(
                f"corrupt CIFAR-10 image {path}: cannot decode it ({exc}). {fix}"
            ) from None
        if tuple(image.shape) != (3, 32, 32):
            raise DatasetError(
                f"CIFAR-10 image {path} is {image.shape[2]}x{image.shape[1]} pixels, expected "
                f"32x32. {fix}"
            )
        images.append(image)
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
        DatasetError: a file was found but is truncated or corrupt; the message names it.
    """
    root = Path(data_root).expanduser()
    searched = []
    images: Tensor | None = None
    try:
        images = _official(name, root, download=False)
    except (RuntimeError, OSError, ValueError, TypeError, AssertionError, EOFError) as exc:
        # not there (torchvision: "Dataset not found or corrupted"), or unreadable: fall back
        # to the other layouts, which read and check the files themselves
        reason = str(exc).split("\n")[0].split(". You can use")[0]
        searched.append(
            f"torchvision.datasets.{'MNIST' if name == 'mnist' else 'CIFAR10'} "
            f"(official files) under {root}: {reason}"
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
    curve_metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim")
    #: how the task's images differ from the dataset's files (noted beside perceptual metrics)
    preprocessing: ClassVar[str] = ""
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
    preprocessing = "MNIST zero-padded from 28x28 by the task"
    dataset = "mnist"


@register_task
class Cifar10Task(ImageTask):
    """CIFAR-10 test split, 2-image averages, 3x32x32."""

    name = "cifar10"
    display_name = "CIFAR10 (2 Source Mixtures)"
    dataset = "cifar10"
