"""Signal-level losses shared by the methods.

All losses take ``(B, N, *D)`` references and estimates and return per-signal values ``(B, N)``
so that assignment searches (PIT, MixIT) can combine them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LOSSES", "negative_thresholded_snr", "signal_loss", "squared_error"]


def squared_error(references: Tensor, estimates: Tensor) -> Tensor:
    """Per-signal mean squared error (SURF Appendix D.4: "we train with a squared error").

    Args:
        references: ``(B, N, *D)``.
        estimates: ``(B, N, *D)``.

    Returns:
        ``(B, N)`` mean over ``D`` of ``(reference - estimate)^2``.
    """
    return (references - estimates).pow(2).flatten(2).mean(-1)


def negative_thresholded_snr(
    references: Tensor, estimates: Tensor, snr_max_db: float = 30.0, eps: float = 1e-8
) -> Tensor:
    """Negative thresholded SNR, sparse/efficient MixIT (Wisdom et al. 2021) eq. (2).

    ``L(y, y_hat) = -10 log10( ||y||^2 / (||y - y_hat||^2 + tau ||y||^2) )`` with
    ``tau = 10^(-SNR_max / 10)``, which clamps the loss at ``-SNR_max`` dB.

    Args:
        references: ``(B, N, *D)`` reference signals ``y``.
        estimates: ``(B, N, *D)`` estimates ``y_hat``.
        snr_max_db: the soft threshold ``SNR_max`` in dB (paper: 30 dB).
        eps: added inside the logarithm's argument for all-zero references (dimensionless).

    Returns:
        ``(B, N)`` losses in dB (lower is better; bounded below by ``-snr_max_db``).
    """
    tau = 10.0 ** (-snr_max_db / 10.0)
    ref_energy = references.pow(2).flatten(2).sum(-1)
    err_energy = (references - estimates).pow(2).flatten(2).sum(-1)
    ratio = (ref_energy + eps) / (err_energy + tau * ref_energy + eps)
    return -10.0 * torch.log10(ratio)


LOSSES = {"mse": squared_error, "snr": negative_thresholded_snr}


def signal_loss(name: str, snr_max_db: float = 30.0):
    """Look up a per-signal loss by name.

    Args:
        name: ``"mse"`` (squared error) or ``"snr"`` (negative thresholded SNR, eq. 2).
        snr_max_db: threshold for ``"snr"`` in dB.

    Returns:
        A callable ``(references, estimates) -> (B, N)``.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name == "mse":
        return squared_error
    if name == "snr":
        if not math.isfinite(snr_max_db):
            raise ValueError("snr_max_db must be finite")
        return lambda r, e: negative_thresholded_snr(r, e, snr_max_db=snr_max_db)
    raise ValueError(f"unknown loss {name!r}; valid losses: {sorted(LOSSES)}")
