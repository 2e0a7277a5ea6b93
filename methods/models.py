"""Separator networks built on the NCSN++-style U-Net (SURF Appendix D.4).

- :class:`RegressionSeparator`: mixture in, M sources out, with the mixture-consistency
  projection of Wisdom et al. (2019). The U-Net's time conditioning is deactivated (SURF D.4:
  "the regression model has the time conditioning and noise inputs deactivated"). Used by MixIT
  and the regression remixing baselines.
- :class:`FlowVelocityNet`: ``(x_t, t, m)`` in, velocity out, with the output projection
  ``P_perp`` so that the velocity sums to zero over sources and every Euler iterate keeps
  ``sum_k x_t^(k) = m`` (FLOSS; SURF §2.2). Used by SURF (and supervised flow matching).

Input scaling: images live in [0, 1] (sum convention ``m = sum_k x^(k)``, see ``tasks.images``).
The networks see centred inputs, ``2 x - 1`` for source-scale tensors and ``2 m / K - 1`` for the
mixture; outputs are in data units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.flow import project_zero_sum
from methods.networks import NCSNppUNet, UNetConfig

__all__ = [
    "FlowVelocityNet",
    "RegressionSeparator",
    "mixture_consistency",
    "transfer_matching_weights",
]


def mixture_consistency(estimates: Tensor, mixture: Tensor) -> Tensor:
    """Unweighted mixture-consistency projection (Wisdom et al. 2019).

    ``s_j <- s_j + (m - sum_i s_i) / M``, so that the outputs sum exactly to the mixture.

    Args:
        estimates: ``(B, M, *D)``.
        mixture: ``(B, *D)``.

    Returns:
        ``(B, M, *D)`` with ``sum_j out_j = mixture``.
    """
    residual = mixture - estimates.sum(dim=1)
    return estimates + residual[:, None] / estimates.shape[1]


def _unet_config(cfg: UNetConfig) -> UNetConfig:
    """The U-Net size as the network takes it (tuples; the run config's ``net`` section)."""
    return UNetConfig(
        nf=cfg.nf,
        ch_mult=tuple(cfg.ch_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions),
        dropout=cfg.dropout,
        fourier_scale=cfg.fourier_scale,
    )


def _check_image(sample_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise ValueError(
            f"the U-Net separators take square (C, H, W) images, got sample shape {sample_shape}"
        )
    return sample_shape[0], sample_shape[1]


class RegressionSeparator(nn.Module):
    """Mixture ``(B, C, H, W)`` -> ``M`` mixture-consistent sources ``(B, M, C, H, W)``.

    Args:
        sample_shape: ``(C, H, W)`` of one source.
        num_outputs: M.
        num_sources: K of the task (only used to centre the mixture input, ``2 m / K - 1``).
        net: U-Net size.
    """

    def __init__(
        self, sample_shape: tuple[int, ...], num_outputs: int, num_sources: int, net: UNetConfig
    ) -> None:
        super().__init__()
        channels, size = _check_image(sample_shape)
        self.channels = channels
        self.num_outputs = num_outputs
        self.num_sources = num_sources
        self.unet = NCSNppUNet(
            channels, num_outputs * channels, size, _unet_config(net), conditional=False
        )

    def forward(self, mixture: Tensor) -> Tensor:
        """``(B, C, H, W)`` mixtures -> ``(B, M, C, H, W)`` sources summing to the mixture."""
        batch = mixture.shape[0]
        out = self.unet(2.0 * mixture / self.num_sources - 1.0)
        out = out.reshape(batch, self.num_outputs, *mixture.shape[1:])
        return mixture_consistency(out, mixture)


class FlowVelocityNet(nn.Module):
    """Conditional velocity field ``v_theta(x_t, t, m)`` with zero-sum output.

    The U-Net input stacks the K sources' channels and the mixture: ``(K + 1) C`` channels.

    Args:
        sample_shape: ``(C, H, W)``.
        num_sources: K.
        net: U-Net size.
    """

    def __init__(self, sample_shape: tuple[int, ...], num_sources: int, net: UNetConfig) -> None:
        super().__init__()
        channels, size = _check_image(sample_shape)
        self.num_sources = num_sources
        self.unet = NCSNppUNet(
            (num_sources + 1) * channels,
            num_sources * channels,
            size,
            _unet_config(net),
            conditional=True,
        )

    def forward(self, x_t: Tensor, t: Tensor, mixture: Tensor) -> Tensor:
        """Velocity at ``(x_t, t)`` given the mixture.

        Args:
            x_t: ``(B, K, C, H, W)``.
            t: ``(B,)`` in [0, 1].
            mixture: ``(B, C, H, W)``.

        Returns:
            ``(B, K, C, H, W)`` with ``sum_k v^(k) = 0`` (output projection ``P_perp``).
        """
        inp = torch.cat(
            [(2.0 * x_t - 1.0).flatten(1, 2), 2.0 * mixture / self.num_sources - 1.0], dim=1
        )
        out = self.unet(inp, t).reshape(x_t.shape)
        return project_zero_sum(out)


@torch.no_grad()
def transfer_matching_weights(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every tensor of ``source`` whose name and shape exist in ``target``.

    Used to start SURF's flow network from the trained MixIT regression network (SURF D.4:
    "the teacher model is then used to initialize the initial student and teacher models").
    The input/output convolutions and the time embedding differ and stay as initialised.

    Returns:
        The names copied.
    """
    src = source.state_dict()
    dst = target.state_dict()
    copied = [k for k, v in src.items() if k in dst and dst[k].shape == v.shape]
    target.load_state_dict({**dst, **{k: src[k] for k in copied}})
    return copied
