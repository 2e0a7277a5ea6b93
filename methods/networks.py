"""NCSN++-style U-Net backbone for flow-matching and regression source separation.

This module provides :class:`NCSNppUNet`, a simplified re-implementation of the ``ncsnpp``
model of Song et al. (2021), "Score-Based Generative Modeling through Stochastic
Differential Equations" (reference code: ``score_sde_pytorch/models/ncsnpp.py``), with the
hyperparameters of the SURF paper preset (Table 6) as :class:`UNetConfig` defaults.

What is faithful to NCSN++
--------------------------
* Layout: 3x3 input conv, then per resolution level ``num_res_blocks`` BigGAN residual blocks
  (each followed by self-attention at the resolutions in ``attn_resolutions``) and a BigGAN
  down-sampling residual block (except at the lowest level); a middle section
  ResBlock -> Attention -> ResBlock; a decoder with ``num_res_blocks + 1`` residual blocks per
  level, each consuming one concatenated encoder skip, one attention block per level at the
  ``attn_resolutions`` (after the level's blocks) and a BigGAN up-sampling residual block
  (except at the highest level); finally GroupNorm -> SiLU -> 3x3 output conv. The channel
  bookkeeping follows ``ncsnpp.py`` exactly.
* Residual block ``ResnetBlockBigGAN``: GroupNorm -> SiLU -> [resample] -> conv3x3
  (+ Dense(SiLU(temb))) -> GroupNorm -> SiLU -> Dropout -> conv3x3; shortcut is
  [resample] -> conv1x1 when the channel count changes or the block resamples; output
  ``(x + h) / sqrt(2)`` (``skip_rescale=True``).
* Resampling inside the BigGAN blocks uses the FIR kernel ``(1, 3, 3, 1)`` exactly as
  ``upfirdn2d`` does in NCSN++ (``fir=True``): a fixed depthwise blur with stride 2 for
  down-sampling and a fixed depthwise transposed blur for up-sampling, applied to both the
  residual branch (before its first conv) and the shortcut (before its 1x1 conv). Resampling
  is therefore always followed by a learned convolution, which is what ``resample_with_conv``
  amounts to for BigGAN blocks.
* Attention ``AttnBlockpp``: single head, GroupNorm, 1x1 q/k/v projections, softmax attention
  with scale ``C ** -0.5`` (here via :func:`torch.nn.functional.scaled_dot_product_attention`),
  1x1 output projection, ``(x + h) / sqrt(2)``.
* Time conditioning: Gaussian Fourier projection (fixed random frequencies
  ``W ~ N(0, fourier_scale ** 2)``, ``nf`` of them, features ``[sin(2 pi t W), cos(2 pi t W)]``)
  -> Linear(2 nf, 4 nf) -> SiLU -> Linear(4 nf, 4 nf); each residual block adds
  ``Linear(SiLU(temb))`` after its first conv.
* GroupNorm with ``num_groups = min(channels // 4, 32)`` and ``eps = 1e-6``; SiLU everywhere.
* Initialisation: NCSN++ ``default_init`` (fan-avg uniform variance scaling) for every conv and
  linear weight, zero biases, scale 0.1 for the attention q/k/v projections, and
  ``init_scale = 0`` for the last conv of every residual block, the attention output
  projection and the final output conv.

What is NOT NCSN++ (deliberate simplifications / deviations)
-----------------------------------------------------------
* No progressive input / output skip pyramids (NCSN++ CIFAR-10 uses
  ``progressive_input='residual'``). They are omitted both for simplicity and because the first
  pyramid conv depends on the number of input channels, which would break the weight-transfer
  contract below. Consequently the ``progressive_combine='sum'`` setting has nothing to act on
  (it is also unused by NCSN++ itself with ``progressive='none'`` and
  ``progressive_input='residual'``), and neither do the ``resample_with_conv`` pyramid
  Up/Downsample modules.
* Zero-initialised layers are exactly zero (NCSN++ uses a variance scale of ``1e-10`` for
  ``init_scale = 0``), so a freshly initialised network outputs exactly zero.
* Time input: NCSN++ feeds ``log(sigma)`` of a VE SDE into the Fourier projection. Here ``t``
  in ``[0, 1]`` (the flow-matching time) is fed **directly** (factor 1, no log): with
  ``fourier_scale = 16`` the angular frequencies have standard deviation ``2 pi * 16 ~ 100``
  rad per unit of ``t``, comparable in resolution to NCSN++'s ``log sigma`` range of ~8.5 at
  scale 16. The Fourier features are computed in float32 regardless of the model dtype.
* No input centring (``2x - 1``) and no ``scale_by_sigma`` output division: callers handle data
  scaling and the output is the raw network prediction.
* The Fourier frequencies are a (persistent) buffer rather than a frozen parameter, so
  :func:`count_parameters` only counts trainable weights; they are still in ``state_dict``.

Conditional vs. regression variant
----------------------------------
``conditional=False`` (SURF Appendix D.4, time conditioning deactivated) creates no
time-embedding modules and no per-block time projections, and ``forward`` ignores ``t``. For the
same :class:`UNetConfig`, the ``state_dict`` of a conditional and a non-conditional network have
identical names and shapes for every tensor except ``time_embed.*`` (conditional only),
``*.temb_proj.*`` (conditional only), ``conv_in.*`` and ``conv_out.*`` (shapes depend on the
channel counts). A conditional flow network can therefore be initialised from a trained
regression network by copying every shape-matching tensor with the same name.

Module naming (``state_dict`` prefixes): ``time_embed``, ``conv_in``, ``down.<level>`` (with
``blocks.<i>``, ``attns.<i>``, ``downsample``), ``mid.{block_0,attn,block_1}``, ``up.<j>``
(``j = 0`` is the *lowest* resolution, i.e. execution order; with ``blocks.<i>``, ``attn``,
``upsample``), ``norm_out``, ``conv_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import register_section

__all__ = ["UNetConfig", "NCSNppUNet", "count_parameters"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_FIR_KERNEL_1D = (1.0, 3.0, 3.0, 1.0)


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of :class:`NCSNppUNet` (defaults: SURF paper preset, Table 6).

    Attributes:
        nf: Base number of feature channels; level ``i`` has ``nf * ch_mult[i]`` channels and the
            time embedding has ``4 * nf`` dimensions.
        ch_mult: Channel multiplier per resolution level; the number of levels is
            ``len(ch_mult)`` and the resolution halves between consecutive levels.
        num_res_blocks: Residual blocks per level in the encoder (decoder: one more).
        attn_resolutions: Spatial resolutions (side length in pixels) at which self-attention is
            applied. The middle (lowest-resolution) section always has one attention block.
        dropout: Dropout probability inside the residual blocks.
        fourier_scale: Standard deviation of the Gaussian Fourier time-embedding frequencies.
    """

    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = 0.1
    fourier_scale: float = 16.0


# the ``net`` config section of every run on an image task (presets: methods/networks.yaml)
register_section("net", UNetConfig, modality="image")


# --------------------------------------------------------------------------------------------
# Initialisation and small layer helpers
# --------------------------------------------------------------------------------------------


def _variance_scaling_(weight: Tensor, scale: float) -> None:
    """NCSN++ ``default_init``: fan-avg uniform variance scaling, in place.

    ``Var = scale / ((fan_in + fan_out) / 2)``, i.e. Xavier-uniform with ``gain = sqrt(scale)``.
    ``scale == 0`` gives exact zeros (NCSN++ uses ``1e-10``).
    """
    if scale == 0.0:
        nn.init.zeros_(weight)
    else:
        nn.init.xavier_uniform_(weight, gain=math.sqrt(scale))


def _conv(in_ch: int, out_ch: int, kernel_size: int, init_scale: float = 1.0) -> nn.Conv2d:
    """Same-padded ``kernel_size`` conv with NCSN++ initialisation and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    _variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """Linear layer with NCSN++ initialisation (``default_init()``) and zero bias."""
    lin = nn.Linear(in_features, out_features)
    _variance_scaling_(lin.weight, 1.0)
    nn.init.zeros_(lin.bias)
    return lin


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(channels // 4, 32)`` groups and ``eps = 1e-6`` (as in NCSN++)."""
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups != 0:
        raise ValueError(
            f"GroupNorm with min(channels // 4, 32) = {groups} groups cannot normalise "
            f"{channels} channels; choose nf / ch_mult so that every channel count (including "
            "decoder concatenations) is >= 4 and divisible by its group count"
        )
    return nn.GroupNorm(groups, channels, eps=1e-6)


class FIRResample(nn.Module):
    """Parameter-free 2x FIR resampling with the ``(1, 3, 3, 1)`` kernel (NCSN++ ``upfirdn2d``).

    ``mode='down'``: ``(B, C, H, W) -> (B, C, H // 2, W // 2)``, depthwise blur with stride 2
    (``upfirdn2d(x, k, down=2, pad=(1, 1))``).
    ``mode='up'``: ``(B, C, H, W) -> (B, C, 2H, 2W)``, depthwise transposed blur with stride 2
    and gain 4 (``upfirdn2d(x, 4 k, up=2, pad=(2, 1))``), so constants are preserved in the
    interior.
    """

    def __init__(self, mode: Literal["up", "down"]) -> None:
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        self.mode = mode
        k = torch.tensor(_FIR_KERNEL_1D)
        k2d = torch.outer(k, k)
        k2d = k2d / k2d.sum()
        if mode == "up":
            k2d = k2d * 4.0
        # Non-persistent: follows .to()/.cuda() but is not part of the state_dict.
        self.register_buffer("kernel", k2d[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H / 2, W / 2) for 'down' or (B, C, 2H, 2W) for 'up'."""
        channels = x.shape[1]
        weight = self.kernel.to(dtype=x.dtype).expand(channels, 1, 4, 4)
        if self.mode == "down":
            return F.conv2d(x, weight, stride=2, padding=1, groups=channels)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class GaussianFourierProjection(nn.Module):
    """Gaussian Fourier features of a scalar time: ``(B,) -> (B, 2 * embedding_size)``.

    Features are ``[sin(2 pi t W), cos(2 pi t W)]`` with fixed ``W ~ N(0, scale ** 2)`` stored as
    a persistent buffer ``W`` of shape ``(embedding_size,)``. Computed in float32.
    """

    def __init__(self, embedding_size: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(embedding_size) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) -> (B, 2 * embedding_size) float32."""
        proj = t.float()[:, None] * self.W.float()[None, :] * (2.0 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class TimeEmbedding(nn.Module):
    """Fourier projection -> Linear(2 nf, 4 nf) -> SiLU -> Linear(4 nf, 4 nf).

    Maps ``t: (B,)`` to the (not yet activated) embedding ``(B, 4 nf)``.
    """

    def __init__(self, nf: int, fourier_scale: float) -> None:
        super().__init__()
        self.fourier = GaussianFourierProjection(nf, fourier_scale)
        self.dense_0 = _linear(2 * nf, 4 * nf)
        self.dense_1 = _linear(4 * nf, 4 * nf)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) -> (B, 4 nf)."""
        emb = self.fourier(t).to(self.dense_0.weight.dtype)
        return self.dense_1(F.silu(self.dense_0(emb)))


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block of NCSN++ with optional FIR up/down sampling.

    ``(B, in_ch, H, W) -> (B, out_ch, H', W')`` with ``H' = 2H`` (up), ``H / 2`` (down) or ``H``.
    When ``temb_dim`` is ``None`` the block has no time projection (``temb_proj``) at all.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a residual block cannot both up- and down-sample")
        out_ch = in_ch if out_ch is None else out_ch
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.norm_0 = _group_norm(in_ch)
        self.resample: FIRResample | None = None
        if up:
            self.resample = FIRResample("up")
        elif down:
            self.resample = FIRResample("down")
        self.conv_0 = _conv(in_ch, out_ch, 3)
        self.temb_proj: nn.Linear | None = None
        if temb_dim is not None:
            self.temb_proj = _linear(temb_dim, out_ch)
        self.norm_1 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = _conv(out_ch, out_ch, 3, init_scale=0.0)
        self.skip: nn.Conv2d | None = None
        if in_ch != out_ch or up or down:
            self.skip = _conv(in_ch, out_ch, 1)

    def forward(self, x: Tensor, temb_act: Tensor | None = None) -> Tensor:
        """x: (B, in_ch, H, W); temb_act: (B, temb_dim) *activated* time embedding
        ``SiLU(temb)`` (required iff the block has ``temb_proj``). Returns (B, out_ch, H', W')."""
        h = F.silu(self.norm_0(x))
        if self.resample is not None:
            h = self.resample(h)
            x = self.resample(x)
        h = self.conv_0(h)
        if self.temb_proj is not None:
            if temb_act is None:
                raise ValueError("this residual block is time-conditional; temb_act is required")
            h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv_1(self.dropout(F.silu(self.norm_1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * _INV_SQRT2


class AttnBlock(nn.Module):
    """Single-head spatial self-attention of NCSN++ (``AttnBlockpp``, skip_rescale).

    ``(B, C, H, W) -> (B, C, H, W)``; q/k/v are 1x1 projections of ``GroupNorm(x)`` (fused into
    one conv, each third initialised with scale 0.1), softmax scale ``C ** -0.5``, zero-initialised
    1x1 output projection, output ``(x + proj(attn)) / sqrt(2)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        with torch.no_grad():
            for chunk in self.qkv.weight.chunk(3, dim=0):
                _variance_scaling_(chunk, 0.1)
        nn.init.zeros_(self.qkv.bias)
        self.proj_out = _conv(channels, channels, 1, init_scale=0.0)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, height * width).transpose(-1, -2)
        q, k, v = qkv[:, 0:1], qkv[:, 1:2], qkv[:, 2:3]  # each (B, 1, HW, C): one head
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return (x + self.proj_out(out)) * _INV_SQRT2


class _DownLevel(nn.Module):
    """One encoder level: residual blocks (+ attention after each) and an optional down block."""

    def __init__(
        self,
        blocks: list[ResnetBlockBigGAN],
        attns: list[AttnBlock],
        downsample: ResnetBlockBigGAN | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)  # empty, or one per block
        self.downsample = downsample


class _MidBlock(nn.Module):
    """Lowest-resolution section: ResBlock -> Attention -> ResBlock, ``(B, C, h, w)`` preserved."""

    def __init__(self, channels: int, temb_dim: int | None, dropout: float) -> None:
        super().__init__()
        self.block_0 = ResnetBlockBigGAN(channels, temb_dim=temb_dim, dropout=dropout)
        self.attn = AttnBlock(channels)
        self.block_1 = ResnetBlockBigGAN(channels, temb_dim=temb_dim, dropout=dropout)

    def forward(self, h: Tensor, temb_act: Tensor | None) -> Tensor:
        """h: (B, C, h, w) -> (B, C, h, w)."""
        return self.block_1(self.attn(self.block_0(h, temb_act)), temb_act)


class _UpLevel(nn.Module):
    """One decoder level: skip-consuming residual blocks, optional attention, optional up block."""

    def __init__(
        self,
        blocks: list[ResnetBlockBigGAN],
        attn: AttnBlock | None,
        upsample: ResnetBlockBigGAN | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.upsample = upsample


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _validate(
    in_channels: int, out_channels: int, image_size: int, config: UNetConfig
) -> list[int]:
    """Check arguments and return the resolution (side length) of each level."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError(
            f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}"
        )
    if len(config.ch_mult) == 0 or any(int(m) < 1 for m in config.ch_mult):
        raise ValueError(
            f"ch_mult must be a non-empty tuple of positive ints, got {config.ch_mult}"
        )
    if config.nf < 4:
        raise ValueError(f"nf must be >= 4 (GroupNorm uses nf // 4 groups), got {config.nf}")
    if config.num_res_blocks < 0:
        raise ValueError(f"num_res_blocks must be >= 0, got {config.num_res_blocks}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if config.fourier_scale <= 0:
        raise ValueError(f"fourier_scale must be > 0, got {config.fourier_scale}")
    num_levels = len(config.ch_mult)
    factor = 2 ** (num_levels - 1)
    if image_size < 1 or image_size % factor != 0:
        raise ValueError(
            f"image_size={image_size} must be a positive multiple of 2**(len(ch_mult) - 1) = "
            f"{factor} for ch_mult={config.ch_mult} ({num_levels} levels, {num_levels - 1} "
            "halvings)"
        )
    resolutions = [image_size // 2**i for i in range(num_levels)]
    missing = sorted(set(config.attn_resolutions) - set(resolutions))
    if missing:
        raise ValueError(
            f"attn_resolutions {missing} never occur: with image_size={image_size} and "
            f"ch_mult={config.ch_mult} the level resolutions are {resolutions}"
        )
    return resolutions


class NCSNppUNet(nn.Module):
    """NCSN++-style U-Net (see the module docstring for what is and is not NCSN++).

    Args:
        in_channels: Channels of the input image ``x``.
        out_channels: Channels of the output.
        image_size: Side length ``H == W`` of the (square) inputs; must be divisible by
            ``2 ** (len(config.ch_mult) - 1)``.
        config: Architecture hyperparameters.
        conditional: If ``True``, the network is conditioned on a time ``t`` in ``[0, 1]``
            through a Gaussian Fourier embedding; if ``False`` (regression variant) there are no
            time modules at all and ``t`` is ignored.

    Shapes:
        ``forward(x: (B, in_channels, H, W), t: (B,)) -> (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        config: UNetConfig,
        conditional: bool = True,
    ) -> None:
        super().__init__()
        resolutions = _validate(in_channels, out_channels, image_size, config)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.config = config
        self.conditional = conditional

        nf = config.nf
        dropout = config.dropout
        attn_res = set(config.attn_resolutions)
        num_levels = len(config.ch_mult)

        temb_dim: int | None = None
        self.time_embed: TimeEmbedding | None = None
        if conditional:
            temb_dim = 4 * nf
            self.time_embed = TimeEmbedding(nf, config.fourier_scale)

        def res_block(
            in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False
        ) -> ResnetBlockBigGAN:
            return ResnetBlockBigGAN(
                in_ch, out_ch, temb_dim=temb_dim, up=up, down=down, dropout=dropout
            )

        self.conv_in = _conv(in_channels, nf, 3)

        # Encoder. `skip_channels` mirrors `hs_c` of ncsnpp.py.
        skip_channels = [nf]
        in_ch = nf
        down_levels = []
        for level in range(num_levels):
            out_ch = nf * config.ch_mult[level]
            blocks, attns = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(res_block(in_ch, out_ch))
                in_ch = out_ch
                if resolutions[level] in attn_res:
                    attns.append(AttnBlock(in_ch))
                skip_channels.append(in_ch)
            downsample = None
            if level != num_levels - 1:
                downsample = res_block(in_ch, down=True)
                skip_channels.append(in_ch)
            down_levels.append(_DownLevel(blocks, attns, downsample))
        self.down = nn.ModuleList(down_levels)

        self.mid = _MidBlock(in_ch, temb_dim, dropout)

        # Decoder, stored in execution order (lowest resolution first).
        up_levels = []
        for level in reversed(range(num_levels)):
            out_ch = nf * config.ch_mult[level]
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(res_block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            attn = AttnBlock(in_ch) if resolutions[level] in attn_res else None
            upsample = res_block(in_ch, up=True) if level != 0 else None
            up_levels.append(_UpLevel(blocks, attn, upsample))
        self.up = nn.ModuleList(up_levels)
        assert not skip_channels, "internal error: unconsumed skip connections"

        self.norm_out = _group_norm(in_ch)
        self.conv_out = _conv(in_ch, out_channels, 3, init_scale=0.0)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Apply the network.

        Args:
            x: (B, in_channels, H, W) with ``H == W == image_size``.
            t: (B,) times in ``[0, 1]`` (a 0-d tensor or Python float is broadcast to the
                batch). Required when ``conditional``; ignored otherwise.

        Returns:
            (B, out_channels, H, W).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2] != self.image_size or x.shape[-1] != self.image_size:
            raise ValueError(
                f"expected spatial size {self.image_size}x{self.image_size}, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )

        temb_act: Tensor | None = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("conditional NCSNppUNet requires t of shape (B,)")
            t = torch.as_tensor(t, device=x.device)
            if t.ndim == 0:
                t = t.expand(x.shape[0])
            if t.shape != (x.shape[0],):
                raise ValueError(f"expected t of shape ({x.shape[0]},), got {tuple(t.shape)}")
            temb_act = F.silu(self.time_embed(t))  # (B, 4 nf)

        h = self.conv_in(x)  # (B, nf, H, W)
        hs = [h]
        for level in self.down:
            for i, block in enumerate(level.blocks):
                h = block(h, temb_act)
                if len(level.attns) > 0:
                    h = level.attns[i](h)
                hs.append(h)
            if level.downsample is not None:
                h = level.downsample(h, temb_act)
                hs.append(h)

        h = self.mid(h, temb_act)

        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb_act)
            if level.attn is not None:
                h = level.attn(h)
            if level.upsample is not None:
                h = level.upsample(h, temb_act)

        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(module: nn.Module) -> int:
    """Total number of elements of ``module.parameters()`` (buffers such as the fixed Fourier
    frequencies are not counted)."""
    return sum(p.numel() for p in module.parameters())
