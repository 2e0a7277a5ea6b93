"""Noise-conditional score networks ``s_theta(x, sigma) ~ grad_x log p_sigma(x)`` (NCSN).

Built through :func:`build_score_network`, which picks a builder by the kind of sample (a
``(C, H, W)`` image or a ``(T,)`` waveform); another modality registers its builder with
:func:`register_score_network` and BASIS uses it unchanged. BASIS calls it through
:func:`methods.model_factory.build_score_net`, which passes ``net`` (images) or ``audio_net``
(audio) as the size configuration.

:class:`ImageScoreNet` reuses the harness's NCSN++-style U-Net (:mod:`methods.networks`) with the
noise level as its conditioning: the Gaussian Fourier embedding is fed ``log sigma``, as NCSN++
does for its VE models (Song et al. 2021, ``ncsnpp.py``, ``embedding_type='fourier'``), and the
output is divided by ``sigma`` (NCSN++ / NCSNv2 ``scale_by_sigma``; Song and Ermon 2020,
"Improved techniques", technique 3), so the network itself predicts ``-z``, a unit-scale target
at every level. BASIS (2020) used the original NCSN RefineNet, conditioned on the level index
through conditional instance normalisation; the architecture here is the SURF backbone so that
every method of the benchmark shares it (SURF Table 1 trains all models with it).

:class:`WaveformScoreNet` is the audio counterpart, a Conv-TasNet-style temporal convolutional
network (the regression methods' backbone, :class:`methods.audio_nets.ConvTasNet`, same
``audio_net.tasnet_*`` sizes) with the same ``log sigma`` Fourier conditioning, injected by FiLM
(Perez et al. 2018) before every block, and the same division by ``sigma``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.registry import Registry
from methods.audio_nets import AudioNetConfig, _FourierTime, _GlobalLayerNorm, _TCNBlock
from methods.models import _check_image, _unet_config
from methods.networks import NCSNppUNet, UNetConfig

__all__ = [
    "SCORE_NETWORKS",
    "ImageScoreNet",
    "WaveformScoreNet",
    "build_score_network",
    "register_score_network",
    "sample_kind",
    "score_network_kinds",
]

#: ``(sample_shape, size config) -> module``; the size config is ``UNetConfig`` for images and
#: ``AudioNetConfig`` for waveforms.
ScoreNetBuilder = Callable[[tuple[int, ...], UNetConfig | AudioNetConfig], nn.Module]
#: sample kind (:func:`sample_kind`) -> score network class (an ``nn.Module``)
SCORE_NETWORKS: Registry[ScoreNetBuilder] = Registry("score network", "torch.nn:Module")


def register_score_network(kind: str) -> Callable[[ScoreNetBuilder], ScoreNetBuilder]:
    """Decorator: register an ``nn.Module`` class built as ``cls(sample_shape, net_config)``
    that maps ``(x: (N, *D), sigma: (N,))`` to ``(N, *D)`` scores, for samples of ``kind``."""

    def wrap(builder: ScoreNetBuilder) -> ScoreNetBuilder:
        return SCORE_NETWORKS.add(kind, builder)

    return wrap


def score_network_kinds() -> list[str]:
    """Kinds of samples with a registered score network."""
    return SCORE_NETWORKS.names()


def sample_kind(sample_shape: tuple[int, ...]) -> str:
    """``"image"`` for ``(C, H, W)``, ``"waveform"`` for ``(T,)``, else ``"<n>d"``."""
    return {3: "image", 1: "waveform"}.get(len(sample_shape), f"{len(sample_shape)}d")


def build_score_network(
    sample_shape: tuple[int, ...], net: UNetConfig | AudioNetConfig, kind: str | None = None
) -> nn.Module:
    """The score network for samples of ``sample_shape`` (kind from :func:`sample_kind`), sized
    by ``net`` (``UNetConfig`` for images, ``AudioNetConfig`` for waveforms).

    Raises:
        ValueError: no score network is registered for that kind (the message lists the
            registered kinds and how to add one).
    """
    kind = kind or sample_kind(sample_shape)
    if kind not in SCORE_NETWORKS:
        raise ValueError(
            f"no score network for {kind!r} samples of shape {tuple(sample_shape)}; registered "
            f"kinds: {score_network_kinds()}. Add one with "
            "@methods.score_networks.register_score_network(kind)."
        )
    return SCORE_NETWORKS.get(kind)(tuple(sample_shape), net)


@register_score_network("image")
class ImageScoreNet(nn.Module):
    """``s_theta(x, sigma) = U(2 x - 1, log sigma) / sigma`` for ``(C, H, W)`` images in [0, 1].

    Args:
        sample_shape: ``(C, H, W)``, square.
        net: U-Net size (:class:`methods.networks.UNetConfig`).

    Shapes:
        ``forward(x: (N, C, H, W), sigma: (N,) or float) -> (N, C, H, W)``, the score in data
        units (the U-Net sees the centred input ``2 x - 1``, as every network of the harness).
    """

    def __init__(self, sample_shape: tuple[int, ...], net: UNetConfig) -> None:
        super().__init__()
        channels, size = _check_image(sample_shape)
        self.unet = NCSNppUNet(channels, channels, size, _unet_config(net), conditional=True)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma_t = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma_t.ndim == 0:
            sigma_t = sigma_t.expand(x.shape[0])
        out = self.unet(2.0 * x - 1.0, torch.log(sigma_t))
        return out / sigma_t.to(out.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _sigma_vector(sigma: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """``(N,)`` float32 noise levels from a scalar or an ``(N,)`` tensor."""
    sigma_t = torch.as_tensor(sigma, device=device, dtype=torch.float32)
    return sigma_t.expand(batch) if sigma_t.ndim == 0 else sigma_t


@register_score_network("waveform")
class WaveformScoreNet(nn.Module):
    """``s_theta(x, sigma) = D(TCN(E(x), log sigma)) / sigma`` for ``(T,)`` waveforms.

    Encoder ``E``: ``Conv1d(1, N, L, stride L/2)`` (linear: a score needs the sign of the
    waveform, so no ReLU as in Conv-TasNet's mask encoder), global layer norm, bottleneck
    ``N -> B``; ``R`` repeats of ``X`` Conv-TasNet blocks (dilations ``1 .. 2^(X-1)``, hidden
    ``H``, kernel ``P``; Luo and Mesgarani 2019, Fig. 1C), each preceded by FiLM
    ``h <- h (1 + a(e)) + b(e)`` with ``e`` the Gaussian Fourier embedding of ``log sigma``
    (scale 16, as NCSN++'s VE models; Song et al. 2021); skip sum, PReLU, ``1x1`` conv to ``N``
    channels and the decoder ``ConvTranspose1d(N, 1, L, stride L/2)``, zero-initialised so an
    untrained network outputs 0 (DSM loss 1/2, as :class:`ImageScoreNet`). The result is divided
    by ``sigma`` (NCSNv2 technique 3): the network predicts ``-z``, unit scale at every level.

    The waveform is used as it is (no centring or clamping: audio has no bounded range);
    the global layer norm after the encoder makes the network insensitive to the overall input
    level, which the noise level (through FiLM) and the data then pin down.

    Args:
        sample_shape: ``(T,)``.
        cfg: sizes, shared with Conv-TasNet: ``tasnet_n`` (N), ``tasnet_l`` (L, even),
            ``tasnet_b`` (B, also the embedding width), ``tasnet_h``, ``tasnet_p``,
            ``tasnet_x``, ``tasnet_r``.

    Shapes:
        ``forward(x: (N, T), sigma: (N,) or float) -> (N, T)``, the score in data units.

    Raises:
        ValueError: ``sample_shape`` is not ``(T,)``, an odd L, or an input not ``(N, T)``.
    """

    def __init__(self, sample_shape: tuple[int, ...], cfg: AudioNetConfig) -> None:
        super().__init__()
        if len(sample_shape) != 1:
            raise ValueError(f"WaveformScoreNet needs sample_shape (T,), got {sample_shape}")
        if not isinstance(cfg, AudioNetConfig):
            raise ValueError(f"WaveformScoreNet is sized by AudioNetConfig, got {type(cfg)}")
        n, length, b = cfg.tasnet_n, cfg.tasnet_l, cfg.tasnet_b
        if length % 2:
            raise ValueError(f"audio_net.tasnet_l (L) must be even (stride L/2), got {length}")
        self.length, self.stride = length, length // 2
        self.encoder = nn.Conv1d(1, n, length, stride=self.stride, bias=False)
        self.norm = _GlobalLayerNorm(n)
        self.bottleneck = nn.Conv1d(n, b, 1)
        self.embed = _FourierTime(2 * max(1, b // 2))  # log sigma -> (N, 2 floor(B/2))
        self.blocks = nn.ModuleList(
            _TCNBlock(b, cfg.tasnet_h, cfg.tasnet_p, 2**x)
            for _ in range(cfg.tasnet_r)
            for x in range(cfg.tasnet_x)
        )
        self.film = nn.ModuleList(nn.Linear(2 * max(1, b // 2), 2 * b) for _ in self.blocks)
        self.head = nn.Sequential(nn.PReLU(), nn.Conv1d(b, n, 1))
        self.decoder = nn.ConvTranspose1d(n, 1, length, stride=self.stride, bias=False)
        nn.init.zeros_(self.decoder.weight)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"WaveformScoreNet takes (N, T) waveforms, got {tuple(x.shape)}")
        batch, length = x.shape
        sigma_t = _sigma_vector(sigma, batch, x.device)
        frames = max(1, math.ceil((length - self.length) / self.stride) + 1)
        padded = F.pad(x, (0, (frames - 1) * self.stride + self.length - length))
        h = self.bottleneck(self.norm(self.encoder(padded[:, None])))  # (N, B, frames)
        emb = self.embed(torch.log(sigma_t))
        skip = torch.zeros_like(h)
        for film, block in zip(self.film, self.blocks, strict=True):
            scale, shift = film(emb)[..., None].chunk(2, dim=1)
            h, s = block(h * (1.0 + scale) + shift)
            skip = skip + s
        out = self.decoder(self.head(skip))[:, 0, :length]
        return out / sigma_t.to(out.dtype)[:, None]
