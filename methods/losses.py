"""Signal-level losses shared by the methods.

All losses take ``(B, N, *D)`` references and estimates and return per-signal values ``(B, N)``
so that assignment searches (PIT, MixIT) can combine them; :func:`pairwise_log_mse` gives the
``(B, K, K)`` cost matrix of every estimate against every reference for
:func:`methods.pit.pit_from_pairwise`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LOSSES",
    "log_mse",
    "negative_thresholded_snr",
    "pairwise_log_mse",
    "signal_loss",
    "squared_error",
]


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


def log_mse(
    references: Tensor, estimates: Tensor, snr_max_db: float = 30.0, eps: float = 1e-8
) -> Tensor:
    """Thresholded log squared error, the per-source loss of the supervised regression
    reference (SURF §5.1: PIT loss (3) with ``l(x, x_hat) = 10 log10 ||x - x_hat||^2``).

    ``l(x, x_hat) = 10 log10( ||x - x_hat||^2 + tau ||x||^2 + eps )`` with
    ``tau = 10^(-SNR_max / 10)``; norms are sums over ``D``. The threshold keeps the loss
    bounded below (by ``10 log10(tau ||x||^2)``) once the estimate is ``SNR_max`` dB better than
    the reference's energy, so near-perfect sources stop dominating the gradient. It equals
    :func:`negative_thresholded_snr` plus ``10 log10 ||x||^2``, which does not depend on the
    estimate (up to ``eps``): same gradients, same PIT permutation. ``snr_max_db = inf`` gives
    ``tau = 0``, the literal §5.1 loss.

    Args:
        references: ``(B, N, *D)`` reference sources ``x``.
        estimates: ``(B, N, *D)`` estimates ``x_hat``.
        snr_max_db: ``SNR_max`` in dB (30 dB; ``inf`` for no threshold).
        eps: added inside the logarithm so that an exact estimate of an all-zero reference stays
            finite (in squared data units).

    Returns:
        ``(B, N)`` losses in dB (lower is better).
    """
    tau = 10.0 ** (-snr_max_db / 10.0)
    err_energy = (references - estimates).pow(2).flatten(2).sum(-1)
    ref_energy = references.pow(2).flatten(2).sum(-1)
    return 10.0 * torch.log10(err_energy + tau * ref_energy + eps)


def pairwise_log_mse(
    references: Tensor, estimates: Tensor, snr_max_db: float = 30.0, eps: float = 1e-8
) -> Tensor:
    """:func:`log_mse` of every estimate against every reference, the cost matrix of the PIT
    loss (SURF eq. 3) for :func:`methods.pit.pit_from_pairwise`.

    Args:
        references: ``(B, K, *D)``.
        estimates: ``(B, K, *D)``.
        snr_max_db: ``SNR_max`` in dB (see :func:`log_mse`).
        eps: see :func:`log_mse`.

    Returns:
        ``(B, K, K)`` with ``cost[b, i, j] = l(references[b, j], estimates[b, i])`` (row:
        estimate, column: reference, the convention of :func:`methods.pit.pit_from_pairwise`).
    """
    batch, num = estimates.shape[:2]
    shape = (batch, num, num, *estimates.shape[2:])
    refs = references[:, None].expand(shape).reshape(batch, num * num, *shape[3:])  # [i, j] -> j
    ests = estimates[:, :, None].expand(shape).reshape(batch, num * num, *shape[3:])  # -> i
    return log_mse(refs, ests, snr_max_db, eps).reshape(batch, num, num)


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
