"""Image tasks on the real MNIST / CIFAR-10 test splits, and the image metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from benchmark.config import TaskConfig
from tasks.base import DatasetNotFoundError
from tasks.image_metrics import image_separation_scores
from tasks.images import Cifar10Task, MnistTask, load_images


def test_mnist_loads_real_test_split_padded(data_root):
    images = load_images("mnist", str(data_root))
    assert images.shape == (10000, 1, 32, 32)
    assert images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    # 2-pixel zero padding on every side (28 -> 32)
    assert float(images[:, :, :2].abs().sum()) == 0.0
    assert float(images[:, :, :, -2:].abs().sum()) == 0.0
    assert float(images[:, :, 2:30, 2:30].mean()) > 0.1  # digits are there


def test_cifar10_loads_real_test_split(data_root):
    images = load_images("cifar10", str(data_root))
    assert images.shape == (10000, 3, 32, 32)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert 0.3 < float(images.mean()) < 0.6


def test_missing_dataset_names_places_searched(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_images("mnist", str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "MNIST" in message and "raw" in message and "--data-root" in message
    assert str(tmp_path / "nowhere") in message


def test_eval_set_fixed_by_task_seed(data_root):
    a = MnistTask(TaskConfig(name="mnist", eval_mixtures=20, seed=7), data_root).eval_set()
    b = MnistTask(TaskConfig(name="mnist", eval_mixtures=20, seed=7), data_root).eval_set()
    c = MnistTask(TaskConfig(name="mnist", eval_mixtures=20, seed=8), data_root).eval_set()
    assert torch.equal(a.mixtures, b.mixtures)
    assert not torch.equal(a.mixtures, c.mixtures)
    assert a.sources.shape == (20, 2, 1, 32, 32)
    # model convention: the mixture is the sum of the sources (the task's average times K)
    torch.testing.assert_close(a.mixtures, a.sources.sum(dim=1))
    # two distinct images per mixture
    assert not torch.equal(a.sources[:, 0], a.sources[:, 1])


def test_training_mixtures_are_sums_of_two_distinct_images(data_root):
    task = Cifar10Task(TaskConfig(name="cifar10"), data_root)
    gen = torch.Generator().manual_seed(0)
    sources = task.sample_sources(64, gen)
    assert sources.shape == (64, 2, 3, 32, 32)
    mixtures = task.sample_mixtures(64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mixtures, sources.sum(dim=1))


def test_mixit_references_hold_one_or_two_images(data_root):
    """With one-hot 'images' the number of lit pixels counts the images in each reference:
    mixtures of mixtures must hold 2/3/4 images at about 25/50/25 %."""
    task = MnistTask(TaskConfig(name="mnist"), data_root)
    pool = torch.zeros(1024, 1, 32, 32)
    pool.view(1024, -1)[torch.arange(1024), torch.arange(1024)] = 1.0
    task.images = pool
    refs = task.sample_mixit_references(4000, torch.Generator().manual_seed(1))
    per_ref = (refs > 0).flatten(2).sum(-1)  # (B, 2) images per reference
    assert set(per_ref.unique().tolist()) == {1, 2}
    total = per_ref.sum(1)
    fractions = [float((total == n).float().mean()) for n in (2, 3, 4)]
    assert fractions == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    # all images in a mixture of mixtures are distinct: no pixel is lit twice
    assert float(refs.sum(1).max()) == 1.0


def test_mixture_reference_is_mixture_over_k(data_root):
    task = MnistTask(TaskConfig(name="mnist", eval_mixtures=4), data_root)
    data = task.eval_set()
    est = task.mixture_estimate(data.mixtures)
    assert est.shape == data.sources.shape
    torch.testing.assert_close(est[:, 0], data.mixtures / 2)
    torch.testing.assert_close(est[:, 1], data.mixtures / 2)


def test_image_scores_pick_best_permutation_and_match_skimage():
    gen = torch.Generator().manual_seed(0)
    sources = torch.rand(3, 2, 3, 32, 32, generator=gen)
    noisy = (sources + 0.05 * torch.randn(sources.shape, generator=gen)).clamp(0, 1)
    swapped = noisy.flip(1)  # estimate 0 is source 1 and vice versa
    scores = image_separation_scores(swapped, sources)
    assert list(scores["perm"]) == ["1,0"] * 3
    ref = sources.double().numpy()
    est = swapped.double().numpy()
    for n in range(3):
        psnr = np.mean(
            [peak_signal_noise_ratio(ref[n, 1 - k], est[n, k], data_range=1.0) for k in range(2)]
        )
        ssim = np.mean(
            [
                structural_similarity(ref[n, 1 - k], est[n, k], data_range=1.0, channel_axis=0)
                for k in range(2)
            ]
        )
        assert scores.loc[n, "psnr"] == pytest.approx(psnr)
        assert scores.loc[n, "ssim"] == pytest.approx(ssim)


def test_image_scores_clamp_estimates():
    sources = torch.full((1, 2, 1, 32, 32), 0.5)
    sources[:, 1] = 0.25
    over = sources.clone()
    over[:, 0] = 3.0  # clamped to 1 -> error 0.5
    over[:, 1] = -1.0  # clamped to 0 -> error 0.25
    scores = image_separation_scores(over, sources)
    expected = (10 * np.log10(1 / 0.25) + 10 * np.log10(1 / 0.0625)) / 2
    assert scores.loc[0, "psnr"] == pytest.approx(expected)
