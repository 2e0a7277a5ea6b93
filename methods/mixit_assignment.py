"""MixIT assignment (Wisdom et al. 2020; sparse/efficient MixIT 2021, eq. 1) and the M -> K
reduction used when a MixIT model is scored or used as a teacher.

MixIT trains an M-output separator on a mixture of mixtures ``x_bar = sum_n x_n`` and picks the
binary mixing matrix ``A in B^{N x M}`` (each column one-hot: every output goes to exactly one
reference mixture) that minimises ``sum_n L([A s_hat]_n, x_n)``. Two ways to find ``A``:

- ``"exhaustive"`` (eq. 1): the best of all ``N^M`` matrices, exactly. For the losses used here
  (squared error, thresholded SNR: anything with an energy form, :mod:`methods.losses`) the
  search needs only the Gram terms ``<s_hat_m, s_hat_m'>``, ``<x_n, s_hat_m>`` and ``||x_n||^2``
  (:func:`exhaustive_assignment`, float64, memory ``O(B N^M N)``, never ``O(B N^M N D)``); the
  differentiable loss is then evaluated once, on the chosen ``A``. Other losses are searched on
  the remixed signals, in chunks of assignments.
- ``"efficient"`` (eq. 3): least-squares real-valued mixing matrix, then the projection ``P_B``
  onto the nearest binary assignment (:func:`efficient_assignment`); cost linear in M. It is an
  approximation: on partly separated outputs it finds the exhaustive optimum for only part of
  the items (README, "Performance").

Conventions (:mod:`methods.pit`): functions take ``(estimates, references)`` in this order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "ASSIGNMENTS",
    "TABLE_MEMORY_FRACTION",
    "assignment_table_bytes",
    "check_exhaustive_fits",
    "efficient_assignment",
    "exhaustive_assignment",
    "mixit_assignments",
    "mixit_loss",
    "reduce_to_k",
]

ASSIGNMENTS = ("exhaustive", "efficient")

#: largest share of the device's free memory that the exhaustive search's table may take
TABLE_MEMORY_FRACTION = 0.25
#: working memory of one chunk of assignments in the exhaustive searches (bytes)
_CHUNK_BYTES = 32 << 20


def available_memory(device: torch.device | str | None = None) -> int:
    """Free memory in bytes on ``device``: CUDA's free device memory, else the host's
    ``MemAvailable`` (``/proc/meminfo``; physical pages free where that file is absent)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def assignment_table_bytes(num_refs: int, num_outputs: int) -> int:
    """Bytes of the float64 table of every binary mixing matrix, ``N^M x N x M`` entries."""
    return num_refs**num_outputs * num_refs * num_outputs * 8


def check_exhaustive_fits(
    num_refs: int, num_outputs: int, device: torch.device | str | None = None
) -> None:
    """Refuse an exhaustive MixIT whose assignment table would not fit in memory.

    Args:
        num_refs: N, reference mixtures.
        num_outputs: M, separator outputs.
        device: where the search runs (default the CPU).

    Raises:
        ValueError: N < 1, M < 1, or the table (:func:`assignment_table_bytes`) exceeds
            :data:`TABLE_MEMORY_FRACTION` of the free memory of ``device``; the message names
            the setting to change.
    """
    if num_refs < 1 or num_outputs < 1:
        raise ValueError(f"need N >= 1 and M >= 1, got N={num_refs}, M={num_outputs}")
    need = assignment_table_bytes(num_refs, num_outputs)
    free = available_memory(device)
    if need > TABLE_MEMORY_FRACTION * free:
        raise ValueError(
            f"exhaustive MixIT with N={num_refs} reference mixtures and M={num_outputs} outputs "
            f"searches N^M = {num_refs**num_outputs:,} mixing matrices; their table needs "
            f"{need / 2**30:.2f} GiB, more than {TABLE_MEMORY_FRACTION:.0%} of the "
            f"{free / 2**30:.1f} GiB free on {torch.device(device or 'cpu')}: set "
            f"mixit.assignment=efficient (sparse/efficient MixIT eq. 3) or lower "
            f"mixit.num_outputs"
        )


@lru_cache(maxsize=16)
def _assignment_table(num_refs: int, num_outputs: int, device: str) -> Tensor:
    """``(N^M, N, M)`` float64 one-hot table, rows in ``itertools.product`` order (output
    ``M - 1`` varies fastest), built arithmetically on ``device`` and cached (as a normal
    tensor even when first asked for under ``torch.inference_mode``)."""
    with torch.inference_mode(False):
        rows = torch.arange(num_refs**num_outputs, device=device)
        powers = num_refs ** torch.arange(num_outputs - 1, -1, -1, device=device)
        digits = torch.div(rows[:, None], powers, rounding_mode="floor") % num_refs  # (A, M)
        onehot = torch.nn.functional.one_hot(digits, num_refs)  # (A, M, N)
        return onehot.transpose(1, 2).to(torch.float64).contiguous()


def _table(num_refs: int, num_outputs: int, device: torch.device | str | None) -> Tensor:
    check_exhaustive_fits(num_refs, num_outputs, device)
    return _assignment_table(num_refs, num_outputs, str(torch.device(device or "cpu")))


def mixit_assignments(
    num_refs: int, num_outputs: int, device: torch.device | str | None = None
) -> Tensor:
    """Every binary mixing matrix of sparse-MixIT eq. (1).

    Args:
        num_refs: N, reference mixtures.
        num_outputs: M, separator outputs.
        device: device of the result.

    Returns:
        Float tensor ``(N^M, N, M)`` of 0/1 entries; each column has exactly one 1. Row ``a``
        assigns output ``m`` to reference mixture ``a // N^(M-1-m) % N``
        (``itertools.product`` order).

    Raises:
        ValueError: N < 1, M < 1, or a table too large for the device's memory
            (:func:`check_exhaustive_fits`; use the efficient assignment instead).
    """
    return _table(num_refs, num_outputs, device).float()


@torch.no_grad()
def exhaustive_assignment(
    estimates: Tensor,
    references: Tensor,
    from_energies: Callable[[Tensor, Tensor, Tensor, int], Tensor],
) -> Tensor:
    """The exact MixIT assignment (sparse/efficient MixIT eq. 1) from Gram terms.

    For ``x_hat_n = [A s_hat]_n = sum_m A_nm s_hat_m``: ``||x_hat_n||^2 = sum_{m, m'} A_nm
    A_nm' <s_hat_m, s_hat_m'>`` and ``<x_hat_n, x_n> = sum_m A_nm <s_hat_m, x_n>``, so a loss
    that depends on the signals only through ``||x_hat||^2``, ``<x_hat, x>``, ``||x||^2`` and
    ``T`` is evaluated for all ``N^M`` matrices from the ``(M, M)`` and ``(N, M)`` Gram
    matrices, in float64, in chunks of assignments (memory ``O(B N^M N)`` at most, never
    ``O(B N^M N D)``). Ties resolve to the first matrix in :func:`mixit_assignments` order; a
    NaN total is never chosen over a number. No gradient flows through the choice.

    Args:
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        references: ``(B, N, *D)`` reference mixtures ``x_n``.
        from_energies: the loss's energy form ``(est_energy, cross, ref_energy, T) -> loss``
            (``loss.from_energies`` of :mod:`methods.losses`), elementwise over any shape.

    Returns:
        ``(B,)`` long: row indices into :func:`mixit_assignments` ``(N, M)``.

    Raises:
        ValueError: a table too large for memory (:func:`check_exhaustive_fits`).
    """
    batch, num_refs = references.shape[:2]
    num_outputs = estimates.shape[1]
    table = _table(num_refs, num_outputs, estimates.device)  # (A, N, M) float64
    s = estimates.detach().flatten(2).double()  # (B, M, T)
    x = references.detach().flatten(2).double()  # (B, N, T)
    numel = s.shape[-1]
    gram = s @ s.transpose(1, 2)  # (B, M, M): <s_hat_m, s_hat_m'>
    cross = x @ s.transpose(1, 2)  # (B, N, M): <x_n, s_hat_m>
    ref_energy = x.pow(2).sum(-1)[:, None, :]  # (B, 1, N): ||x_n||^2
    num_mats = table.shape[0]
    chunk = max(1, _CHUNK_BYTES // (8 * batch * num_refs * num_outputs))
    best_total = torch.full((batch,), torch.inf, dtype=torch.float64, device=s.device)
    best = torch.zeros(batch, dtype=torch.long, device=s.device)
    for begin in range(0, num_mats, chunk):
        mats = table[begin : begin + chunk]  # (C, N, M)
        rows = mats.reshape(-1, num_outputs)  # (C N, M)
        quad = (rows @ gram * rows).sum(-1)  # (B, C N): a_n^T G a_n = ||x_hat_n||^2
        est_energy = quad.reshape(batch, -1, num_refs)  # (B, C, N)
        est_cross = torch.einsum("cnm,bnm->bcn", mats, cross)  # (B, C, N): <x_hat_n, x_n>
        totals = from_energies(est_energy, est_cross, ref_energy, numel).sum(-1)  # (B, C)
        totals = torch.where(torch.isnan(totals), torch.inf, totals)
        value, index = totals.min(dim=1)
        better = value < best_total  # strict: the earlier chunk keeps ties
        best_total = torch.where(better, value, best_total)
        best = torch.where(better, index + begin, best)
    return best


@torch.no_grad()
def _remixed_search(
    estimates: Tensor, references: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Exhaustive search for losses without an energy form: each chunk of matrices remixes
    the signals and evaluates ``loss_fn`` (same tie rule as :func:`exhaustive_assignment`)."""
    batch, num_refs = references.shape[:2]
    num_outputs = estimates.shape[1]
    table = _table(num_refs, num_outputs, estimates.device).to(estimates.dtype)
    est = estimates.detach().flatten(2)
    refs = references.detach().flatten(2)
    per_matrix = 4 * batch * num_refs * est.shape[-1] * est.element_size()
    chunk = max(1, _CHUNK_BYTES // per_matrix)
    best_total = torch.full((batch,), torch.inf, dtype=estimates.dtype, device=est.device)
    best = torch.zeros(batch, dtype=torch.long, device=est.device)
    for begin in range(0, table.shape[0], chunk):
        mats = table[begin : begin + chunk]  # (C, N, M)
        size = mats.shape[0]
        remixed = torch.einsum("cnm,bmd->bcnd", mats, est)  # [A s_hat]_n
        expanded = refs[:, None].expand(batch, size, num_refs, -1)
        totals = (
            loss_fn(
                remixed.reshape(batch * size, num_refs, -1),
                expanded.reshape(batch * size, num_refs, -1),
            )
            .reshape(batch, size, num_refs)
            .sum(-1)
        )
        totals = torch.where(torch.isnan(totals), torch.inf, totals)
        value, index = totals.min(dim=1)
        better = value < best_total
        best_total = torch.where(better, value, best_total)
        best = torch.where(better, index + begin, best)
    return best


@torch.no_grad()
def efficient_assignment(estimates: Tensor, references: Tensor, rtol: float = 1e-7) -> Tensor:
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
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        references: ``(B, N, *D)`` reference mixtures ``x_n``.
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
    estimates: Tensor,
    references: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    assignment: str = "exhaustive",
) -> tuple[Tensor, Tensor]:
    """MixIT loss (sparse/efficient MixIT eq. 1) with an exhaustive or efficient assignment.

    Args:
        estimates: ``(B, M, *D)`` separated sources ``s_hat``.
        references: ``(B, N, *D)`` reference mixtures ``x_n`` (their sum is the model input).
        loss_fn: per-signal loss ``(estimates (B, N, *D), references (B, N, *D)) -> (B, N)``,
            e.g. :func:`methods.losses.squared_error` or the thresholded SNR of eq. (2). With
            an energy form (``loss_fn.from_energies``, every loss of :mod:`methods.losses`)
            the exhaustive search runs on Gram matrices (:func:`exhaustive_assignment`);
            without one, on the remixed signals in chunks (same result, more time).
        assignment: ``"exhaustive"`` (default): ``A`` minimises ``sum_n L([A s_hat]_n, x_n)``
            over all ``N^M`` binary matrices (eq. 1); ``"efficient"``: ``A`` is the binary
            projection of the least-squares mixing matrix (eq. 3,
            :func:`efficient_assignment`), whatever ``loss_fn`` is.

    Returns:
        ``(loss, A)``: ``loss`` ``(B,)`` is ``sum_n L([A s_hat]_n, x_n)`` for the chosen ``A``
        (the minimum over ``A`` for ``"exhaustive"``; evaluated once, differentiable with
        respect to ``estimates``, not through ``A``); ``A`` ``(B, N, M)`` the binary matrices
        in ``estimates.dtype``.

    Raises:
        ValueError: an unknown ``assignment`` (the message lists the valid ones), or an
            exhaustive search whose table does not fit in memory
            (:func:`check_exhaustive_fits`).
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(
            f"unknown MixIT assignment {assignment!r}; valid assignments: {list(ASSIGNMENTS)}"
        )
    if assignment == "efficient":
        mats = efficient_assignment(estimates, references)  # (B, N, M), eq. (3)
    else:
        num_refs, num_outputs = references.shape[1], estimates.shape[1]
        from_energies = getattr(loss_fn, "from_energies", None)
        if from_energies is not None:
            best = exhaustive_assignment(estimates, references, from_energies)
        else:
            best = _remixed_search(estimates, references, loss_fn)
        table = _table(num_refs, num_outputs, estimates.device)
        mats = table[best].to(estimates.dtype)  # (B, N, M), eq. (1)
    remixed = torch.einsum("bnm,bmd->bnd", mats, estimates.flatten(2))  # [A s_hat]_n
    loss = loss_fn(remixed, references.flatten(2)).sum(-1)  # sum_n L([A s_hat]_n, x_n)
    return loss, mats


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
