"""BASIS (Jayaram and Thickstun 2020, "Source Separation with Deep Generative Priors"): a
noise-conditional score network trained on **clean single sources**, then separation by annealed
Langevin dynamics with the mixture likelihood (SURF Table 1 "BASIS", a supervised generative
reference).

Training step (NCSN, Song and Ermon 2019, eq. 5-6 with lambda(sigma) = sigma^2):
    1. x ~ p(x)                          B single clean sources: ceil(B / K) draws of
                                         ``task.sample_sources`` with the K axis flattened
    2. x <- x 255/256 + u/256             uniform dequantisation (NCSN code; ``basis.dequantize``;
                                         images only)
    3. sigma_n = sigma_{i_n}, i_n ~ U{1..L}, z ~ N(0, I)
    4. L = 1/2 mean_n mean_d (sigma_n s_theta(x_n + sigma_n z_n, sigma_n) + z_n)^2
    5. Adam step

Separation (BASIS Algorithm 1, :func:`methods.langevin.annealed_langevin_separation`): the K
sources start uniform in [0, 1] (images); for each of the L levels, T Langevin steps of size
``eta_i = epsilon sigma_i^2 / sigma_L^2`` on the prior score plus the mixture-likelihood gradient
``(m - sum_k x_k) / sigma_i^2``; the last iterate, clamped to [0, 1], is the estimate. The mixture
convention ``m = sum_k x^(k)`` is BASIS's own (``g(x) = sum_k x_k``), see that module. The
initialisation and the Langevin noise come from the evaluation generator (seeded by the method
seed), so separations are reproducible.

The score network (:func:`methods.model_factory.build_score_net`) is the SURF NCSN++ U-Net
conditioned on ``log sigma`` on images, :class:`methods.score_networks.WaveformScoreNet` (sized by
``audio_net``) on audio; it is evaluated directly (no EMA, as NCSN/BASIS).

Audio (waveforms ``(T,)``, sources ``(B, K, T)``). Three image-specific steps change:

- no dequantisation (waveforms are continuous; step 2 is for 8-bit pixels);
- no clamping of the estimates (audio has no bounded range);
- initialisation ``x_k = m / K + sigma_1 z_k``, ``z_k ~ N(0, I)``, instead of Algorithm 1's
  ``Uniform(X)``, which needs a bounded data range. Waveforms are unbounded, and NCSN's
  annealing starts from a draw of the data smoothed at ``sigma_1``; the equal split of the
  mixture (the minimum-norm point of the constraint ``sum_k x_k = m``) plus noise at the first
  level is such a draw around the constraint set, with the residual ``m - sum_k x_k`` at the
  first level's likelihood scale.

The noise levels are in data units, so their range is relative to the sources' scale: the
default ``sigma_1 = 1 -> sigma_L = 0.01`` (BASIS/NCSN on images in [0, 1]) spans the
source scale down to 1 % of it on FSDD2Mix, whose utterances are standardised to unit
variance; tasks that keep file amplitudes (LibriMix, FUSS) need ``basis.sigma_begin`` /
``basis.sigma_end`` set relative to their source RMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import ConfigError, param
from benchmark.registry import register_method
from methods.base import Method, make_optimizer, optimize
from methods.langevin import annealed_langevin_separation, dsm_loss, geometric_sigmas
from methods.model_factory import build_score_net, is_audio

__all__ = ["Basis", "BasisConfig"]


@dataclass
class BasisConfig:
    """BASIS (Jayaram and Thickstun 2020): NCSN noise levels and annealed Langevin separation,
    section ``basis``.

    Defaults are the published values (BASIS §4 / Algorithm 1 with NCSN's schedule, Song and
    Ermon 2019 §4.2; the ``paper`` preset keeps them).

    Attributes:
        sigma_begin: sigma_1, the largest noise level (1.0; images in [0, 1]; data units, so
            on audio relative to the source scale: FSDD2Mix sources have unit variance).
        sigma_end: sigma_L, the smallest noise level (0.01); 0 < sigma_end <= sigma_begin.
        num_levels: L, geometric levels from sigma_1 to sigma_L (10), used both for training
            (denoising score matching) and for separation.
        steps_per_level: T, Langevin steps per level (100).
        epsilon: base step size; level i uses ``eta_i = epsilon sigma_i^2 / sigma_L^2``. 3e-5 is
            the value of the authors' released separation scripts (``step_lr=0.00003`` for MNIST
            and CIFAR-10 in github.com/jthickstun/basis-separation); we did not find the number
            in the paper's text, and NCSN's own sampler uses 2e-5.
        recon_weight: w, the mixture-likelihood gradient is ``w (m - sum_k x_k) / sigma_i^2``:
            1 is the Gaussian likelihood ``N(m; sum_k x_k, sigma_i^2 I)`` (and the authors'
            CIFAR-10 script); their MNIST script differentiates ``||m - g(x)||^2`` without the
            1/2, which is w = 2.
        dequantize: train on uniformly dequantised images ``x 255/256 + u/256``, u ~ U[0, 1), as
            the NCSN training code BASIS uses (image tasks only; waveforms are never
            dequantised).
        score_batch: at most this many images per score-network call during separation
            (memory; B K images are updated per Langevin step). Does not change the result
            beyond floating-point rounding.
    """

    sigma_begin: float = param(1.0, gt=0.0, finite=True)
    sigma_end: float = param(0.01, gt=0.0, finite=True)
    num_levels: int = param(10, ge=1)
    steps_per_level: int = param(100, ge=1)
    epsilon: float = param(3e-5, gt=0.0, finite=True)
    recon_weight: float = param(1.0, ge=0.0, finite=True)
    dequantize: bool = True
    score_batch: int = param(1000, ge=1)

    def validate(self) -> None:
        """The noise levels must decrease: ``0 < sigma_end <= sigma_begin``, and one level
        needs ``sigma_begin == sigma_end``.

        Raises:
            ConfigError: levels in the wrong order.
        """
        if not self.sigma_end <= self.sigma_begin:
            raise ConfigError(
                "basis.sigma_end and basis.sigma_begin need 0 < sigma_end <= sigma_begin, got "
                f"sigma_begin={self.sigma_begin}, sigma_end={self.sigma_end}"
            )
        if self.num_levels == 1 and self.sigma_begin != self.sigma_end:
            raise ConfigError(
                f"basis.num_levels must be >= 2 (or 1 with sigma_begin == sigma_end), got "
                f"{self.num_levels}"
            )


@register_method
class Basis(Method):
    """Score network on clean single sources + annealed Langevin separation (BASIS Alg. 1)."""

    name = "basis"
    display_name = "BASIS"
    unsupervised = False
    generative = True
    config_schema = {"basis": BasisConfig}
    config_sections = ("task", "train", "net", "basis", "eval")

    def setup(self, teacher: Method | None) -> None:
        del teacher  # no teacher: the prior is trained on clean sources
        cfg = self.config
        self.score_net = build_score_net(self.task, cfg).to(self.device)
        self.sigmas = geometric_sigmas(
            cfg.basis.sigma_begin, cfg.basis.sigma_end, cfg.basis.num_levels
        )
        self.optimizer = make_optimizer(self.score_net.parameters(), cfg.train.lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"score_net": self.score_net}

    def trainable(self) -> nn.Module:
        return self.score_net

    def sample_training_sources(self, generator: torch.Generator) -> Tensor:
        """Lines 1-2: ``(B, *D)`` single clean sources (dequantised if ``basis.dequantize``, on
        image tasks only)."""
        batch = self.config.train.batch_size
        k = self.task.num_sources
        x = self.task.sample_sources(math.ceil(batch / k), generator).flatten(0, 1)[:batch]
        if self.config.basis.dequantize and not is_audio(self.task):
            u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
            x = x * (255.0 / 256.0) + u.to(x.device) / 256.0
        return x

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        x = self.sample_training_sources(generator)  # 1-2.
        n = x.shape[0]
        levels = torch.randint(len(self.sigmas), (n,), generator=generator, device=generator.device)
        sigma = self.sigmas.to(x.device, x.dtype)[levels.to(x.device)]  # 3. sigma_{i_n}
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        loss = dsm_loss(self.score_net, x, sigma, noise.to(x.device))  # 4. eq. (5)-(6)
        grad_norm = optimize(self, loss)  # 5.
        return {"loss": loss.item(), "grad_norm": grad_norm}

    def score(self, x: Tensor, sigma: float) -> Tensor:
        """``s_theta(x, sigma)`` for ``(N, *D)`` points, at most ``basis.score_batch`` per
        network call (memory), without gradients."""
        chunk = self.config.basis.score_batch
        with torch.no_grad():
            return torch.cat([self.score_net(part, sigma) for part in x.split(chunk)])

    @torch.no_grad()
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, *D)`` mixtures -> ``(B, K, *D)`` estimates (BASIS Algorithm 1): images start
        uniform and end clamped to [0, 1]; waveforms start at ``m / K + sigma_1 z`` and are not
        clamped (module docstring)."""
        cfg = self.config.basis
        init = None
        if is_audio(self.task):
            shape = (mixtures.shape[0], self.task.num_sources, *mixtures.shape[1:])
            z = torch.randn(shape, generator=generator, device=generator.device)
            sigma_1 = float(self.sigmas[0])
            init = mixtures.unsqueeze(1) / shape[1] + sigma_1 * z.to(mixtures)
        estimates = annealed_langevin_separation(
            mixtures,
            self.score,
            self.task.num_sources,
            self.sigmas,
            cfg.epsilon,
            cfg.steps_per_level,
            generator,
            recon_weight=cfg.recon_weight,
            init=init,
        )
        return estimates if is_audio(self.task) else estimates.clamp(0.0, 1.0)
