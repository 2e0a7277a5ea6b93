"""Audio separation networks (SURF Appendix D.3, D.5).

- :class:`ConvTasNet`: Conv-TasNet (Luo and Mesgarani 2019) with real-valued sigmoid masks on a
  learned encoder and the mixture-consistency projection of Wisdom et al. (2019): the MixIT
  teacher's network (SURF D.3: "for audio separation, the frozen teacher is a ConvTasNet") and
  the network of the regression methods (MixIT, ReMixIT, Self-Remixing, MixPIT, MixCycle,
  supervised regression). Waveform ``(B, T)`` in, ``(B, M, T)`` out, outputs summing to the
  mixture.
- :class:`TFFlowNet`: a permutation-equivariant time-frequency velocity network in the spirit
  of SURF's MB-TF-Locoformer (Table 7; Scheibler et al. 2025): STFT with 20 ms frames and 10 ms
  hop, energy-normalised Hamming window, magnitude compression ``|X|^0.33``, a band-split
  front-end on mel-spaced bands, blocks alternating attention over (band x source) tokens of one
  frame and attention over time of one (band, source) track, each followed by a convolutional
  feed-forward layer along time, the mixture as an auxiliary source token, time conditioning by
  a Fourier embedding of ``t``. Its output velocity is projected to zero sum over sources
  (FLOSS; :func:`methods.flow.project_zero_sum`) so every Euler iterate keeps
  ``sum_k x_t^(k) = m``. Sources share every weight and attention has no positional code over
  sources, so the network is permutation-equivariant over sources.

Simplifications against the published MB-TF-Locoformer (documented, not hidden): the band
split uses non-overlapping mel-spaced bands (at least one STFT bin each, so fewer bands than
asked when the STFT has few bins), the two attention types are plain multi-head self-attention
(no convolutional MHSA), and the network outputs a linear (uncompressed) complex spectrogram of
the velocity that the inverse STFT brings back to the waveform.

Shapes: waveforms ``(B, T)`` (mixtures) and ``(B, K, T)`` (sources) in the sum convention
``m = sum_k x^(k)``; the sample rate is given in Hz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.config import ConfigError, param, register_section
from methods.flow import project_zero_sum
from methods.models import mixture_consistency

__all__ = ["AudioNetConfig", "ConvTasNet", "TFFlowNet", "mel_band_edges"]


@dataclass
class AudioNetConfig:
    """Audio network sizes (SURF Appendix D.3, D.5), the ``audio_net`` section of every run on
    an audio task (in place of the image tasks' ``net``; presets: ``methods/audio_nets.yaml``).

    Conv-TasNet (Luo and Mesgarani 2019; the MixIT teacher and the regression methods' network),
    in the paper's notation; defaults are its best configuration (Table II: N = 512, L = 16,
    B = 128, H = 512, P = 3, X = 8, R = 3):

    Attributes:
        tasnet_n: N, encoder filters.
        tasnet_l: L, encoder filter length in samples (stride L / 2; must be even).
        tasnet_b: B, bottleneck (and skip) channels of the TCN.
        tasnet_h: H, channels inside a convolutional block.
        tasnet_p: P, depthwise kernel size.
        tasnet_x: X, blocks per repeat (dilations 1 .. 2^(X-1)).
        tasnet_r: R, repeats.
        flow_frame_ms: STFT frame length in ms of the time-frequency flow network (SURF
            Table 7: 20 ms).
        flow_hop_ms: STFT hop in ms (Table 7: 10 ms overlap of 20 ms frames).
        flow_compression: magnitude compression exponent (Table 7: 0.33).
        flow_bands: mel bands of the band-split front-end (Table 7: 80).
        flow_dim: feature embedding dimension (Table 7: 192 for Libri2Mix; Table 8: 384 for
            AudioSet, used for ``fuss`` and ``libri_fuss``).
        flow_blocks: number of blocks (Tables 7, 8: 6).
        flow_heads: attention heads.
        flow_time_kernel: kernel of the convolutional FFN along time (Table 7 BSJA: 5).
    """

    tasnet_n: int = param(512, ge=1)
    tasnet_l: int = param(16, ge=2)
    tasnet_b: int = param(128, ge=1)
    tasnet_h: int = param(512, ge=1)
    tasnet_p: int = param(3, ge=1)
    tasnet_x: int = param(8, ge=1)
    tasnet_r: int = param(3, ge=1)
    flow_frame_ms: float = param(20.0, gt=0.0, finite=True)
    flow_hop_ms: float = param(10.0, gt=0.0, finite=True)
    flow_compression: float = param(0.33, gt=0.0, finite=True)
    flow_bands: int = param(80, ge=1)
    flow_dim: int = param(192, ge=1)
    flow_blocks: int = param(6, ge=1)
    flow_heads: int = param(4, ge=1)
    flow_time_kernel: int = param(5, ge=1)

    def validate(self) -> None:
        """Conv-TasNet's encoder stride is L / 2, so L must be even.

        Raises:
            ConfigError: an odd ``tasnet_l``.
        """
        if self.tasnet_l % 2:
            raise ConfigError(
                f"audio_net.tasnet_l (L) must be even (encoder stride L/2), got {self.tasnet_l}"
            )


register_section("audio_net", AudioNetConfig, modality="audio")


# --------------------------------------------------------------------------------------------
# Conv-TasNet
# --------------------------------------------------------------------------------------------


class _GlobalLayerNorm(nn.Module):
    """gLN of Conv-TasNet (Luo and Mesgarani 2019, eq. 13): normalise over channels and time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + 1e-8) + self.beta


class _TCNBlock(nn.Module):
    """1-D convolutional block of Conv-TasNet (Fig. 1C): 1x1 conv B -> H, PReLU, gLN, dilated
    depthwise conv (kernel P), PReLU, gLN, then 1x1 convs to the residual and skip paths."""

    def __init__(self, b: int, h: int, p: int, dilation: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(b, h, 1),
            nn.PReLU(),
            _GlobalLayerNorm(h),
            nn.Conv1d(h, h, p, dilation=dilation, padding=dilation * (p - 1) // 2, groups=h),
            nn.PReLU(),
            _GlobalLayerNorm(h),
        )
        self.res = nn.Conv1d(h, b, 1)
        self.skip = nn.Conv1d(h, b, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.net(x)
        return x + self.res(y), self.skip(y)


class ConvTasNet(nn.Module):
    """Conv-TasNet separator, mixture ``(B, T)`` -> ``M`` mixture-consistent sources ``(B, M, T)``.

    Luo and Mesgarani (2019): encoder ``Conv1d(1, N, L, stride L/2)`` + ReLU, temporal
    convolutional network (layer norm, bottleneck ``N -> B``, ``R`` repeats of ``X`` blocks with
    dilations ``1 .. 2^(X-1)``, hidden ``H`` channels, kernel ``P``, skip connections), masks
    ``sigmoid(conv1x1(PReLU(skip)))`` of shape ``(M, N, frames)``, decoder
    ``ConvTranspose1d(N, 1, L, stride L/2)``. Real-valued (sigmoid) masks as Wisdom et al.
    (2020) (SURF D.5). The outputs then go through the unweighted mixture-consistency projection
    (Wisdom et al. 2019), so they sum exactly to the input. The network is positively
    homogeneous up to the layer norms' epsilon (no input normalisation needed).

    Args:
        num_outputs: M.
        cfg: sizes (``tasnet_n``, ``tasnet_l``, ``tasnet_b``, ``tasnet_h``, ``tasnet_p``,
            ``tasnet_x``, ``tasnet_r``).

    Raises:
        ValueError: an odd filter length L (the stride is L/2).
    """

    def __init__(self, num_outputs: int, cfg: AudioNetConfig) -> None:
        super().__init__()
        n, length, b = cfg.tasnet_n, cfg.tasnet_l, cfg.tasnet_b
        if length % 2:
            raise ValueError(f"audio_net.tasnet_l (L) must be even (stride L/2), got {length}")
        self.num_outputs = num_outputs
        self.n, self.length, self.stride = n, length, length // 2
        self.encoder = nn.Conv1d(1, n, length, stride=self.stride, bias=False)
        self.norm = _GlobalLayerNorm(n)
        self.bottleneck = nn.Conv1d(n, b, 1)
        self.blocks = nn.ModuleList(
            _TCNBlock(b, cfg.tasnet_h, cfg.tasnet_p, 2**x)
            for _ in range(cfg.tasnet_r)
            for x in range(cfg.tasnet_x)
        )
        self.mask = nn.Sequential(nn.PReLU(), nn.Conv1d(b, num_outputs * n, 1))
        self.decoder = nn.ConvTranspose1d(n, 1, length, stride=self.stride, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        """``(B, T)`` mixtures -> ``(B, M, T)`` estimates with ``sum_j out_j = mixture``.

        Raises:
            ValueError: the input is not ``(B, T)``.
        """
        if mixture.dim() != 2:
            raise ValueError(f"ConvTasNet takes (B, T) waveforms, got {tuple(mixture.shape)}")
        batch, length = mixture.shape
        frames = max(1, math.ceil((length - self.length) / self.stride) + 1)
        padded = F.pad(mixture, (0, (frames - 1) * self.stride + self.length - length))
        w = F.relu(self.encoder(padded[:, None]))  # (B, N, frames)
        x = self.bottleneck(self.norm(w))
        skip = torch.zeros_like(x)
        for block in self.blocks:
            x, s = block(x)
            skip = skip + s
        masks = torch.sigmoid(self.mask(skip)).reshape(batch, self.num_outputs, self.n, -1)
        masked = (masks * w[:, None]).flatten(0, 1)  # (B*M, N, frames)
        out = self.decoder(masked).reshape(batch, self.num_outputs, -1)[..., :length]
        return mixture_consistency(out, mixture)


# --------------------------------------------------------------------------------------------
# Time-frequency flow network
# --------------------------------------------------------------------------------------------


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)  # HTK mel scale


def _mel_to_hz(m: float) -> float:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_band_edges(num_bins: int, sample_rate: int, num_bands: int) -> list[int]:
    """Non-overlapping mel-spaced bands over ``num_bins`` STFT bins (0 .. sample_rate / 2).

    Band ``j`` covers bins ``edges[j] .. edges[j + 1] - 1``. Edges are mel-spaced (HTK formula),
    rounded to bins, and bands narrower than one bin are merged, so the number of bands is
    ``min(num_bands, num_bins)`` or fewer.

    Args:
        num_bins: STFT bins ``n_fft // 2 + 1``.
        sample_rate: Hz.
        num_bands: requested number of bands (80 in SURF Table 7).

    Returns:
        Increasing list of edges from 0 to ``num_bins``.
    """
    top = _hz_to_mel(sample_rate / 2)
    edges = [0]
    for j in range(1, num_bands):
        hz = _mel_to_hz(top * j / num_bands)
        edge = int(round(hz / (sample_rate / 2) * (num_bins - 1)))
        if edge > edges[-1] and edge < num_bins:
            edges.append(edge)
    edges.append(num_bins)
    return edges


class _FourierTime(nn.Module):
    """Time embedding: random Fourier features of ``t`` (scale 16, as SURF Table 6) + MLP."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale, persistent=True)
        self.mlp = nn.Sequential(nn.Linear(2 * (dim // 2), dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        angle = 2 * math.pi * t[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angle.sin(), angle.cos()], dim=-1))


class _ConvFFN(nn.Module):
    """Convolutional feed-forward layer of a Locoformer block: LayerNorm, depthwise conv along
    time (kernel ``time_kernel``), pointwise MLP (x4), with a residual connection."""

    def __init__(self, dim: int, time_kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, time_kernel, padding=time_kernel // 2, groups=dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, S, F, T, D)`` -> same shape."""
        b, s, f, t, d = x.shape
        y = self.norm(x).reshape(b * s * f, t, d).transpose(1, 2)
        y = self.conv(y).transpose(1, 2).reshape(b, s, f, t, d)
        return x + self.mlp(y)


class _Attention(nn.Module):
    """Pre-norm multi-head self-attention over one token axis group, with a residual.

    ``softmax(Q K^T / sqrt(d)) V`` per head: very short sequences (the K + 1 source tokens)
    are computed with broadcast products, which on CPU is much faster than batched matrix
    products of tiny matrices; longer ones use ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"audio_net.flow_dim={dim} must be divisible by flow_heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(N, L, D)`` sequences -> same shape."""
        n, length, dim = tokens.shape
        qkv = self.qkv(self.norm(tokens)).reshape(n, length, 3, self.heads, dim // self.heads)
        if length <= 8:
            q, k, v = qkv.unbind(2)  # (N, L, heads, d) each
            scores = (q[:, :, None] * k[:, None]).sum(-1) / math.sqrt(dim // self.heads)
            weights = torch.softmax(scores, dim=2)  # (N, L_q, L_k, heads)
            y = (weights[..., None] * v[:, None]).sum(2).reshape(n, length, dim)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, L, d) each
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        return tokens + self.out(y)


class _TFBlock(nn.Module):
    """One block: band-source joint attention within each frame (BSJA: tokens are the
    (band, source) pairs of a frame), then time attention within each (band, source) track
    together with the sources of that band and frame (TSPA-like: time attention per track, then
    attention over sources per (band, frame)), each followed by a convolutional FFN; the time
    embedding is added before the block (FiLM-free additive conditioning)."""

    def __init__(self, dim: int, heads: int, time_kernel: int) -> None:
        super().__init__()
        self.band_source = _Attention(dim, heads)
        self.ffn1 = _ConvFFN(dim, time_kernel)
        self.time = _Attention(dim, heads)
        self.source = _Attention(dim, heads)
        self.ffn2 = _ConvFFN(dim, time_kernel)

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        b, s, f, t, d = x.shape
        if cond is not None:
            x = x + cond[:, None, None, None, :]
        y = x.permute(0, 3, 1, 2, 4).reshape(b * t, s * f, d)  # tokens (source, band) per frame
        y = self.band_source(y).reshape(b, t, s, f, d).permute(0, 2, 3, 1, 4)
        y = self.ffn1(y)
        z = self.time(y.reshape(b * s * f, t, d)).reshape(b, s, f, t, d)  # time per track
        z = z.permute(0, 2, 3, 1, 4).reshape(b * f * t, s, d)  # sources per (band, frame)
        z = self.source(z).reshape(b, f, t, s, d).permute(0, 3, 1, 2, 4)
        return self.ffn2(z)


class TFFlowNet(nn.Module):
    """Permutation-equivariant time-frequency velocity network ``v_theta(x_t, t, m)``.

    Args:
        sample_rate: Hz (sets the 20 ms / 10 ms STFT in samples).
        num_sources: K (the network itself works for any K; recorded for checks).
        cfg: sizes (``flow_*`` fields of :class:`AudioNetConfig`).
        conditional: time conditioning on (flow models); off for a regression use.
    """

    def __init__(
        self, sample_rate: int, num_sources: int, cfg: AudioNetConfig, conditional: bool = True
    ) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.n_fft = int(round(cfg.flow_frame_ms * sample_rate / 1000))
        self.hop = int(round(cfg.flow_hop_ms * sample_rate / 1000))
        if self.n_fft < 2 or self.hop < 1 or self.hop > self.n_fft:
            raise ValueError(
                f"STFT of {cfg.flow_frame_ms} ms frames and {cfg.flow_hop_ms} ms hop at "
                f"{sample_rate} Hz is not usable (n_fft={self.n_fft}, hop={self.hop})"
            )
        window = torch.hamming_window(self.n_fft, periodic=True)
        self.register_buffer("window", window / window.pow(2).sum().sqrt(), persistent=False)
        self.compression = cfg.flow_compression
        bins = self.n_fft // 2 + 1
        self.edges = mel_band_edges(bins, sample_rate, cfg.flow_bands)
        dim = cfg.flow_dim
        widths = [2 * (e1 - e0) for e0, e1 in zip(self.edges[:-1], self.edges[1:], strict=True)]
        # band-split front-end: one linear map per band (learnable band split; sources share it),
        # a separate one for the mixture token (auxiliary input)
        self.split_src = nn.ModuleList(nn.Linear(w, dim) for w in widths)
        self.split_mix = nn.ModuleList(nn.Linear(w, dim) for w in widths)
        self.merge = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, w)) for w in widths
        )
        for head in self.merge:  # zero-initialised output (as the image U-Net)
            nn.init.zeros_(head[1].weight)
            nn.init.zeros_(head[1].bias)
        self.time_embed = _FourierTime(dim) if conditional else None
        self.blocks = nn.ModuleList(
            _TFBlock(dim, cfg.flow_heads, cfg.flow_time_kernel) for _ in range(cfg.flow_blocks)
        )

    def _stft(self, wave: Tensor) -> Tensor:
        """``(N, T)`` -> compressed complex STFT as real ``(N, F, frames, 2)``."""
        spec = torch.stft(
            wave, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )
        mag = spec.abs()
        spec = spec * (mag.clamp_min(1e-8).pow(self.compression) / mag.clamp_min(1e-8))
        return torch.view_as_real(spec)

    def _split(self, spec: Tensor, layers: nn.ModuleList) -> Tensor:
        """``(N, F, frames, 2)`` -> ``(N, bands, frames, D)``."""
        bands = []
        for j, layer in enumerate(layers):
            part = spec[:, self.edges[j] : self.edges[j + 1]]  # (N, w, frames, 2)
            bands.append(layer(part.permute(0, 2, 1, 3).flatten(2)))  # (N, frames, D)
        return torch.stack(bands, dim=1)

    def forward(self, x_t: Tensor, t: Tensor | None, mixture: Tensor) -> Tensor:
        """Velocity at ``(x_t, t)`` given the mixture.

        Args:
            x_t: ``(B, K, T)`` current sources.
            t: ``(B,)`` times in [0, 1] (None for an unconditional network).
            mixture: ``(B, T)``.

        Returns:
            ``(B, K, T)`` with ``sum_k v^(k) = 0`` (output projection ``P_perp``).

        Raises:
            ValueError: inconsistent shapes.
        """
        if x_t.dim() != 3 or mixture.shape != (x_t.shape[0], x_t.shape[2]):
            raise ValueError(
                f"TFFlowNet takes x_t (B, K, T) and mixture (B, T), got {tuple(x_t.shape)} "
                f"and {tuple(mixture.shape)}"
            )
        batch, k, length = x_t.shape
        src = self._split(self._stft(x_t.reshape(batch * k, length)), self.split_src)
        mix = self._split(self._stft(mixture), self.split_mix)
        _, f, frames, d = src.shape
        h = torch.cat([src.reshape(batch, k, f, frames, d), mix[:, None]], dim=1)
        cond = self.time_embed(t) if self.time_embed is not None and t is not None else None
        for block in self.blocks:
            h = block(h, cond)
        h = h[:, :k].reshape(batch * k, f, frames, d)
        parts = []
        for j, head in enumerate(self.merge):
            width = self.edges[j + 1] - self.edges[j]
            parts.append(head(h[:, j]).reshape(batch * k, frames, width, 2))
        spec = torch.view_as_complex(torch.cat(parts, dim=2).permute(0, 2, 1, 3).contiguous())
        wave = torch.istft(
            spec, self.n_fft, self.hop, window=self.window, center=True, length=length
        )
        return project_zero_sum(wave.reshape(batch, k, length))
