"""The vectorised image metrics (tasks/image_metrics.py) against scikit-image, the reference, on
real MNIST and CIFAR-10 test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tasks.image_metrics import image_separation_scores, psnr, ssim
from tasks.images import load_images


def _pairs(data_root, name: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real test images and degraded copies (noise, blur by mixing with another
    image, clamping to [0, 1]), float64 ``(count, C, H, W)``."""
    images = load_images(name, str(data_root))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(images), (count, 2), generator=gen)
    ref = images[idx[:, 0]].double()
    other = images[idx[:, 1]].double()
    level = torch.rand(count, 1, 1, 1, generator=gen, dtype=torch.float64)
    est = (1 - 0.5 * level) * ref + 0.5 * level * other
    est = est + 0.1 * level * torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    return est.clamp(0, 1).numpy(), ref.numpy()


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_psnr_and_ssim_equal_scikit_image(data_root, name: str) -> None:
    est, ref = _pairs(data_root, name, 40, seed=1)
    est[0] = ref[0]  # an exact estimate: PSNR +inf, SSIM 1
    got_psnr = psnr(est, ref)
    got_ssim = ssim(est, ref)
    want_psnr, want_ssim = [], []
    with np.errstate(divide="ignore"):
        for e, r in zip(est, ref, strict=True):
            want_psnr.append(peak_signal_noise_ratio(r, e, data_range=1.0))
            if r.shape[0] == 1:
                want_ssim.append(structural_similarity(r[0], e[0], data_range=1.0))
            else:
                want_ssim.append(structural_similarity(r, e, data_range=1.0, channel_axis=0))
    assert got_psnr[0] == np.inf and np.isclose(got_ssim[0], 1.0)
    np.testing.assert_allclose(got_psnr[1:], want_psnr[1:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_ssim, want_ssim, rtol=0, atol=1e-6)
    # batch axes are free: a (n, K, C, H, W) stack gives the same numbers
    stacked = ssim(est.reshape(10, 4, *est.shape[1:]), ref.reshape(10, 4, *ref.shape[1:]))
    np.testing.assert_allclose(stacked.reshape(-1), want_ssim, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="7 x 7"):
        ssim(est[:, :, :6, :6], ref[:, :, :6, :6])


def _pair_psnr(ref: np.ndarray, est: np.ndarray, k: int) -> np.ndarray:
    """``[i, j]``: PSNR of estimate i against source j."""
    return np.array(
        [
            [peak_signal_noise_ratio(ref[j], est[i], data_range=1.0) for j in range(k)]
            for i in range(k)
        ]
    )


def _per_image_loop(estimates: torch.Tensor, sources: torch.Tensor) -> list[dict]:
    """The scoring protocol written image by image with scikit-image (the former
    implementation): PSNR of every pair, the permutation of the largest summed PSNR (first in
    lexicographic order), SSIM of the matched pairs."""
    est = estimates.double().clamp(0, 1).numpy()
    ref = sources.double().clamp(0, 1).numpy()
    k = est.shape[1]
    perms = [(0, 1), (1, 0)] if k == 2 else None
    rows = []
    for n in range(est.shape[0]):
        with np.errstate(divide="ignore"):  # an exact estimate: PSNR +inf
            pair = _pair_psnr(ref[n], est[n], k)
        totals = [pair[0, p[0]] + pair[1, p[1]] for p in perms]
        best = perms[int(np.argmax(totals))]
        ssims = []
        for i in range(k):
            r, e = ref[n, best[i]], est[n, i]
            if r.shape[0] == 1:
                ssims.append(structural_similarity(r[0], e[0], data_range=1.0))
            else:
                ssims.append(structural_similarity(r, e, data_range=1.0, channel_axis=0))
        rows.append(
            {
                "psnr": float(np.mean([pair[i, best[i]] for i in range(k)])),
                "ssim": float(np.mean(ssims)),
                "perm": ",".join(map(str, best)),
            }
        )
    return rows


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_image_separation_scores_equal_the_per_image_scikit_image_loop(data_root, name) -> None:
    est, ref = _pairs(data_root, name, 60, seed=2)
    sources = torch.from_numpy(ref).reshape(30, 2, *ref.shape[1:])
    estimates = torch.from_numpy(est).reshape(30, 2, *est.shape[1:])
    estimates[::3] = estimates[::3].flip(1)  # a third of the mixtures need the swap
    estimates[1] = sources[1]  # a perfect separation
    estimates[2] = estimates[2, :1].expand(2, -1, -1, -1)  # identical estimates: a tie
    scores = image_separation_scores(estimates, sources)
    want = _per_image_loop(estimates, sources)
    assert list(scores["mixture"]) == list(range(30))
    assert list(scores["perm"]) == [w["perm"] for w in want]
    assert {"0,1", "1,0"} <= set(scores["perm"])
    assert scores.at[2, "perm"] == "0,1"  # ties: the identity
    np.testing.assert_allclose(scores["psnr"], [w["psnr"] for w in want], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores["ssim"], [w["ssim"] for w in want], rtol=0, atol=1e-6)
    assert scores.at[1, "psnr"] == np.inf
