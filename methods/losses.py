"""Signal-level losses shared by the methods.

The signal losses take ``(B, N, *D)`` estimates and references, **in this order** (the
project's convention, :mod:`methods.pit`), and return per-signal values ``(B, N)`` so that
assignment searches (PIT, MixIT) can combine them; :func:`pairwise_log_mse` gives the
``(B, K, K)`` cost matrix ``[estimate, reference]`` for :func:`methods.pit.best_permutation`.

:func:`squared_error` and :func:`negative_thresholded_snr` (and the losses :func:`signal_loss`
returns) depend on the signals only through ``||x_hat||^2``, ``<x_hat, x>``, ``||x||^2`` and the
number of elements ``T``: each carries that form as ``loss.from_energies(est_energy, cross,
ref_energy, numel)``, with which exhaustive MixIT searches all assignments from Gram matrices
(:func:`methods.mixit_assignment.exhaustive_assignment`). The MixIT regularisers of
sparse/efficient MixIT §2.3-2.4 (source sparsity, eq. 4-6; covariance, eq. 7) take the
``(B, M, *D)`` separated sources and return one value per mixture ``(B,)``. Throughout, a
source's "time" axis ``t = 1..T`` is all of its elements (``T = prod(D)``, e.g. C x H x W
pixels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from methods.pit import pairwise_losses

__all__ = [
    "LOSSES",
    "SPARSITY_LOSSES",
    "SignalLoss",
    "covariance_loss",
    "log_mse",
    "negative_thresholded_snr",
    "pairwise_log_mse",
    "signal_loss",
    "source_rms",
    "sparsity_l1",
    "sparsity_l1_l2",
    "sparsity_loss",
    "squared_error",
]


def squared_error(estimates: Tensor, references: Tensor) -> Tensor:
    """Per-signal mean squared error (SURF Appendix D.4: "we train with a squared error").

    Args:
        estimates: ``(B, N, *D)``.
        references: ``(B, N, *D)``.

    Returns:
        ``(B, N)`` mean over ``D`` of ``(reference - estimate)^2``.
    """
    return (references - estimates).pow(2).flatten(2).mean(-1)


def _error_energy(est_energy: Tensor, cross: Tensor, ref_energy: Tensor) -> Tensor:
    """``||x - x_hat||^2 = ||x||^2 + ||x_hat||^2 - 2 <x_hat, x>`` (clamped at 0 against
    cancellation)."""
    return (ref_energy + est_energy - 2.0 * cross).clamp_min(0.0)


def _squared_error_from_energies(
    est_energy: Tensor, cross: Tensor, ref_energy: Tensor, numel: int
) -> Tensor:
    """:func:`squared_error` from ``||x_hat||^2``, ``<x_hat, x>``, ``||x||^2`` and ``T``."""
    return _error_energy(est_energy, cross, ref_energy) / numel


squared_error.from_energies = _squared_error_from_energies  # type: ignore[attr-defined]


def negative_thresholded_snr(
    estimates: Tensor, references: Tensor, snr_max_db: float = 30.0, eps: float = 1e-8
) -> Tensor:
    """Negative thresholded SNR, sparse/efficient MixIT (Wisdom et al. 2021) eq. (2).

    ``L(y, y_hat) = -10 log10( ||y||^2 / (||y - y_hat||^2 + tau ||y||^2) )`` with
    ``tau = 10^(-SNR_max / 10)``, which clamps the loss at ``-SNR_max`` dB.

    Args:
        estimates: ``(B, N, *D)`` estimates ``y_hat``.
        references: ``(B, N, *D)`` reference signals ``y``.
        snr_max_db: the soft threshold ``SNR_max`` in dB (paper: 30 dB).
        eps: added inside the logarithm's argument for all-zero references (dimensionless).

    Returns:
        ``(B, N)`` losses in dB (lower is better; bounded below by ``-snr_max_db``).
    """
    tau = 10.0 ** (-snr_max_db / 10.0)
    ref_energy = references.pow(2).flatten(2).sum(-1)
    err_energy = (references - estimates).pow(2).flatten(2).sum(-1)
    return _thresholded_snr_loss(err_energy, ref_energy, tau, eps)


def _thresholded_snr_loss(err_energy: Tensor, ref_energy: Tensor, tau: float, eps: float) -> Tensor:
    ratio = (ref_energy + eps) / (err_energy + tau * ref_energy + eps)
    return -10.0 * torch.log10(ratio)


def _negative_thresholded_snr_from_energies(
    est_energy: Tensor,
    cross: Tensor,
    ref_energy: Tensor,
    numel: int,
    snr_max_db: float = 30.0,
    eps: float = 1e-8,
) -> Tensor:
    """:func:`negative_thresholded_snr` from ``||x_hat||^2``, ``<x_hat, x>``, ``||x||^2``."""
    del numel  # a ratio of sums: independent of T
    tau = 10.0 ** (-snr_max_db / 10.0)
    err_energy = _error_energy(est_energy, cross, ref_energy)
    return _thresholded_snr_loss(err_energy, ref_energy, tau, eps)


negative_thresholded_snr.from_energies = (  # type: ignore[attr-defined]
    _negative_thresholded_snr_from_energies
)


def log_mse(
    estimates: Tensor, references: Tensor, snr_max_db: float = 30.0, eps: float = 1e-8
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
        estimates: ``(B, N, *D)`` estimates ``x_hat``.
        references: ``(B, N, *D)`` reference sources ``x``.
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
    estimates: Tensor, references: Tensor, snr_max_db: float = 30.0, eps: float = 1e-8
) -> Tensor:
    """:func:`log_mse` of every estimate against every reference, the cost matrix of the PIT
    loss (SURF eq. 3) for :func:`methods.pit.best_permutation`.

    Args:
        estimates: ``(B, K, *D)``.
        references: ``(B, K, *D)``.
        snr_max_db: ``SNR_max`` in dB (see :func:`log_mse`).
        eps: see :func:`log_mse`.

    Returns:
        ``(B, K, K)`` with ``cost[b, i, j] = l(estimates[b, i], references[b, j])`` (row:
        estimate, column: reference, the project's convention).
    """
    return pairwise_losses(estimates, references, lambda e, r: log_mse(e, r, snr_max_db, eps))


@dataclass(frozen=True)
class SignalLoss:
    """A named per-signal loss with its energy form (what :func:`signal_loss` returns).

    Calling it is calling ``fn(estimates, references)``; :meth:`from_energies` gives the same
    values from ``||x_hat||^2``, ``<x_hat, x>``, ``||x||^2`` (each ``(...)``, any matching
    shape) and the number of elements ``T``, in the dtype of those inputs.

    Attributes:
        name: ``"mse"`` or ``"snr"``.
        snr_max_db: the threshold of ``"snr"`` in dB.
    """

    name: str
    snr_max_db: float = 30.0

    def __call__(self, estimates: Tensor, references: Tensor) -> Tensor:
        if self.name == "mse":
            return squared_error(estimates, references)
        return negative_thresholded_snr(estimates, references, snr_max_db=self.snr_max_db)

    def from_energies(
        self, est_energy: Tensor, cross: Tensor, ref_energy: Tensor, numel: int
    ) -> Tensor:
        if self.name == "mse":
            return _squared_error_from_energies(est_energy, cross, ref_energy, numel)
        return _negative_thresholded_snr_from_energies(
            est_energy, cross, ref_energy, numel, snr_max_db=self.snr_max_db
        )


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": squared_error,
    "snr": negative_thresholded_snr,
}


def signal_loss(name: str, snr_max_db: float = 30.0) -> SignalLoss:
    """Look up a per-signal loss by name.

    Args:
        name: ``"mse"`` (squared error) or ``"snr"`` (negative thresholded SNR, eq. 2).
        snr_max_db: threshold for ``"snr"`` in dB.

    Returns:
        A :class:`SignalLoss`: ``loss(estimates, references) -> (B, N)``, with its energy form.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name == "mse":
        return SignalLoss("mse")
    if name == "snr":
        if not math.isfinite(snr_max_db):
            raise ValueError("snr_max_db must be finite")
        return SignalLoss("snr", float(snr_max_db))
    raise ValueError(f"unknown loss {name!r}; valid losses: {sorted(LOSSES)}")


# --------------------------------------------------------------------------------------------
# MixIT regularisers (sparse/efficient MixIT, Wisdom et al. 2021, §2.3-2.4)
# --------------------------------------------------------------------------------------------

RMS_EPS = 1e-12  # added to the mean square inside every square root (squared data units)


def source_rms(signals: Tensor, eps: float = RMS_EPS) -> Tensor:
    """RMS level per signal, sparse/efficient MixIT eq. (4).

    ``r_m = rms(s_hat_m) = sqrt((1/T) sum_t |s_hat_{m,t}|^2 + eps)``, ``T`` the number of
    elements of a signal. ``eps`` (1e-12, i.e. an RMS floor of 1e-6 in data units) keeps the
    gradient of an all-zero output finite (the bare square root has an infinite slope at 0);
    it changes the RMS of a non-zero signal by at most ``eps / (2 r)``.

    Args:
        signals: ``(B, M, *D)`` signals (``x[:, None]`` for one signal per item).
        eps: stabiliser inside the square root.

    Returns:
        ``(B, M)`` RMS levels.
    """
    return (signals.flatten(2).pow(2).mean(-1) + eps).sqrt()


def sparsity_l1(estimates: Tensor, mixture: Tensor | None = None) -> Tensor:
    """ℓ1 source-sparsity loss, sparse/efficient MixIT eq. (5).

    ``C_l1(r) = (1/M) ||r||_1 / rms(x_bar)`` with ``r_m = rms(s_hat_m)`` (eq. 4),
    ``||r||_1 = sum_m r_m`` and ``x_bar`` the mixture of mixtures fed to the separator. The
    denominator and ``1/M`` normalise the scale across examples and numbers of outputs. Both
    RMS levels carry the ``eps`` of :func:`source_rms`, so an all-zero mixture gives a
    denominator of 1e-6, not 0.

    Args:
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        mixture: ``(B, *D)`` the separator's input ``x_bar``; if None, ``sum_m s_hat_m`` is used
            (equal to ``x_bar`` for a mixture-consistent separator).

    Returns:
        ``(B,)`` losses (dimensionless).
    """
    if mixture is None:
        mixture = estimates.sum(dim=1)
    num_outputs = estimates.shape[1]
    r = source_rms(estimates)  # (B, M), eq. (4)
    mix_rms = source_rms(mixture[:, None])[:, 0]  # (B,), rms(x_bar)
    return r.sum(-1) / num_outputs / mix_rms


def sparsity_l1_l2(estimates: Tensor) -> Tensor:
    """ℓ1/ℓ2 source-sparsity loss, sparse/efficient MixIT eq. (6).

    ``C_l1/l2(r) = (1/M) ||r||_1 / ||r||_2`` with ``r_m = rms(s_hat_m)`` (eq. 4),
    ``||r||_1 = sum_m r_m`` and ``||r||_2 = sqrt(sum_m r_m^2)``. Scale-invariant; lies in
    ``[1/M, 1/sqrt(M)]`` (1/M when one output holds everything, 1/sqrt(M) when all outputs have
    equal level). The ``eps`` inside each ``r_m`` (:func:`source_rms`) keeps ``||r||_2 > 0``, so
    all-zero outputs give ``1/sqrt(M)`` instead of 0/0.

    Args:
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.

    Returns:
        ``(B,)`` losses (dimensionless).
    """
    num_outputs = estimates.shape[1]
    r = source_rms(estimates)  # (B, M), eq. (4)
    return r.sum(-1) / r.pow(2).sum(-1).sqrt() / num_outputs


def covariance_loss(estimates: Tensor) -> Tensor:
    """Covariance loss, sparse/efficient MixIT eq. (7).

    ``C_cov(s_hat) = sum_{m != m'} |cov(s_hat_m, s_hat_m')|`` over ordered pairs (each
    unordered pair counted twice, as the sum is written), with the covariance over the ``T``
    elements of a signal, ``cov(a, b) = (1/T) sum_t (a_t - mean(a)) (b_t - mean(b))`` (the paper
    does not give the normaliser; 1/T matches the mean in eq. 4). In squared data units; needs
    no stabiliser.

    Args:
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.

    Returns:
        ``(B,)`` losses.
    """
    flat = estimates.flatten(2)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    cov = centred @ centred.transpose(1, 2) / flat.shape[-1]  # (B, M, M), cov(s_m, s_m')
    num_outputs = flat.shape[1]
    off_diagonal = ~torch.eye(num_outputs, dtype=torch.bool, device=flat.device)  # m != m'
    return (cov.abs() * off_diagonal).sum(dim=(1, 2))


SPARSITY_LOSSES = ("none", "l1", "l1_l2")


def sparsity_loss(name: str, estimates: Tensor, mixture: Tensor | None = None) -> Tensor:
    """Sparsity loss by name: ``"l1"`` eq. (5), ``"l1_l2"`` eq. (6), ``"none"`` zeros.

    Returns:
        ``(B,)`` losses.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name == "l1":
        return sparsity_l1(estimates, mixture)
    if name == "l1_l2":
        return sparsity_l1_l2(estimates)
    if name == "none":
        return estimates.new_zeros(estimates.shape[0])
    raise ValueError(f"unknown sparsity loss {name!r}; valid: {list(SPARSITY_LOSSES)}")
