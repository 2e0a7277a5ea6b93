"""Image separation metrics (SURF Table 1): PSNR and SSIM with scikit-image.

Protocol (BASIS convention): estimates are clamped to [0, 1] and scored per image with
``data_range = 1``; for each mixture the source permutation maximising the summed PSNR is chosen
and reused for SSIM; scores are averaged over sources, then over mixtures.
LPIPS (with the permutation chosen here), FID and IS are computed by ``tasks/perceptual.py``
(driven by ``benchmark/perceptual_eval.py``); :data:`PERCEPTUAL_METRICS` names the Table 1 ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from methods.pit import all_permutations

__all__ = ["PERCEPTUAL_METRICS", "image_separation_scores"]

#: Table 1's perceptual metrics (shown as "n/a", with the reason, when not computed)
PERCEPTUAL_METRICS = ("lpips", "fid")


def _to_numpy(images: Tensor) -> np.ndarray:
    return images.detach().to("cpu", torch.float64).clamp(0.0, 1.0).numpy()


def _ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    # (C, H, W) arrays; grayscale is scored as a 2-D image.
    if reference.shape[0] == 1:
        return float(structural_similarity(reference[0], estimate[0], data_range=1.0))
    return float(structural_similarity(reference, estimate, data_range=1.0, channel_axis=0))


def image_separation_scores(estimates: Tensor, sources: Tensor) -> pd.DataFrame:
    """Per-mixture PSNR (dB) and SSIM under the best source permutation.

    Args:
        estimates: ``(N, K, C, H, W)`` separated images in the [0, 1] image scale (clamped here).
        sources: ``(N, K, C, H, W)`` ground-truth images in [0, 1].

    Returns:
        DataFrame with one row per mixture: ``mixture`` (index in the evaluation set), ``psnr``
        (dB, mean over the K sources), ``ssim`` (mean over sources, in [-1, 1]) and ``perm``
        (the chosen permutation as a string, e.g. ``"1,0"``: estimate k is matched to source
        ``perm[k]``).

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
    perms = all_permutations(k).numpy()
    rows = []
    for n in range(num):
        pair = np.empty((k, k))
        for i in range(k):
            for j in range(k):
                pair[i, j] = peak_signal_noise_ratio(ref[n, j], est[n, i], data_range=1.0)
        totals = pair[np.arange(k)[None, :], perms].sum(axis=1)
        best = perms[int(np.argmax(totals))]
        psnr = float(np.mean([pair[i, best[i]] for i in range(k)]))
        ssim = float(np.mean([_ssim(ref[n, best[i]], est[n, i]) for i in range(k)]))
        rows.append({"mixture": n, "psnr": psnr, "ssim": ssim, "perm": ",".join(map(str, best))})
    return pd.DataFrame(rows)
