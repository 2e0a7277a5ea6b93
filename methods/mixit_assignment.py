"""MixIT assignment (Wisdom et al. 2020; sparse/efficient MixIT 2021, eq. 1) and the M -> K
reduction used when a MixIT model is scored or used as a teacher.

MixIT trains an M-output separator on a mixture of mixtures ``x_bar = sum_n x_n`` and picks the
binary mixing matrix ``A in B^{N x M}`` (each column one-hot: every output goes to exactly one
reference mixture) that minimises ``sum_n L(x_n, [A s_hat]_n)``. The search here is exhaustive
over all ``N^M`` matrices (16 for N = 2, M = 4), vectorised over the batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["mixit_assignments", "mixit_loss", "reduce_to_k"]


@lru_cache(maxsize=16)
def _assignment_table(num_refs: int, num_outputs: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.product(range(num_refs), repeat=num_outputs))


def mixit_assignments(
    num_refs: int, num_outputs: int, device: torch.device | str | None = None
) -> Tensor:
    """Every binary mixing matrix of sparse-MixIT eq. (1).

    Args:
        num_refs: N, reference mixtures.
        num_outputs: M, separator outputs.
        device: device of the result.

    Returns:
        Float tensor ``(N^M, N, M)`` of 0/1 entries; each column has exactly one 1.

    Raises:
        ValueError: if ``N^M`` exceeds 65,536 (use the efficient assignment instead).
    """
    if num_refs < 1 or num_outputs < 1:
        raise ValueError(f"need N >= 1 and M >= 1, got N={num_refs}, M={num_outputs}")
    if num_refs**num_outputs > 65536:
        raise ValueError(f"N^M = {num_refs}^{num_outputs} is too many matrices to enumerate")
    table = torch.tensor(_assignment_table(num_refs, num_outputs), device=device)  # (A, M)
    return torch.nn.functional.one_hot(table, num_refs).transpose(1, 2).float()


def mixit_loss(
    references: Tensor,
    estimates: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """MixIT loss with exhaustive assignment search (sparse/efficient MixIT eq. 1).

    Args:
        references: ``(B, N, *D)`` reference mixtures ``x_n`` (their sum is the model input).
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        loss_fn: per-signal loss ``(refs (B, N, *D), est (B, N, *D)) -> (B, N)``, e.g.
            :func:`methods.losses.squared_error` or the thresholded SNR of eq. (2).

    Returns:
        ``(loss, A)``: ``loss`` ``(B,)`` is ``min_A sum_n L(x_n, [A s_hat]_n)`` (differentiable
        with respect to ``estimates``); ``A`` ``(B, N, M)`` the minimising matrices.
    """
    batch, num_refs = references.shape[:2]
    num_outputs = estimates.shape[1]
    mats = mixit_assignments(num_refs, num_outputs, estimates.device).to(estimates.dtype)
    num_mats = mats.shape[0]
    # remixed[b, a, n] = sum_m mats[a, n, m] * estimates[b, m]
    remixed = torch.einsum("anm,bmd->band", mats, estimates.flatten(2))
    refs = references.flatten(2)[:, None].expand(batch, num_mats, num_refs, -1)
    per_signal = loss_fn(
        refs.reshape(batch * num_mats, num_refs, -1),
        remixed.reshape(batch * num_mats, num_refs, -1),
    ).reshape(batch, num_mats, num_refs)
    totals = per_signal.sum(-1)
    best = totals.argmin(dim=1)
    loss = totals.gather(1, best[:, None]).squeeze(1)
    return loss, mats[best]


@torch.no_grad()
def _groups_for_reduction(estimates: Tensor, num_sources: int) -> Tensor:
    """Group index in ``range(K)`` for every output, ``(B, M)`` long."""
    batch, num_outputs = estimates.shape[:2]
    flat = estimates.flatten(2)
    energy = flat.pow(2).sum(-1)  # (B, M)
    kept = energy.argsort(dim=1, descending=True)[:, :num_sources]  # (B, K)
    kept_sig = flat.gather(1, kept[:, :, None].expand(-1, -1, flat.shape[-1]))  # (B, K, d)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kept_unit = kept_sig / kept_sig.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = torch.einsum("bmd,bkd->bmk", unit, kept_unit)  # (B, M, K)
    groups = cosine.argmax(dim=-1)
    # Kept outputs always form their own group, whatever the cosine says (an exact tie or a
    # zero output must not empty a group).
    groups.scatter_(1, kept, torch.arange(num_sources, device=flat.device).expand(batch, -1))
    return groups


def reduce_to_k(estimates: Tensor, num_sources: int) -> Tensor:
    """Reduce M MixIT outputs to K source estimates, keeping mixture consistency.

    The rule, which needs no reference and so serves both for scoring and as a teacher:
    the K outputs of largest energy each seed one estimate; every other output is added to the
    seed with which it has the largest cosine similarity. Every output lands in exactly one
    group, so ``sum_k reduced_k = sum_m estimates_m`` (the mixture, when the separator is
    mixture-consistent). Grouping is chosen without gradient; the sums are differentiable.

    Args:
        estimates: ``(B, M, *D)`` separator outputs.
        num_sources: K <= M.

    Returns:
        ``(B, K, *D)`` estimates, ordered by decreasing energy of their seed output.

    Raises:
        ValueError: if ``K > M``.
    """
    num_outputs = estimates.shape[1]
    if num_sources > num_outputs:
        raise ValueError(f"cannot reduce M={num_outputs} outputs to K={num_sources} sources")
    if num_sources == num_outputs:
        return estimates
    groups = _groups_for_reduction(estimates, num_sources)  # (B, M)
    onehot = torch.nn.functional.one_hot(groups, num_sources).to(estimates.dtype)  # (B, M, K)
    reduced = torch.einsum("bmk,bmd->bkd", onehot, estimates.flatten(2))
    return reduced.reshape(estimates.shape[0], num_sources, *estimates.shape[2:])
