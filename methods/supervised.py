"""Supervised regression reference (SURF §5.1, Table 1 "Supervised Regression"): the regression
network of the baselines, trained on **clean sources**.

Training step (one iteration):
    1. x ~ p(x)                                    B clean K-source tuples (``task.sample_sources``)
    2. m = sum_k x^(k)                             their mixtures (eq. 1)
    3. x_hat = f_theta(m)                          K mixture-consistent outputs
    4. L = (1/K) min_sigma sum_k l(x_hat^(k), (sigma x)^(k)),  averaged over the batch   (eq. 3)
       with l(x, x_hat) = 10 log10(||x - x_hat||^2 + tau ||x||^2), tau = 10^(-SNR_max / 10)
    5. Adam step

The per-source losses are summed inside the PIT minimum (eq. 3) and the minimum is divided by K,
so the logged loss is in dB per source; the 1/K changes neither the permutation nor the
direction of the gradient. SURF §5.1 states the loss without threshold; ``supervised.snr_max``
(30 dB by default, as the thresholded MixIT loss) sets tau, and ``inf`` gives the literal loss.
The network is :class:`methods.models.RegressionSeparator` (the MixIT/remixing architecture) with
M = K outputs; it is evaluated directly (no EMA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import param
from benchmark.registry import register_method
from methods.base import Method, make_optimizer, optimize
from methods.losses import pairwise_log_mse
from methods.model_factory import build_separator
from methods.pit import best_permutation

__all__ = ["SupervisedConfig", "SupervisedRegression", "supervised_pit_loss"]


@dataclass
class SupervisedConfig:
    """Supervised regression reference (``supervised``; SURF §5.1), section ``supervised``.

    Trained on clean sources with the log-SNR PIT loss (SURF eq. 3) with the per-source loss
    ``l(x, x_hat) = 10 log10(||x - x_hat||^2 + tau ||x||^2)`` (:func:`methods.losses.log_mse`).

    Attributes:
        snr_max: ``SNR_max`` in dB (> 0) of the soft threshold ``tau = 10^(-SNR_max / 10)`` (30
            dB, the usual choice, as ``mixit.snr_max``): errors more than ``SNR_max`` dB below
            the reference's energy stop counting. ``inf`` gives ``tau = 0``, the literal §5.1
            loss ``10 log10 ||x - x_hat||^2``.
    """

    snr_max: float = param(30.0, gt=0.0)


def supervised_pit_loss(
    estimates: Tensor, references: Tensor, snr_max_db: float = 30.0
) -> tuple[Tensor, Tensor]:
    """Log-SNR PIT loss of SURF §5.1 / eq. (3) with the thresholded
    :func:`methods.losses.log_mse`.

    Args:
        estimates: ``(B, K, *D)`` network outputs ``x_hat``.
        references: ``(B, K, *D)`` clean sources ``x``.
        snr_max_db: ``SNR_max`` of the threshold ``tau = 10^(-SNR_max / 10)`` (``inf``: none).

    Returns:
        ``(loss, perm)``: scalar ``mean_b (1/K) min_sigma sum_k l(x_hat_b^(k), (sigma x_b)^(k))``
        (differentiable with respect to ``estimates``) and the ``(B, K)`` minimising
        permutations (``(sigma x)^(k) = x^(perm[k])``).
    """
    cost = pairwise_log_mse(estimates, references, snr_max_db)  # (B, K, K): [estimate, ref]
    total, perm = best_permutation(cost)
    return total.mean() / estimates.shape[1], perm


@register_method
class SupervisedRegression(Method):
    """Regression separator trained on clean sources with the log-SNR PIT loss."""

    name = "supervised"
    display_name = "Supervised Regression"
    unsupervised = False
    config_schema = {"supervised": SupervisedConfig}
    config_sections = ("task", "train", "net", "supervised", "eval")

    def setup(self, teacher: Method | None) -> None:
        del teacher  # no teacher: trained from clean sources
        cfg = self.config
        k = self.task.num_sources
        self.model = build_separator(self.task, k, cfg).to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.train.lr)
        self.compile_networks()

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable(self) -> nn.Module:
        return self.model

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        sources = self.task.sample_sources(cfg.train.batch_size, generator)  # 1. x (B, K, *D)
        mixtures = sources.sum(dim=1)  # 2. m = sum_k x^(k), eq. (1)
        estimates = self.call_net(self.model, mixtures)  # 3. x_hat (B, K, *D)
        loss, _ = supervised_pit_loss(estimates, sources, cfg.supervised.snr_max)  # 4. eq. (3)
        grad_norm = optimize(self, loss)  # 5.
        return {"loss": loss.detach(), "grad_norm": grad_norm}  # read at train.log_every

    @torch.no_grad()
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, *D)`` -> ``(B, K, *D)`` mixture-consistent estimates."""
        return self.call_net(self.model, mixtures)
