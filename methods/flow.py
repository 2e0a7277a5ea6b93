"""Flow-matching pieces for source separation (FLOSS, Scheibler et al. 2025, as reviewed in
SURF §2.2) shared by SURF and supervised flow matching.

Conventions (SURF §2.1): sources ``x`` have shape ``(B, K, *D)`` and the mixture is their sum,
``m = sum_k x^(k)`` (eq. 1), shape ``(B, *D)``. Time ``t`` runs from 0 (mixture-consistent noise)
to 1 (sources), one value per batch item, shape ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "clean_estimate",
    "euler_sample",
    "euler_times",
    "hybrid_euler_sample",
    "hybrid_velocity",
    "initial_state",
    "interpolant",
    "project_zero_sum",
    "target_velocity",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def project_zero_sum(v: Tensor) -> Tensor:
    """Apply ``P_perp = I_K - 11^T / K`` on the source axis: ``v - mean_k v``.

    Used for the mixture-consistent noise of eq. (4) and as the output projection of the flow
    network: a velocity with ``sum_k v^(k) = 0`` keeps ``sum_k x_t^(k) = m`` along the whole ODE.

    Args:
        v: ``(B, K, *D)``.

    Returns:
        ``(B, K, *D)`` with zero sum over ``K``.
    """
    return v - v.mean(dim=1, keepdim=True)


def noise_sigma(
    mixture: Tensor, num_sources: int, noise_scale: float, reference: str = "absolute"
) -> float | Tensor:
    """``sigma`` of the initial state (SURF eq. 4), in data units.

    SURF eq. 4 draws ``z ~ N(0, I)``; images in [0, 1] and unit-variance speech suit a fixed
    ``sigma`` (``reference="absolute"``: ``sigma = noise_scale``). Corpora stored at their file
    amplitude (Libri2Mix, FUSS: source RMS of a few hundredths) need a noise level relative to
    the signal instead: ``reference="mixture_rms"`` gives each mixture
    ``sigma_b = noise_scale * rms(m_b) / sqrt(K)``, the RMS of one of K uncorrelated
    equal-power sources that sum to ``m_b`` (our choice; the paper does not state its audio
    scaling).

    Args:
        mixture: ``(B, *D)`` mixtures.
        num_sources: K.
        noise_scale: the config's ``surf.noise_scale``.
        reference: ``"absolute"`` or ``"mixture_rms"``.

    Returns:
        A float, or a ``(B, 1, *[1] * len(D))`` tensor that broadcasts over ``(B, K, *D)``.

    Raises:
        ValueError: unknown ``reference``.
    """
    if reference == "absolute":
        return noise_scale
    if reference == "mixture_rms":
        rms = mixture.flatten(1).pow(2).mean(dim=1).sqrt()
        sigma = (noise_scale * rms / num_sources**0.5).clamp_min(1e-8)
        return sigma.view(-1, *([1] * mixture.dim()))
    raise ValueError(f"surf.noise_reference must be 'absolute' or 'mixture_rms', got {reference!r}")


def initial_state(
    mixture: Tensor,
    num_sources: int,
    noise_scale: float | Tensor = 1.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mixture-consistent initial state ``x_0 = (1/K) 1 m + sigma P_perp z`` (SURF eq. 4).

    Args:
        mixture: ``(B, *D)`` mixtures ``m``.
        num_sources: K.
        noise_scale: ``sigma`` multiplying the Gaussian ``z`` (the paper uses 1; a config field
            because the right value depends on the data scale): a float, or per mixture a
            ``(B, 1, *[1] * len(D))`` tensor from :func:`noise_sigma`.
        noise: optional ``(B, K, *D)`` standard normal ``z``; drawn with ``generator`` if None.
        generator: random generator for ``z``.

    Returns:
        ``(B, K, *D)`` ``x_0`` with ``sum_k x_0^(k) = m`` exactly (up to float rounding).
    """
    shape = (mixture.shape[0], num_sources, *mixture.shape[1:])
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=mixture.device, dtype=mixture.dtype)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    return mixture[:, None] / num_sources + noise_scale * project_zero_sum(noise)


def interpolant(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Linear path ``x_t = (1 - t) x_0 + t x_1`` (SURF eq. 11, batched eq. 20).

    Args:
        x0: ``(B, K, *D)`` initial state.
        x1: ``(B, K, *D)`` (aligned) targets.
        t: ``(B,)`` times in [0, 1].

    Returns:
        ``(B, K, *D)``.
    """
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * x1


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """Conditional flow-matching target ``x_1 - x_0`` (SURF eq. 5, 10, 23)."""
    return x1 - x0


def clean_estimate(x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
    """Denoised estimate ``x_t + (1 - t) v`` (SURF eq. 19, 25; eq. 9 at t = 0).

    Args:
        x_t: ``(B, K, *D)``.
        velocity: ``(B, K, *D)`` predicted drift at ``(x_t, t)``.
        t: ``(B,)``.

    Returns:
        ``(B, K, *D)`` estimate of ``E[x_1 | x_t, m]``.
    """
    return x_t + (1 - _bcast(t, x_t)) * velocity


def euler_times(num_steps: int) -> list[float]:
    """Left end points ``t_i = i / N`` of the uniform N-step Euler grid on [0, 1]."""
    if num_steps < 1:
        raise ValueError(f"Euler solver needs at least 1 step, got {num_steps}")
    return [i / num_steps for i in range(num_steps)]


def euler_sample(velocity_fn: VelocityFn, x0: Tensor, num_steps: int = 5) -> Tensor:
    """Integrate ``dx/dt = v(x, t)`` from t = 0 to 1 with the explicit Euler method (eq. 6).

    SURF and FLOSS sample with 5 uniform steps (SURF Appendix D.4, D.5). If ``velocity_fn``
    returns zero-sum velocities (:func:`project_zero_sum`), every iterate keeps the mixture
    consistency of ``x0``.

    Args:
        velocity_fn: ``(x_t (B, K, *D), t (B,)) -> v (B, K, *D)``.
        x0: ``(B, K, *D)`` initial state from :func:`initial_state`.
        num_steps: N >= 1.

    Returns:
        ``(B, K, *D)`` the state at t = 1.
    """
    x = x0
    dt = 1.0 / num_steps
    for t_i in euler_times(num_steps):
        t = torch.full((x.shape[0],), t_i, device=x.device, dtype=x.dtype)
        x = x + dt * velocity_fn(x, t)
    return x


def hybrid_velocity(
    x_t: Tensor,
    t: Tensor,
    x0: Tensor,
    mixit_estimate: Tensor | None,
    flow_velocity: VelocityFn,
    beta: float,
) -> Tensor:
    """Hybrid teacher velocity of SURF Appendix D.3.

    ``v_beta(x_t, t, m) = f_MixIT(m) - x_0`` for ``t < beta`` (the straight path to the frozen
    MixIT estimate) and ``v_theta_T(x_t, t, m)`` (the EMA flow teacher) for ``t >= beta``.
    The flow network is evaluated only when some item has ``t >= beta`` (on the uniform Euler
    grid all items share ``t``, so it is all or nothing) and MixIT is never needed when none has
    ``t < beta``.

    Args:
        x_t: ``(B, K, *D)`` current state.
        t: ``(B,)`` current times.
        x0: ``(B, K, *D)`` the initial state of this trajectory.
        mixit_estimate: ``(B, K, *D)`` frozen MixIT estimate ``f_MixIT(m)`` (mixture-consistent);
            may be None when ``beta == 0``.
        flow_velocity: ``(x_t, t) -> v`` of the EMA teacher on the full batch.
        beta: threshold in [0, 1].

    Returns:
        ``(B, K, *D)`` velocities.
    """
    use_mixit = t < beta
    any_mixit, all_mixit = torch.stack([use_mixit.any(), use_mixit.all()]).tolist()  # 1 sync
    if any_mixit and mixit_estimate is None:
        raise ValueError(f"beta={beta} needs the MixIT estimate for t < beta")
    if all_mixit:
        return mixit_estimate - x0
    v = flow_velocity(x_t, t)
    if any_mixit:
        v = torch.where(_bcast(use_mixit, v), mixit_estimate - x0, v)
    return v


def hybrid_euler_sample(
    x0: Tensor,
    mixit_estimate: Tensor | None,
    flow_velocity: VelocityFn,
    beta: float,
    num_steps: int = 5,
) -> Tensor:
    """Euler solve (eq. 6) of the hybrid teacher velocity of SURF Appendix D.3 from ``x0``.

    The same iterates as ``euler_sample(lambda x, t: hybrid_velocity(x, t, x0, mixit_estimate,
    flow_velocity, beta), x0, num_steps)``, but every item shares the grid time ``t_i = i / N``,
    a Python float, so the choice between the straight path to the MixIT estimate
    (``t_i < beta``) and the EMA flow teacher (``t_i >= beta``) is made on the host: no device
    synchronisation, no flow network pass while ``t_i < beta`` (none at beta = 1), and no MixIT
    estimate needed when beta = 0.

    Args:
        x0: ``(B, K, *D)`` initial state (eq. 4).
        mixit_estimate: ``(B, K, *D)`` frozen MixIT estimate, or None when ``beta <= 0``.
        flow_velocity: ``(x_t, t (B,)) -> v`` of the EMA teacher.
        beta: threshold in [0, 1].
        num_steps: N >= 1 Euler steps.

    Returns:
        ``(B, K, *D)`` the state at t = 1.

    Raises:
        ValueError: a grid time below ``beta`` without a MixIT estimate.
    """
    x = x0
    dt = 1.0 / num_steps
    straight = None  # f_MixIT(m) - x_0, the same at every step
    for t_i in euler_times(num_steps):
        if t_i < beta:
            if mixit_estimate is None:
                raise ValueError(f"beta={beta} needs the MixIT estimate for t < beta")
            if straight is None:
                straight = mixit_estimate - x0
            v = straight
        else:
            v = flow_velocity(x, torch.full((x.shape[0],), t_i, device=x.device, dtype=x.dtype))
        x = x + dt * v
    return x
