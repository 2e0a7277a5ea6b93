"""EMA teacher and the hybrid-teacher threshold schedule.

- EMA (SURF Algorithm 1 line 16, Code Listing 1): ``theta_T <- alpha theta_T + (1 - alpha) theta``.
- beta schedule (SURF Appendix D.3): beta decays linearly from 1.0 to 0.0 over the first
  ``decay_steps`` iterations (200k in the paper) and stays at 0.0 afterwards.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["beta_schedule", "ema_update", "make_ema_copy"]


def make_ema_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` to serve as EMA teacher (no gradients, eval mode)."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """In-place ``theta_T <- alpha theta_T + (1 - alpha) theta`` over parameters and float
    buffers (SURF Algorithm 1 line 16).

    Args:
        teacher: EMA model, updated in place.
        student: trained model (same architecture).
        alpha: EMA decay in [0, 1]; 0 copies the student, 1 freezes the teacher.

    Raises:
        ValueError: if ``alpha`` is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"EMA decay alpha must be in [0, 1], got {alpha}")
    t_params = list(teacher.parameters()) + [b for b in teacher.buffers() if b.is_floating_point()]
    s_params = list(student.parameters()) + [b for b in student.buffers() if b.is_floating_point()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different architectures")
    torch._foreach_lerp_(t_params, s_params, 1.0 - alpha)


def beta_schedule(step: int, decay_steps: int, start: float = 1.0, end: float = 0.0) -> float:
    """Hybrid-teacher threshold beta at a training step (SURF Appendix D.3).

    Args:
        step: 0-based iteration of the SURF phase.
        decay_steps: iterations over which beta goes linearly from ``start`` to ``end``
            (200,000 in the paper; preset-scaled here). 0 means beta = ``end`` from the start.
        start: beta at step 0 (1.0: the teacher is pure MixIT).
        end: beta after the decay (0.0: the teacher is the pure EMA flow).

    Returns:
        beta in [min(start, end), max(start, end)].
    """
    if decay_steps <= 0 or step >= decay_steps:
        return end
    return start + (end - start) * step / decay_steps
