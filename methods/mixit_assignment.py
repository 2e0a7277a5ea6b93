"""MixIT assignment (Wisdom et al. 2020; sparse/efficient MixIT 2021, eq. 1) and the M -> K
reduction used when a MixIT model is scored or used as a teacher.

MixIT trains an M-output separator on a mixture of mixtures ``x_bar = sum_n x_n`` and picks the
binary mixing matrix ``A in B^{N x M}`` (each column one-hot: every output goes to exactly one
reference mixture) that minimises ``sum_n L(x_n, [A s_hat]_n)``. Two ways to find ``A``:

- ``"exhaustive"`` (eq. 1): search over all ``N^M`` matrices (16 for N = 2, M = 4), vectorised
  over the batch; exact, but infeasible for large M.
- ``"efficient"`` (eq. 3): least-squares real-valued mixing matrix, then the projection ``P_B``
  onto the nearest binary assignment (:func:`efficient_assignment`); cost linear in M.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "ASSIGNMENTS",
    "efficient_assignment",
    "mixit_assignments",
    "mixit_loss",
    "reduce_to_k",
]

ASSIGNMENTS = ("exhaustive", "efficient")


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


@torch.no_grad()
def efficient_assignment(references: Tensor, estimates: Tensor, rtol: float = 1e-7) -> Tensor:
    """Efficient MixIT assignment, sparse/efficient MixIT eq. (3).

    ``A_hat = P_B{ argmin_{A in R^{N x M}} ||x - A s_hat||_2^2 }``, per batch item. The least
    squares solution is ``A = x s_hat^T (s_hat s_hat^T)^+`` with ``x`` ``(N, T)`` and ``s_hat``
    ``(M, T)`` flattened over ``D``; the pseudo-inverse of the ``(M, M)`` Gram matrix is taken in
    float64 with eigenvalues below ``rtol`` times the largest treated as zero, so all-zero,
    duplicated or colinear outputs give the minimum-norm solution instead of inf/NaN. ``P_B``
    sets the largest entry of each column to 1 and the others to 0 (ties: the first
    reference), so every output goes to exactly one reference mixture. Non-finite estimates are
    read as zeros here (the loss itself still sees them and the run is reported as diverged).

    The assignment is a discrete choice: no gradient flows through it (as in eq. 1).

    Args:
        references: ``(B, N, *D)`` reference mixtures ``x_n``.
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        rtol: relative eigenvalue cut-off of the Gram pseudo-inverse.

    Returns:
        ``(B, N, M)`` binary matrices in ``estimates.dtype``, each column one-hot.
    """
    num_refs = references.shape[1]
    x = references.flatten(2).double()  # (B, N, T)
    s = torch.nan_to_num(estimates.detach().flatten(2).double(), nan=0.0, posinf=0.0, neginf=0.0)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    gram = s @ s.transpose(1, 2)  # (B, M, M) = s_hat s_hat^T
    cross = x @ s.transpose(1, 2)  # (B, N, M) = x s_hat^T
    real = cross @ torch.linalg.pinv(gram, rtol=rtol, hermitian=True)  # least-squares A
    best = real.argmax(dim=1)  # (B, M): P_B, the row of each column's maximum
    onehot = torch.nn.functional.one_hot(best, num_refs)  # (B, M, N)
    return onehot.transpose(1, 2).to(estimates.dtype)


def mixit_loss(
    references: Tensor,
    estimates: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    assignment: str = "exhaustive",
) -> tuple[Tensor, Tensor]:
    """MixIT loss (sparse/efficient MixIT eq. 1) with an exhaustive or efficient assignment.

    Args:
        references: ``(B, N, *D)`` reference mixtures ``x_n`` (their sum is the model input).
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        loss_fn: per-signal loss ``(refs (B, N, *D), est (B, N, *D)) -> (B, N)``, e.g.
            :func:`methods.losses.squared_error` or the thresholded SNR of eq. (2).
        assignment: ``"exhaustive"`` (default): ``A`` minimises ``sum_n L(x_n, [A s_hat]_n)``
            over all ``N^M`` binary matrices (eq. 1); ``"efficient"``: ``A`` is the binary
            projection of the least-squares mixing matrix (eq. 3,
            :func:`efficient_assignment`), whatever ``loss_fn`` is.

    Returns:
        ``(loss, A)``: ``loss`` ``(B,)`` is ``sum_n L(x_n, [A s_hat]_n)`` for the chosen ``A``
        (the minimum over ``A`` for ``"exhaustive"``; differentiable with respect to
        ``estimates``, not through ``A``); ``A`` ``(B, N, M)`` the binary matrices.

    Raises:
        ValueError: an unknown ``assignment`` (the message lists the valid ones).
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(
            f"unknown MixIT assignment {assignment!r}; valid assignments: {list(ASSIGNMENTS)}"
        )
    if assignment == "efficient":
        mats = efficient_assignment(references, estimates)  # (B, N, M), eq. (3)
        remixed = torch.einsum("bnm,bmd->bnd", mats, estimates.flatten(2))  # [A s_hat]_n
        loss = loss_fn(references.flatten(2), remixed).sum(-1)  # sum_n L(x_n, [A s_hat]_n)
        return loss, mats
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
