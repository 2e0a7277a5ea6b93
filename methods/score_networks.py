"""Noise-conditional score networks ``s_theta(x, sigma) ~ grad_x log p_sigma(x)`` (NCSN).

Built through :func:`build_score_network`, which picks a builder by the kind of sample (a
``(C, H, W)`` image today); another modality (e.g. a waveform score network for an audio task)
registers its builder with :func:`register_score_network` and BASIS uses it unchanged.

:class:`ImageScoreNet` reuses the harness's NCSN++-style U-Net (:mod:`methods.networks`) with the
noise level as its conditioning: the Gaussian Fourier embedding is fed ``log sigma``, as NCSN++
does for its VE models (Song et al. 2021, ``ncsnpp.py``, ``embedding_type='fourier'``), and the
output is divided by ``sigma`` (NCSN++ / NCSNv2 ``scale_by_sigma``; Song and Ermon 2020,
"Improved techniques", technique 3), so the network itself predicts ``-z``, a unit-scale target
at every level. BASIS (2020) used the original NCSN RefineNet, conditioned on the level index
through conditional instance normalisation; the architecture here is the SURF backbone so that
every method of the benchmark shares it (SURF Table 1 trains all models with it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmark.config import NetConfig
from methods.models import _check_image, _unet_config
from methods.networks import NCSNppUNet

__all__ = [
    "ImageScoreNet",
    "build_score_network",
    "register_score_network",
    "sample_kind",
    "score_network_kinds",
]

ScoreNetBuilder = Callable[[tuple[int, ...], NetConfig], nn.Module]
_BUILDERS: dict[str, ScoreNetBuilder] = {}


def register_score_network(kind: str) -> Callable[[ScoreNetBuilder], ScoreNetBuilder]:
    """Decorator: register a builder ``(sample_shape, net_config) -> nn.Module`` whose module
    maps ``(x: (N, *D), sigma: (N,))`` to ``(N, *D)`` scores, for samples of ``kind``."""

    def wrap(builder: ScoreNetBuilder) -> ScoreNetBuilder:
        _BUILDERS[kind] = builder
        return builder

    return wrap


def score_network_kinds() -> list[str]:
    """Kinds of samples with a registered score network."""
    return sorted(_BUILDERS)


def sample_kind(sample_shape: tuple[int, ...]) -> str:
    """``"image"`` for ``(C, H, W)``, ``"waveform"`` for ``(T,)``, else ``"<n>d"``."""
    return {3: "image", 1: "waveform"}.get(len(sample_shape), f"{len(sample_shape)}d")


def build_score_network(
    sample_shape: tuple[int, ...], net: NetConfig, kind: str | None = None
) -> nn.Module:
    """The score network for samples of ``sample_shape`` (kind from :func:`sample_kind`).

    Raises:
        ValueError: no score network is registered for that kind (the message lists the
            registered kinds and how to add one).
    """
    kind = kind or sample_kind(sample_shape)
    if kind not in _BUILDERS:
        raise ValueError(
            f"no score network for {kind!r} samples of shape {tuple(sample_shape)}; registered "
            f"kinds: {score_network_kinds()}. Add one with "
            "@methods.score_networks.register_score_network(kind)."
        )
    return _BUILDERS[kind](tuple(sample_shape), net)


@register_score_network("image")
class ImageScoreNet(nn.Module):
    """``s_theta(x, sigma) = U(2 x - 1, log sigma) / sigma`` for ``(C, H, W)`` images in [0, 1].

    Args:
        sample_shape: ``(C, H, W)``, square.
        net: U-Net size (:class:`benchmark.config.NetConfig`).

    Shapes:
        ``forward(x: (N, C, H, W), sigma: (N,) or float) -> (N, C, H, W)``, the score in data
        units (the U-Net sees the centred input ``2 x - 1``, as every network of the harness).
    """

    def __init__(self, sample_shape: tuple[int, ...], net: NetConfig) -> None:
        super().__init__()
        channels, size = _check_image(sample_shape)
        self.unet = NCSNppUNet(channels, channels, size, _unet_config(net), conditional=True)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma_t = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma_t.ndim == 0:
            sigma_t = sigma_t.expand(x.shape[0])
        out = self.unet(2.0 * x - 1.0, torch.log(sigma_t))
        return out / sigma_t.to(out.dtype).reshape(-1, *([1] * (x.ndim - 1)))
