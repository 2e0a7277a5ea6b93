"""Image separation metrics (SURF Table 1): PSNR and SSIM, vectorised, equal to scikit-image.

Protocol (BASIS convention): estimates are clamped to [0, 1] and scored per image with
``data_range = 1``; for each mixture the source permutation maximising the summed PSNR is chosen
(:func:`methods.pit.best_permutation`) and reused for SSIM; scores are averaged over sources,
then over mixtures. LPIPS (with the permutation chosen here), FID and IS are computed by
``tasks/perceptual.py`` (driven by ``benchmark/perceptual_eval.py``); :data:`PERCEPTUAL_METRICS`
names the Table 1 ones.

:func:`psnr` and :func:`ssim` compute, for whole batches at once, exactly what
``skimage.metrics.peak_signal_noise_ratio`` and ``structural_similarity`` (its defaults: 7 x 7
uniform window, sample covariance, K1 = 0.01, K2 = 0.03; colour images scored per channel and
averaged) compute image by image, with the same NumPy and SciPy operations in the same order;
the tests hold them to scikit-image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import uniform_filter
from torch import Tensor

from methods.pit import best_permutation

__all__ = ["PERCEPTUAL_METRICS", "image_separation_scores", "psnr", "ssim"]

#: Table 1's perceptual metrics (shown as "n/a", with the reason, when not computed)
PERCEPTUAL_METRICS = ("lpips", "fid")

#: mixtures scored per vectorised chunk (bounds the memory of the SSIM filter stack)
_CHUNK = 256
_SSIM_WINDOW = 7
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _to_numpy(images: Tensor) -> np.ndarray:
    return images.detach().to("cpu", torch.float64).clamp(0.0, 1.0).numpy()


def psnr(estimates: np.ndarray, references: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB of every image, ``10 log10(R^2 / mean((x - x_hat)^2))``, as
    ``skimage.metrics.peak_signal_noise_ratio``.

    Args:
        estimates: ``(..., C, H, W)`` float64 images (broadcast against ``references``).
        references: ``(..., C, H, W)`` float64 images.
        data_range: ``R``, the images' value range (1 for [0, 1]).

    Returns:
        ``(...)`` float64 PSNR; +inf for an exact estimate.
    """
    estimates, references = np.broadcast_arrays(estimates, references)
    diff = references - estimates
    flat = (diff * diff).reshape(*diff.shape[:-3], -1)
    err = flat.mean(axis=-1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10 * np.log10((data_range**2) / err)


def ssim(estimates: np.ndarray, references: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004) of every image, as ``skimage.metrics.structural_similarity``
    with its defaults: a 7 x 7 uniform window (``scipy.ndimage.uniform_filter``, reflecting
    borders), sample covariance, ``K1 = 0.01``, ``K2 = 0.03``, the mean over the image less a
    3-pixel border, and for several channels the mean of the per-channel values.

    Args:
        estimates: ``(..., C, H, W)`` float64 images, H, W >= 7.
        references: ``(..., C, H, W)`` float64 images of the same shape.
        data_range: the images' value range (1 for [0, 1]).

    Returns:
        ``(...)`` float64 SSIM in [-1, 1].

    Raises:
        ValueError: different shapes, or images smaller than the 7 x 7 window.
    """
    if estimates.shape != references.shape or estimates.ndim < 3:
        raise ValueError(
            f"ssim needs two (..., C, H, W) arrays of one shape, got {estimates.shape} and "
            f"{references.shape}"
        )
    if min(estimates.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least 7 x 7 pixels, got {estimates.shape}")
    size = (1,) * (estimates.ndim - 2) + (_SSIM_WINDOW, _SSIM_WINDOW)  # filter H and W only
    im1, im2 = references, estimates  # skimage's (im1, im2) = (image_true, image_test) order
    num_points = _SSIM_WINDOW**2
    cov_norm = num_points / (num_points - 1)  # sample covariance
    ux = uniform_filter(im1, size=size)
    uy = uniform_filter(im2, size=size)
    uxx = uniform_filter(im1 * im1, size=size)
    uyy = uniform_filter(im2 * im2, size=size)
    uxy = uniform_filter(im1 * im2, size=size)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    a1, a2, b1, b2 = (
        2 * ux * uy + c1,
        2 * vxy + c2,
        ux**2 + uy**2 + c1,
        vx + vy + c2,
    )
    s = (a1 * a2) / (b1 * b2)
    pad = (_SSIM_WINDOW - 1) // 2
    per_channel = s[..., pad:-pad, pad:-pad].mean(axis=(-2, -1), dtype=np.float64)
    if per_channel.shape[-1] == 1:  # grayscale: scored as a 2-D image
        return per_channel[..., 0]
    return per_channel.mean(axis=-1)


def image_separation_scores(estimates: Tensor, sources: Tensor) -> pd.DataFrame:
    """Per-mixture PSNR (dB) and SSIM under the best source permutation.

    Args:
        estimates: ``(N, K, C, H, W)`` separated images in the [0, 1] image scale (clamped here).
        sources: ``(N, K, C, H, W)`` ground-truth images in [0, 1].

    Returns:
        DataFrame with one row per mixture: ``mixture`` (index in the evaluation set), ``psnr``
        (dB, mean over the K sources), ``ssim`` (mean over sources, in [-1, 1]) and ``perm``
        (the chosen permutation as a string, e.g. ``"1,0"``: estimate k is matched to source
        ``perm[k]``; ties: the first in lexicographic order).

    Raises:
        ValueError: if the shapes differ or are not 5-D.
    """
    if estimates.shape != sources.shape or estimates.dim() != 5:
        raise ValueError(
            f"expected matching (N, K, C, H, W) tensors, got {tuple(estimates.shape)} "
            f"and {tuple(sources.shape)}"
        )
    est = _to_numpy(estimates)
    ref = _to_numpy(sources)
    num, k = est.shape[:2]
    psnr_rows, ssim_rows, perms = [], [], []
    for begin in range(0, num, _CHUNK):
        e, r = est[begin : begin + _CHUNK], ref[begin : begin + _CHUNK]
        pair = psnr(e[:, :, None], r[:, None, :])  # (n, K, K): [estimate i, source j]
        _, perm = best_permutation(torch.from_numpy(pair), maximize=True)
        perm = perm.numpy()
        matched = np.take_along_axis(r, perm.reshape(*perm.shape, 1, 1, 1), axis=1)
        psnr_rows.append(np.take_along_axis(pair, perm[:, :, None], axis=2)[:, :, 0].mean(1))
        ssim_rows.append(ssim(e, matched).mean(axis=1))
        perms.append(perm)
    perm_all = np.concatenate(perms) if perms else np.zeros((0, k), dtype=np.int64)
    return pd.DataFrame(
        {
            "mixture": np.arange(num),
            "psnr": np.concatenate(psnr_rows) if psnr_rows else np.zeros(0),
            "ssim": np.concatenate(ssim_rows) if ssim_rows else np.zeros(0),
            "perm": [",".join(map(str, row)) for row in perm_all.tolist()],
        }
    )
