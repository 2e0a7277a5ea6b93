"""Perceptual image metrics of SURF Tables 1 and 2: LPIPS, FID and Inception Score.

- **LPIPS** with the ``lpips`` package (Zhang et al. 2018), version 0.1, **AlexNet** trunk
  (``net="alex"``, the package default) with its learned linear layers. Images are 32x32 (MNIST
  is already zero-padded 28 -> 32 by the task, enough for AlexNet's five feature maps), grey
  images are replicated to 3 channels, and both inputs are scaled from [0, 1] to [-1, 1].
- **FID** and **Inception Score** with ``torch-fidelity``, feature extractor
  ``inception-v3-compat`` (the TF-Inception port used by the original FID/IS code). Images are
  given as ``uint8`` 3-channel ``(N, 3, H, W)`` tensors (``round(255 x)``, grey replicated); we
  do no resizing of our own (torch-fidelity resizes to 299x299 inside the extractor, like the
  TF reference).

Weights. Nothing here ever downloads: every weights file is looked up first, and a missing
file makes the metric *unavailable* (:class:`WeightsMissing`, with the file name and where to
put it) instead of starting a download. Files searched, in order: ``<weights_dir>/<file>``,
``<weights_dir>/checkpoints/<file>``, ``<torch hub dir>/checkpoints/<file>`` (the torch hub
cache, ``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``):

- :data:`ALEXNET_FILE` ``alexnet-owt-7be5be79.pth``: torchvision's ImageNet AlexNet
  (``AlexNet_Weights.IMAGENET1K_V1``), the LPIPS trunk;
- the LPIPS linear layers ship inside the ``lpips`` wheel (``lpips/weights/v0.1/alex.pth``);
- :data:`INCEPTION_FILE` ``weights-inception-2015-12-05-6726825d.pth``: torch-fidelity's
  Inception-v3 port of the 2015-12-05 TF graph.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.config import param

__all__ = [
    "ALEXNET_FILE",
    "INCEPTION_FILE",
    "InceptionFeatures",
    "PerceptualConfig",
    "WeightsMissing",
    "find_weights",
    "frechet_distance",
    "require_weights",
    "fidelity_metrics",
    "load_lpips",
    "lpips_per_mixture",
    "to_uint8_rgb",
]

#: torchvision's ImageNet AlexNet (``AlexNet_Weights.IMAGENET1K_V1.url``'s file name)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
#: torch-fidelity 0.4's Inception-v3 (``feature_extractor_inceptionv3.URL_INCEPTION_V3``)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_URL = "https://download.pytorch.org/models/" + ALEXNET_FILE
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)


@dataclass
class PerceptualConfig:
    """Perceptual image metrics (SURF Tables 1 and 2), section ``perceptual`` of every run on an
    image task (``tasks.images.ImageTask.config_schema``; presets: ``tasks/perceptual.yaml``).

    Evaluation-only: this section is in no method's ``config_sections``, so it never changes a
    run's results-store address; the values used are recorded in ``metrics.json`` next to the
    numbers, and ``run`` re-evaluates a finished run (no retraining) when they change.

    Attributes:
        enabled: compute LPIPS, FID and IS on image tasks.
        fid_reference_images: clean test images in the FID reference set (all 10,000 of the
            test split in ``paper``; a random subset drawn with the task seed when smaller);
            FID needs at least 2.
        table2_mixtures: extra mixtures separated for SURF Table 2 (IS and FID of their
            ``K x table2_mixtures`` separated images; 25,000 in the paper); 0 skips Table 2.
        isc_splits: Inception Score splits (10, the standard; reduced to the image count).
        batch_size: images per LPIPS / Inception forward pass.
    """

    enabled: bool = True
    fid_reference_images: int = param(10_000, ge=2)
    table2_mixtures: int = param(25_000, ge=0)
    isc_splits: int = param(10, ge=1)
    batch_size: int = param(200, ge=1)


class WeightsMissing(FileNotFoundError):
    """A pretrained-weights file is not present; the metric is recorded as unavailable.

    Attributes:
        file: the file name to place.
        searched: the paths looked at.
        url: where to download it on a machine with internet.
    """

    def __init__(self, what: str, file: str, searched: list[Path], url: str) -> None:
        self.file, self.searched, self.url = file, [str(p) for p in searched], url
        super().__init__(
            f"{what} weights not found: place {file} in {searched[-1].parent} (the torch hub "
            f"cache, $TORCH_HOME/hub/checkpoints) or in the folder given by --weights-dir "
            f"(download: {url})"
        )

    def record(self) -> dict[str, Any]:
        """JSON-able description for ``metrics.json``."""
        return {"reason": str(self), "file": self.file, "searched": self.searched, "url": self.url}


def weights_search_paths(filename: str, weights_dir: Path | str | None = None) -> list[Path]:
    """Candidate paths of a weights file, in search order (see module docstring)."""
    paths = []
    if weights_dir:
        base = Path(weights_dir).expanduser()
        paths += [base / filename, base / "checkpoints" / filename]
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    return paths


def find_weights(filename: str, weights_dir: Path | str | None = None) -> Path | None:
    """The first existing candidate of :func:`weights_search_paths`, or None (no download)."""
    for path in weights_search_paths(filename, weights_dir):
        if path.is_file():
            return path
    return None


def require_weights(
    what: str, filename: str, url: str, weights_dir: Path | str | None = None
) -> Path:
    """Like :func:`find_weights`, raising :class:`WeightsMissing` when absent."""
    path = find_weights(filename, weights_dir)
    if path is None:
        raise WeightsMissing(what, filename, weights_search_paths(filename, weights_dir), url)
    return path


def to_uint8_rgb(images: Tensor) -> Tensor:
    """``(N, C, H, W)`` images in [0, 1] (clamped) -> ``(N, 3, H, W)`` uint8 ``round(255 x)``;
    one channel is replicated to three.

    Raises:
        ValueError: not 4-D, or a channel count other than 1 or 3.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
    out = (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return out.expand(-1, 3, -1, -1).contiguous() if out.shape[1] == 1 else out.contiguous()


# ------------------------------------------------------------------------------------- LPIPS


def load_lpips(weights_dir: Path | str | None = None, device: str | torch.device = "cpu"):
    """LPIPS v0.1 with the AlexNet trunk, built without any download.

    The trunk is read from :data:`ALEXNET_FILE` (see module docstring for where it is looked
    for); the linear layers from the ``lpips`` package.

    Returns:
        An ``lpips.LPIPS`` module in eval mode on ``device``.

    Raises:
        WeightsMissing: the AlexNet file (or the package's linear-layer file) is absent.
    """
    import lpips

    trunk_path = require_weights("LPIPS AlexNet trunk", ALEXNET_FILE, ALEXNET_URL, weights_dir)
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    if not lin_path.is_file():
        raise WeightsMissing(
            "LPIPS linear-layer", "alex.pth", [lin_path], "reinstall the lpips package"
        )
    with warnings.catch_warnings():
        # lpips passes torchvision's deprecated `pretrained=False`; the trunk is random here
        # (pnet_rand=True: no download) and loaded from the file below.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    features = torch.load(trunk_path, map_location="cpu", weights_only=True)
    # lpips splits torchvision's `features` into slices keeping the layer indices as names:
    # slice<k>.<i>.weight is features.<i>.weight.
    trunk_state = {}
    for key in model.net.state_dict():
        _slice, index, param = key.split(".")
        trunk_state[key] = features[f"features.{index}.{param}"]
    model.net.load_state_dict(trunk_state)
    return model.eval().to(device)


@torch.no_grad()
def lpips_per_mixture(
    model,
    estimates: Tensor,
    sources: Tensor,
    perms: np.ndarray,
    batch_size: int = 500,
) -> np.ndarray:
    """Per-mixture LPIPS under a given source permutation (the one chosen by PSNR).

    Args:
        model: from :func:`load_lpips`.
        estimates: ``(N, K, C, H, W)`` separated images in [0, 1] (clamped here), C in {1, 3}.
        sources: ``(N, K, C, H, W)`` reference images in [0, 1].
        perms: ``(N, K)`` integers: estimate k is compared with source ``perms[n, k]``.
        batch_size: image pairs per forward pass.

    Returns:
        ``(N,)`` LPIPS distances (>= 0, 0 for identical images), mean over the K sources.

    Raises:
        ValueError: shapes do not match.
    """
    if estimates.shape != sources.shape or estimates.dim() != 5:
        raise ValueError(
            f"expected matching (N, K, C, H, W) tensors, got {tuple(estimates.shape)} "
            f"and {tuple(sources.shape)}"
        )
    num, k = estimates.shape[:2]
    perms_t = torch.as_tensor(np.ascontiguousarray(perms), dtype=torch.long)
    if perms_t.shape != (num, k):
        raise ValueError(f"perms must be (N, K) = {(num, k)}, got {tuple(perms_t.shape)}")
    matched = sources[torch.arange(num)[:, None], perms_t]  # (N, K, C, H, W)
    device = next(model.parameters()).device
    est = estimates.reshape(num * k, *estimates.shape[2:])
    ref = matched.reshape(num * k, *matched.shape[2:])
    out = []
    for begin in range(0, num * k, batch_size):
        a = est[begin : begin + batch_size].to(device).float().clamp(0, 1)
        b = ref[begin : begin + batch_size].to(device).float().clamp(0, 1)
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        # lpips expects [-1, 1] inputs
        out.append(model(2 * a - 1, 2 * b - 1).flatten().cpu())
    return torch.cat(out).reshape(num, k).mean(dim=1).double().numpy()


# ------------------------------------------------------------------------------- FID and IS


class _Uint8Images(torch.utils.data.Dataset):
    """``(N, 3, H, W)`` uint8 tensor as the Dataset torch-fidelity reads."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def frechet_distance(features: Tensor, reference: Tensor) -> float:
    """``||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))`` of two ``(N, d)`` and
    ``(M, d)`` feature sets (Heusel et al. 2017, eq. 6; S the unbiased covariances).

    When both sets have more samples than dimensions (the paper's 10,000 / 50,000 images of
    2,048 features) this is torch-fidelity's own ``fid_statistics_to_metric`` (eigenvalues of
    the d x d product S_1 S_2). With fewer samples than dimensions (small presets, tests) the
    covariances have rank < d and the same trace is computed exactly and much faster from the
    centred features A (N x d), B (M x d): S_1 S_2 = A^T A B^T B / ((N-1)(M-1)) has the nonzero
    eigenvalues of (A B^T)(A B^T)^T / ((N-1)(M-1)), so ``tr((S_1 S_2)^(1/2))`` is the nuclear
    norm of A B^T over sqrt((N-1)(M-1)). (A d x d eigen-decomposition costs ~15 s on one CPU
    core; tests agree with torch-fidelity's path to round-off.)
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    dim = features.shape[1]
    if min(features.shape[0], reference.shape[0]) > dim:
        stats = [fid_features_to_statistics(f) for f in (features, reference)]
        return float(fid_statistics_to_metric(*stats, False)["frechet_inception_distance"])
    a, b = features.double(), reference.double()
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)
    a_c, b_c = a - mu_a, b - mu_b
    norm_a, norm_b = a.shape[0] - 1, b.shape[0] - 1
    trace_a = float((a_c**2).sum()) / norm_a
    trace_b = float((b_c**2).sum()) / norm_b
    tr_covmean = float(torch.linalg.svdvals(a_c @ b_c.T).sum()) / (norm_a * norm_b) ** 0.5
    return float(((mu_a - mu_b) ** 2).sum()) + trace_a + trace_b - 2.0 * tr_covmean


class InceptionFeatures:
    """torch-fidelity's ``inception-v3-compat`` extractor, loaded once (no download), giving the
    features of uint8 image sets; FID and IS are then torch-fidelity's own functions on them,
    so a reference set is embedded once and reused (Table 1 and Table 2 share it).

    Args:
        weights_dir: extra folder searched for :data:`INCEPTION_FILE`.
        device: where the extractor runs.
        batch_size: images per forward pass.

    Raises:
        WeightsMissing: the Inception file is absent.
    """

    FID_LAYER = "2048"  # pool3 features (torch-fidelity's FID default)
    ISC_LAYER = "logits_unbiased"  # torch-fidelity's IS default

    def __init__(
        self,
        weights_dir: Path | str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 200,
    ) -> None:
        from torch_fidelity.utils import create_feature_extractor

        path = require_weights("Inception-v3 (FID/IS)", INCEPTION_FILE, INCEPTION_URL, weights_dir)
        self.weights_path = path
        self.cuda = torch.device(device).type == "cuda"
        self.batch_size = batch_size
        self.extractor = create_feature_extractor(
            "inception-v3-compat",
            [self.FID_LAYER, self.ISC_LAYER],
            cuda=self.cuda,
            feature_extractor_weights_path=str(path),
            verbose=False,
        )

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """Features of ``(N, 3, H, W)`` uint8 images (N >= 2), torch-fidelity's own resizing.

        Returns:
            ``{"2048": (N, 2048), "logits_unbiased": (N, 1008)}`` on the CPU.

        Raises:
            ValueError: not uint8 ``(N, 3, H, W)`` or fewer than 2 images.
        """
        from torch_fidelity.utils import get_featuresdict_from_dataset

        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W) (see to_uint8_rgb), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if images.shape[0] < 2:
            raise ValueError(f"FID/IS need at least 2 images, got {images.shape[0]}")
        return get_featuresdict_from_dataset(
            _Uint8Images(images.cpu()), self.extractor, self.batch_size, self.cuda, True, False
        )

    def fid(self, features: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
        """Frechet Inception Distance (Heusel et al. 2017) between two feature sets (>= 0 up to
        round-off; 0 for identical sets). See :func:`frechet_distance`."""
        return frechet_distance(features[self.FID_LAYER], reference[self.FID_LAYER])

    def inception_score(self, features: dict[str, Tensor], splits: int = 10) -> tuple[float, float]:
        """Inception Score (Salimans et al. 2016): mean and std over ``splits`` splits (reduced
        to the number of images), torch-fidelity's shuffling seed 2020."""
        from torch_fidelity.metric_isc import isc_features_to_metric

        logits = features[self.ISC_LAYER]
        out = isc_features_to_metric(logits, max(1, min(splits, logits.shape[0])), True, 2020)
        return float(out["inception_score_mean"]), float(out["inception_score_std"])


def fidelity_metrics(
    images: Tensor,
    reference: Tensor | None,
    weights_dir: Path | str | None = None,
    device: str | torch.device = "cpu",
    isc: bool = True,
    batch_size: int = 200,
    isc_splits: int = 10,
) -> dict[str, float]:
    """Inception Score of ``images`` and FID of ``images`` against ``reference`` in one call
    (see :class:`InceptionFeatures`).

    Args:
        images: ``(N, 3, H, W)`` uint8 generated (separated) images (see :func:`to_uint8_rgb`).
        reference: ``(M, 3, H, W)`` uint8 reference images, or None for IS only.
        weights_dir, device, batch_size: as :class:`InceptionFeatures`.
        isc: compute the Inception Score.
        isc_splits: IS splits (10, the standard).

    Returns:
        ``inception_score`` and ``inception_score_std`` (with ``isc``), ``fid`` (with a
        reference).

    Raises:
        WeightsMissing: the Inception file is absent (nothing is downloaded).
        ValueError: bad image tensors.
    """
    model = InceptionFeatures(weights_dir, device, batch_size)
    feats = model.features(images)
    out: dict[str, float] = {}
    if isc:
        out["inception_score"], out["inception_score_std"] = model.inception_score(
            feats, isc_splits
        )
    if reference is not None:
        out["fid"] = model.fid(feats, model.features(reference))
    return out
