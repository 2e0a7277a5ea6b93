"""Bootstrapped remixing shared by ReMixIT, Self-Remixing and SURF (SURF §2.3, eq. 14-17).

A batch of teacher estimates ``X_bar`` of shape ``(B, K, *D)`` is flattened to ``BK`` rows,
shuffled by a uniform permutation ``Pi in S_BK`` (eq. 14), and regrouped into ``B`` new mixtures
of ``K`` sources each (eq. 15). Self-Remixing routes estimates back with ``Pi^{-1}`` (eq. 17).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Remix", "remix", "sum_to_mixtures", "unshuffle"]


@dataclass
class Remix:
    """Result of :func:`remix`.

    Attributes:
        sources: ``(B, K, *D)`` shuffled sources ``X_tilde = Pi X_bar`` (eq. 14).
        mixtures: ``(B, *D)`` new mixtures ``M_tilde = (I_B (x) 1^T) X_tilde`` (eq. 15).
        perm: ``(B*K,)`` long, the global shuffle: row ``i`` of ``X_tilde`` is row ``perm[i]``
            of ``X_bar`` (flattened).
    """

    sources: Tensor
    mixtures: Tensor
    perm: Tensor


def sum_to_mixtures(sources: Tensor) -> Tensor:
    """``(I_B (x) 1^T) X``: sum the K sources of each mixture, ``(B, K, *D) -> (B, *D)``."""
    return sources.sum(dim=1)


def remix(
    estimates: Tensor, generator: torch.Generator | None = None, perm: Tensor | None = None
) -> Remix:
    """Global shuffle of all ``BK`` estimated sources and regrouping (SURF eq. 14-15).

    Args:
        estimates: ``(B, K, *D)`` teacher estimates ``X_bar``.
        generator: random generator for ``Pi ~ U(S_BK)`` (drawn on the generator's device).
        perm: optional fixed ``(B*K,)`` permutation (tests, reproduction of a listing).

    Returns:
        :class:`Remix` with the shuffled sources, the new mixtures and ``perm``.
    """
    batch, num_sources = estimates.shape[:2]
    flat = estimates.reshape(batch * num_sources, *estimates.shape[2:])
    if perm is None:
        device = generator.device if generator is not None else estimates.device
        perm = torch.randperm(batch * num_sources, generator=generator, device=device)
        perm = perm.to(estimates.device)
    shuffled = flat[perm].reshape(estimates.shape)
    return Remix(sources=shuffled, mixtures=sum_to_mixtures(shuffled), perm=perm)


def unshuffle(shuffled: Tensor, perm: Tensor) -> Tensor:
    """Apply ``Pi^{-1}``: route rows of a shuffled ``(B, K, *D)`` tensor back to their origin.

    ``unshuffle(remix(x, perm=p).sources, p) == x``; used by Self-Remixing (eq. 17) and SR-FM
    (eq. 30, Code Listing 1 ``inv_perm = argsort(perm)``).

    Args:
        shuffled: ``(B, K, *D)`` in shuffled order.
        perm: ``(B*K,)`` the permutation returned by :func:`remix`.

    Returns:
        ``(B, K, *D)`` in the original order.
    """
    batch, num_sources = shuffled.shape[:2]
    flat = shuffled.reshape(batch * num_sources, *shuffled.shape[2:])
    return flat[torch.argsort(perm)].reshape(shuffled.shape)
