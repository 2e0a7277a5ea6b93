"""Permutation invariant training (PIT) utilities.

PIT (SURF eq. 3; Isik et al. 2016, Kolbaek et al. 2017) wraps any loss that decomposes over
sources: ``L(x, x_hat) = min_{sigma in S_K} sum_k l(x_hat^(k), x^(sigma(k)))``. Here a permutation
is stored as a long tensor ``perm`` of shape ``(B, K)`` with the convention of the papers'
``sigma x`` (a matrix permuting the rows of ``x``): the aligned references are
``(sigma x)^(k) = x^(perm[k])``, computed by :func:`apply_permutation`.

The search is exhaustive over the ``K!`` permutations (K <= 6 is practical; the benchmark uses
K = 2 for images and K <= 4 for audio), fully vectorized over the batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "all_permutations",
    "apply_permutation",
    "invert_permutation",
    "pairwise_squared_error",
    "pit_from_pairwise",
    "pit_loss",
    "pit_permutation",
]


@lru_cache(maxsize=16)
def _permutation_table(num_sources: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.permutations(range(num_sources)))


def all_permutations(num_sources: int, device: torch.device | str | None = None) -> Tensor:
    """All permutations of ``range(K)`` in lexicographic order.

    Args:
        num_sources: K >= 1.
        device: device of the returned tensor.

    Returns:
        Long tensor of shape ``(K!, K)``; row 0 is the identity.

    Raises:
        ValueError: if ``num_sources < 1`` or ``num_sources > 8`` (K! would be impractical).
    """
    if not 1 <= num_sources <= 8:
        raise ValueError(f"PIT needs 1 <= K <= 8 sources, got K={num_sources}")
    return torch.tensor(_permutation_table(num_sources), dtype=torch.long, device=device)


def apply_permutation(x: Tensor, perm: Tensor) -> Tensor:
    """Permute the source axis of ``x`` per batch item: ``out[b, k] = x[b, perm[b, k]]``.

    This is ``sigma x`` of SURF eq. (3) and ``Upsilon X`` of eq. (20) for a block-diagonal
    ``Upsilon = blkdiag(sigma_1, ..., sigma_B)``.

    Args:
        x: ``(B, K, *D)`` sources, any trailing shape ``D``.
        perm: ``(B, K)`` long tensor, each row a permutation of ``range(K)``.

    Returns:
        ``(B, K, *D)`` tensor; differentiable with respect to ``x``.
    """
    if x.shape[:2] != perm.shape:
        raise ValueError(f"perm of shape {tuple(perm.shape)} does not match x {tuple(x.shape)}")
    index = perm.reshape(*perm.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def invert_permutation(perm: Tensor) -> Tensor:
    """Inverse permutations, so that ``apply_permutation(apply_permutation(x, p), inv(p)) == x``.

    Args:
        perm: ``(..., K)`` long tensor of permutations.

    Returns:
        ``(..., K)`` long tensor (``argsort`` along the last axis, as in SURF Code Listing 1).
    """
    return torch.argsort(perm, dim=-1)


def pairwise_squared_error(estimates: Tensor, references: Tensor) -> Tensor:
    """Squared-error cost between every estimate and every reference.

    Args:
        estimates: ``(B, K, *D)``.
        references: ``(B, K, *D)``.

    Returns:
        ``(B, K, K)`` tensor with ``cost[b, i, j] = ||estimates[b, i] - references[b, j]||^2``.
    """
    est = estimates.flatten(2)
    ref = references.flatten(2)
    # ||e||^2 + ||r||^2 - 2 <e, r> is cheaper than materialising all K^2 differences; the
    # clamp removes tiny negative values from cancellation.
    cross = torch.einsum("bid,bjd->bij", est, ref)
    cost = est.pow(2).sum(-1)[:, :, None] + ref.pow(2).sum(-1)[:, None, :] - 2 * cross
    return cost.clamp_min(0.0)


def pit_from_pairwise(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Best permutation given a pairwise cost matrix (exhaustive search over S_K).

    Args:
        cost: ``(B, K, K)``; ``cost[b, i, j]`` is the loss of pairing estimate ``i`` with
            reference ``j``.

    Returns:
        ``(perm, total)``: ``perm`` ``(B, K)`` long, the minimiser of
        ``sum_k cost[b, k, perm[b, k]]`` (SURF eq. 3), and ``total`` ``(B,)`` the minimum.
        Ties resolve to the lexicographically first permutation (identity first).
    """
    batch, num_sources, _ = cost.shape
    perms = all_permutations(num_sources, cost.device)  # (P, K)
    # gathered[b, p, k] = cost[b, k, perms[p, k]]
    gathered = cost[:, torch.arange(num_sources, device=cost.device)[None, :], perms]
    totals = gathered.sum(-1)  # (B, P)
    best = totals.argmin(dim=1)
    return perms[best], totals.gather(1, best[:, None]).squeeze(1)


@torch.no_grad()
def pit_permutation(estimates: Tensor, references: Tensor) -> Tensor:
    """PIT alignment under squared error, with stop-gradient (SURF eq. 3, 8, 22).

    Args:
        estimates: ``(B, K, *D)``.
        references: ``(B, K, *D)``.

    Returns:
        ``(B, K)`` long permutations ``perm`` minimising
        ``||estimates - apply_permutation(references, perm)||^2`` per batch item.
    """
    perm, _ = pit_from_pairwise(pairwise_squared_error(estimates, references))
    return perm


def pit_loss(
    references: Tensor, estimates: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Utterance-level PIT, eq. (1): ``min_P sum_r L(s_r, [P S_hat]_r)``, exhaustive over S_N.

    Args:
        references: ``(B, N, *D)`` references ``s_r``.
        estimates: ``(B, N, *D)`` estimates ``S_hat``.
        loss_fn: per-signal loss ``(refs (B, N, *D), est (B, N, *D)) -> (B, N)``, e.g. the
            negative thresholded SNR of eq. (2).

    Returns:
        ``(loss, perm)``: ``loss`` ``(B,)`` the minimum (differentiable with respect to
        ``estimates``), ``perm`` ``(B, N)`` the minimising permutation: reference ``r`` is
        matched with estimate ``perm[b, r]``. Ties resolve to the identity.
    """
    batch, num = references.shape[:2]
    if estimates.shape[:2] != (batch, num):
        raise ValueError(
            f"PIT needs as many estimates as references, got {tuple(estimates.shape[:2])} "
            f"estimates for {tuple(references.shape[:2])} references"
        )
    perms = all_permutations(num, references.device)  # (P, N)
    totals = torch.stack(
        [
            loss_fn(references, apply_permutation(estimates, p.expand(batch, num))).sum(-1)
            for p in perms
        ],
        dim=1,
    )  # (B, P)
    best = totals.argmin(dim=1)
    return totals.gather(1, best[:, None]).squeeze(1), perms[best]
