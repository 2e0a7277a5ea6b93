"""Noise-conditional score matching and BASIS separation by annealed Langevin dynamics.

The algorithmic pieces of BASIS (Jayaram and Thickstun 2020, "Source Separation with Deep
Generative Priors", ICML), written against a plain score function so that they can be tested
with an analytic prior and reused with any score network (see :mod:`methods.score_networks`):

- :func:`geometric_sigmas`: the noise levels ``sigma_1 > ... > sigma_L`` of NCSN (Song and Ermon
  2019, §4.2), a geometric sequence.
- :func:`langevin_step_sizes`: ``eta_i = epsilon * sigma_i^2 / sigma_L^2`` (NCSN Algorithm 1;
  BASIS Algorithm 1).
- :func:`dsm_loss`: denoising score matching of Song and Ermon (2019), eq. (5)-(6), with the
  weighting ``lambda(sigma) = sigma^2``.
- :func:`annealed_langevin_separation`: BASIS Algorithm 1, Langevin dynamics on every source at
  once, each source driven by the prior's score and all of them by the gradient of the mixture
  likelihood.

Mixture convention. BASIS writes the mixture as ``m = g(x)``; for the image tasks here (and in the
authors' code, ``mixed = sum(gt_images)``) ``g(x) = sum_k x_k``, which is exactly this harness's
model convention (``m = sum_k x^(k)``, README "Conventions"), so no rescaling is needed: the
separator receives ``m = K * y`` for the task's averaged mixture ``y``.

Likelihood. BASIS relaxes the hard constraint ``m = g(x)`` into a Gaussian likelihood whose
variance follows the noise level, ``p(m | x) = N(m; g(x), gamma_i^2 I)`` with ``gamma_i =
sigma_i``. Its log-gradient with respect to one source is
``grad_{x_k} (-||m - sum_j x_j||^2 / 2) / sigma_i^2 = (m - sum_j x_j) / sigma_i^2``, the
"reconstruction term weighted by 1/sigma_i^2". ``recon_weight`` multiplies it: 1 is the Gaussian
likelihood above (and the authors' CIFAR-10 script), 2 is the authors' MNIST script, which
differentiates ``||m - g(x)||^2`` without the 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "ScoreFn",
    "annealed_langevin_separation",
    "dsm_loss",
    "geometric_sigmas",
    "langevin_step_sizes",
]

#: ``score_fn(x, sigma)``: ``(N, *D)`` points and a noise level (float) -> ``(N, *D)`` estimates
#: of ``grad_x log p_sigma(x)``, the score of the data density convolved with ``N(0, sigma^2 I)``.
ScoreFn = Callable[[Tensor, float], Tensor]


def geometric_sigmas(sigma_begin: float, sigma_end: float, num_levels: int) -> Tensor:
    """Noise levels ``sigma_i = sigma_1 (sigma_L / sigma_1)^((i - 1) / (L - 1))``, i = 1..L.

    NCSN (Song and Ermon 2019, §4.2) and BASIS use ``sigma_1 = 1``, ``sigma_L = 0.01``, ``L = 10``.

    Args:
        sigma_begin: ``sigma_1``, the largest level (data units; images in [0, 1]).
        sigma_end: ``sigma_L``, the smallest level, ``0 < sigma_L <= sigma_1``.
        num_levels: ``L >= 1`` (``L = 1`` requires ``sigma_1 = sigma_L``).

    Returns:
        ``(L,)`` float64, decreasing.

    Raises:
        ValueError: non-positive levels, ``sigma_end > sigma_begin`` or ``num_levels < 1``.
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if not 0.0 < sigma_end <= sigma_begin:
        raise ValueError(
            f"need 0 < sigma_end <= sigma_begin, got sigma_begin={sigma_begin}, "
            f"sigma_end={sigma_end}"
        )
    if num_levels == 1:
        if sigma_begin != sigma_end:
            raise ValueError("one noise level needs sigma_begin == sigma_end")
        return torch.tensor([sigma_begin], dtype=torch.float64)
    exponents = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
    return sigma_begin * (sigma_end / sigma_begin) ** exponents


def langevin_step_sizes(sigmas: Tensor, epsilon: float) -> Tensor:
    """Step sizes ``eta_i = epsilon * sigma_i^2 / sigma_L^2`` (NCSN Alg. 1, BASIS Alg. 1).

    Args:
        sigmas: ``(L,)`` decreasing noise levels; ``sigma_L = sigmas[-1]``.
        epsilon: the base step size (BASIS's released code uses 3e-5, see
            :class:`benchmark.config.BasisConfig`).

    Returns:
        ``(L,)`` step sizes; ``eta_L = epsilon``.
    """
    return epsilon * (sigmas / sigmas[-1]) ** 2


def dsm_loss(score_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, noise: Tensor):
    """Denoising score matching with ``lambda(sigma) = sigma^2`` (Song and Ermon 2019, eq. 5-6).

    ``l(theta; sigma) = 1/2 E || s_theta(x + sigma z, sigma) + z / sigma ||^2`` (the DSM target
    ``-(x_tilde - x) / sigma^2 = -z / sigma``), weighted by ``sigma^2``:
    ``L = 1/2 mean_n mean_d (sigma_n s_theta(x_n + sigma_n z_n, sigma_n) + z_n)^2``.

    The squared norm is a mean over the ``D`` elements of a sample (the harness's convention,
    README "Norms"), NCSN sums them: the loss is NCSN's divided by ``D``, a constant factor. An
    untrained network that outputs 0 therefore has loss 1/2.

    Args:
        score_fn: ``(N, *D)`` noisy points and ``(N,)`` noise levels -> ``(N, *D)`` scores.
        x: ``(N, *D)`` clean samples.
        sigma: ``(N,)`` noise level of each sample (> 0).
        noise: ``(N, *D)`` standard normal ``z``.

    Returns:
        Scalar loss (differentiable with respect to the score function's parameters).

    Raises:
        ValueError: mismatched shapes.
    """
    if noise.shape != x.shape or sigma.shape != x.shape[:1]:
        raise ValueError(
            f"dsm_loss needs x and noise of the same shape (N, *D) and sigma of shape (N,), got "
            f"x {tuple(x.shape)}, noise {tuple(noise.shape)}, sigma {tuple(sigma.shape)}"
        )
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    perturbed = x + sig * noise  # x_tilde ~ N(x, sigma^2 I)
    scores = score_fn(perturbed, sigma)
    return 0.5 * (sig * scores + noise).pow(2).flatten(1).mean(dim=1).mean()


def annealed_langevin_separation(
    mixtures: Tensor,
    score_fn: ScoreFn,
    num_sources: int,
    sigmas: Tensor,
    epsilon: float,
    steps_per_level: int,
    generator: torch.Generator,
    recon_weight: float = 1.0,
    init: Tensor | None = None,
) -> Tensor:
    """BASIS separation (Jayaram and Thickstun 2020, Algorithm 1).

    For every level ``i = 1..L`` with ``eta_i = epsilon sigma_i^2 / sigma_L^2`` and
    ``T = steps_per_level`` steps, all K sources are updated from the same state (Algorithm 1):

        x_k <- x_k + eta_i [ s(x_k, sigma_i) + (w / sigma_i^2) (m - sum_j x_j) ]
                   + sqrt(2 eta_i) z_k,          z_k ~ N(0, I)

    where ``(m - sum_j x_j) = grad_{x_k} (-||m - sum_j x_j||^2 / 2)`` and ``w = recon_weight``
    (module docstring). Initialisation ``x_k ~ Uniform[0, 1]^D`` (Algorithm 1, "Sample x_1 ..
    x_k ~ Uniform(X)"). The estimates are returned unclamped; callers clamp to the data range.

    Stability: the residual ``m - sum_k x_k`` contracts by ``1 - K w eta_i / sigma_i^2 = 1 - K w
    epsilon / sigma_L^2`` per step (without the score term), so ``epsilon < 2 sigma_L^2 / (K w)``
    is needed (2e-4 / K for the published ``sigma_L = 0.01``, ``w = 1``).

    Args:
        mixtures: ``(B, *D)`` mixtures ``m = sum_k x^(k)``.
        score_fn: prior score ``(N, *D), sigma -> (N, *D)`` (the same prior for every source).
        num_sources: K.
        sigmas: ``(L,)`` decreasing noise levels (:func:`geometric_sigmas`).
        epsilon: base step size of :func:`langevin_step_sizes`.
        steps_per_level: T (100 in BASIS).
        generator: seeds the initialisation and the Langevin noise (reproducible separations).
        recon_weight: ``w``, 1 for the Gaussian likelihood with ``gamma_i = sigma_i``.
        init: optional ``(B, K, *D)`` initial state instead of the uniform draw.

    Returns:
        ``(B, K, *D)`` source estimates.
    """
    batch, shape = mixtures.shape[0], tuple(mixtures.shape[1:])
    full = (batch, num_sources, *shape)
    device, dtype = mixtures.device, mixtures.dtype
    if init is None:
        x = torch.rand(full, generator=generator, device=generator.device, dtype=dtype)
        x = x.to(device)
    else:
        if tuple(init.shape) != full:
            raise ValueError(f"init must have shape {full}, got {tuple(init.shape)}")
        x = init.clone()
    etas = langevin_step_sizes(sigmas.double(), epsilon)
    for sigma_t, eta_t in zip(sigmas.double(), etas, strict=True):
        sigma, eta = float(sigma_t), float(eta_t)
        for _ in range(steps_per_level):
            noise = torch.randn(full, generator=generator, device=generator.device, dtype=dtype)
            score = score_fn(x.flatten(0, 1), sigma).reshape(full)  # s(x_k, sigma_i)
            residual = (mixtures - x.sum(dim=1)).unsqueeze(1)  # m - g(x), grad of -||.||^2/2
            drift = score + (recon_weight / sigma**2) * residual
            x = x + eta * drift + math.sqrt(2.0 * eta) * noise.to(device)
    return x
