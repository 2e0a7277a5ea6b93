"""Permutation invariant training (PIT) and the project's one best-permutation search.

PIT (SURF eq. 3; Isik et al. 2016, Kolbaek et al. 2017) wraps any loss that decomposes over
sources: ``L(x, x_hat) = min_{sigma in S_K} sum_k l(x_hat^(k), x^(sigma(k)))``.

**Convention, for the whole project** (this module, :mod:`methods.losses`,
:mod:`methods.mixit_assignment` and the metrics of ``tasks/``): functions that compare estimates
with references take ``(estimates, references)`` in this order (as asteroid's
``PITLossWrapper(est_targets, targets)``), a pairwise matrix is indexed ``[estimate, reference]``,
and a permutation is a long tensor ``perm`` of shape ``(B, K)`` meaning **estimate k is paired
with reference perm[k]**. The aligned references are then ``apply_permutation(references,
perm)`` (row k is ``references[perm[k]]``, the papers' ``sigma x``); functions return
``(value, perm)``.

:func:`best_permutation` is the only search: PIT (:func:`pit_permutation`, :func:`pit_loss`, the
supervised loss), the image metrics, the audio metrics and the FUSS alignment all call it. It is
exhaustive over the ``K!`` permutations up to K = 8, fully vectorized over the batch (ties: the
first permutation in lexicographic order, the identity first), and the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) above.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EXHAUSTIVE_MAX_SOURCES",
    "all_permutations",
    "apply_permutation",
    "best_permutation",
    "invert_permutation",
    "pairwise_losses",
    "pairwise_squared_error",
    "pit_loss",
    "pit_permutation",
]

#: largest K searched exhaustively (8! = 40,320 permutations); the Hungarian algorithm above
EXHAUSTIVE_MAX_SOURCES = 8


@lru_cache(maxsize=32)
def _permutation_table(num_sources: int, device: str) -> Tensor:
    # a normal tensor even when first asked for under torch.inference_mode (it is cached and
    # later indexed in autograd-tracked code)
    with torch.inference_mode(False):
        table = torch.tensor(list(itertools.permutations(range(num_sources))), dtype=torch.long)
        return table.to(device)


def all_permutations(num_sources: int, device: torch.device | str | None = None) -> Tensor:
    """All permutations of ``range(K)`` in lexicographic order.

    Args:
        num_sources: K >= 1.
        device: device of the returned tensor.

    Returns:
        Long tensor of shape ``(K!, K)``; row 0 is the identity. The tensor is cached per
        (K, device) and shared: do not modify it in place.

    Raises:
        ValueError: if ``num_sources < 1`` or ``num_sources > 8`` (K! would be impractical).
    """
    if not 1 <= num_sources <= EXHAUSTIVE_MAX_SOURCES:
        raise ValueError(f"PIT needs 1 <= K <= 8 sources, got K={num_sources}")
    return _permutation_table(num_sources, str(torch.device(device or "cpu")))


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


def best_permutation(pairwise: Tensor, maximize: bool = False) -> tuple[Tensor, Tensor]:
    """The best permutation of a pairwise cost (or score) matrix: the one search of the project.

    Minimises (or maximises) ``sum_k pairwise[b, k, perm[b, k]]`` over ``perm in S_K`` (SURF
    eq. 3). Up to K = :data:`EXHAUSTIVE_MAX_SOURCES` every permutation is tried, in
    lexicographic order, the totals summed over ``k`` in order (for K <= 4 this is bit for bit
    NumPy's ``sum``), and the first best one wins (the identity on ties). Above, the Hungarian
    algorithm (``scipy.optimize.linear_sum_assignment``, float64, per batch item) finds an
    optimal permutation. A total that is NaN (only from NaN entries, or ``inf - inf``) is never
    preferred to a number; if every total is NaN the identity is returned.

    Args:
        pairwise: ``(B, K, K)`` with ``pairwise[b, i, j]`` the cost (score) of pairing row ``i``
            with column ``j``; in the project's convention rows are estimates and columns
            references. Any float dtype and device; no gradient flows through the choice.
        maximize: maximise a score (PSNR, SI-SDR) instead of minimising a cost.

    Returns:
        ``(total, perm)``: ``total`` ``(B,)`` the optimum ``sum_k pairwise[b, k, perm[b, k]]``
        (in ``pairwise``'s dtype; differentiable if ``pairwise`` is), ``perm`` ``(B, K)`` long,
        row ``k`` paired with column ``perm[b, k]``.

    Raises:
        ValueError: ``pairwise`` is not a ``(B, K, K)`` tensor with K >= 1.
    """
    if pairwise.dim() != 3 or pairwise.shape[1] != pairwise.shape[2] or pairwise.shape[1] < 1:
        raise ValueError(
            f"best_permutation needs a (B, K, K) matrix with K >= 1, got {tuple(pairwise.shape)}"
        )
    num_sources = pairwise.shape[1]
    rows = torch.arange(num_sources, device=pairwise.device)
    if num_sources > EXHAUSTIVE_MAX_SOURCES:
        perm = _hungarian(pairwise.detach(), maximize)
        return pairwise.gather(2, perm[:, :, None]).squeeze(2).sum(-1), perm
    perms = all_permutations(num_sources, pairwise.device)  # (P, K)
    totals = pairwise[:, rows[None, :], perms].sum(-1)  # (B, P): sum_k pairwise[b, k, p[k]]
    worst = -torch.inf if maximize else torch.inf
    ranked = torch.where(torch.isnan(totals), worst, totals).detach()
    best = ranked.argmax(dim=1) if maximize else ranked.argmin(dim=1)  # first best
    return totals.gather(1, best[:, None]).squeeze(1), perms[best]


def _hungarian(pairwise: Tensor, maximize: bool) -> Tensor:
    """``linear_sum_assignment`` per batch item; non-finite entries are replaced by finite
    values worse (NaN, +inf for a cost) or better (-inf) than any achievable total."""
    from scipy.optimize import linear_sum_assignment

    cost = pairwise.to("cpu", torch.float64).numpy()
    finite = cost[np.isfinite(cost)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    margin = (high - low + 1.0) * (cost.shape[1] + 1)
    bad = low - margin if maximize else high + margin
    cost = np.where(np.isnan(cost), bad, cost)
    cost = np.clip(cost, low - margin, high + margin)
    perms = [linear_sum_assignment(item, maximize=maximize)[1] for item in cost]
    return torch.as_tensor(np.stack(perms), dtype=torch.long, device=pairwise.device)


@torch.no_grad()
def pit_permutation(estimates: Tensor, references: Tensor) -> Tensor:
    """PIT alignment under squared error, with stop-gradient (SURF eq. 3, 8, 22).

    Args:
        estimates: ``(B, K, *D)``.
        references: ``(B, K, *D)``.

    Returns:
        ``(B, K)`` long permutations ``perm`` minimising
        ``||estimates - apply_permutation(references, perm)||^2`` per batch item (estimate k
        paired with reference ``perm[k]``; ties: the identity first).
    """
    _, perm = best_permutation(pairwise_squared_error(estimates, references))
    return perm


def pairwise_losses(
    estimates: Tensor, references: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """A per-signal loss between every estimate and every reference.

    Args:
        estimates: ``(B, K, *D)``.
        references: ``(B, K, *D)``.
        loss_fn: per-signal loss ``(estimates (B, N, *D), references (B, N, *D)) -> (B, N)``.

    Returns:
        ``(B, K, K)`` with ``[b, i, j] = loss_fn(estimate i, reference j)``: each entry is
        computed on exactly the values (and with the same reductions) that ``loss_fn`` sees
        when the pair is aligned, so it equals that loss bit for bit.
    """
    batch, num = estimates.shape[:2]
    shape = (batch, num, num, *estimates.shape[2:])
    ests = estimates[:, :, None].expand(shape).reshape(batch, num * num, *shape[3:])  # [i, j] -> i
    refs = references[:, None].expand(shape).reshape(batch, num * num, *shape[3:])  # [i, j] -> j
    return loss_fn(ests, refs).reshape(batch, num, num)


def pit_loss(
    estimates: Tensor, references: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Utterance-level PIT (MixPIT eq. 1, SURF eq. 3): ``min_P sum_k L([P S_hat]_k, s_k)``.

    The ``K x K`` matrix of every estimate against every reference is computed once without
    gradient and searched by :func:`best_permutation` (not the K! full evaluations of the
    loss); the loss is then evaluated once, with gradient, on the chosen pairing.

    Args:
        estimates: ``(B, K, *D)`` estimates ``S_hat``.
        references: ``(B, K, *D)`` references ``s_k``.
        loss_fn: per-signal loss ``(estimates (B, K, *D), references (B, K, *D)) -> (B, K)``,
            e.g. the negative thresholded SNR of eq. (2).

    Returns:
        ``(loss, perm)``: ``loss`` ``(B,)`` the minimum ``sum_k loss_fn(estimate k, reference
        perm[k])`` (differentiable with respect to ``estimates``), ``perm`` ``(B, K)`` long
        (estimate k paired with reference ``perm[b, k]``; ties: the identity first).

    Raises:
        ValueError: different numbers of estimates and references.
    """
    if estimates.shape[:2] != references.shape[:2]:
        raise ValueError(
            f"PIT needs as many estimates as references, got {tuple(estimates.shape[:2])} "
            f"estimates for {tuple(references.shape[:2])} references"
        )
    with torch.no_grad():
        _, perm = best_permutation(pairwise_losses(estimates, references, loss_fn))
    loss = loss_fn(estimates, apply_permutation(references, perm)).sum(-1)
    return loss, perm
