"""MixIT: mixture invariant training (Wisdom et al. 2020; sparse/efficient MixIT 2021 §2.1).

Training step (one iteration):
    1. draw two reference mixtures x_1, x_2, each of one or K images (SURF D.4)
    2. mixture of mixtures x_bar = x_1 + x_2
    3. s_hat = f_theta(x_bar), M outputs, mixture-consistent
    4. L_MixIT = sum_n L(x_n, [A s_hat]_n)                    (sparse-MixIT eq. 1)
       with L the squared error (SURF D.4) or the thresholded SNR (eq. 2), and A either
       the exhaustive argmin over binary matrices (eq. 1, ``mixit.assignment=exhaustive``)
       or P_B{argmin_A ||x - A s_hat||^2} (eq. 3, ``mixit.assignment=efficient``)
    5. L = L_MixIT + lambda_sp C_sp(r) + lambda_cov C_cov(s_hat), averaged over the batch:
       C_sp the sparsity loss C_l1 (eq. 5) or C_l1/l2 (eq. 6) on the output RMS levels r
       (eq. 4) (``mixit.sparsity``, ``mixit.sparsity_weight``; default none), C_cov the
       covariance loss (eq. 7) (``mixit.covariance_weight``; default 0)
    6. Adam step

Inference: the M outputs are reduced to K estimates by :func:`methods.mixit_assignment.reduce_to_k`
(K highest-energy outputs seed the estimates, the others join the most similar seed), which is
mixture-consistent and needs no reference; the same rule is used for scoring and when MixIT is
a teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import ConfigError, param
from benchmark.registry import register_method
from methods.base import Method, make_optimizer, optimize
from methods.losses import covariance_loss, signal_loss, sparsity_loss
from methods.mixit_assignment import mixit_loss, reduce_to_k
from methods.model_factory import build_separator

__all__ = ["MixIT", "MixITConfig"]


@dataclass
class MixITConfig:
    """MixIT settings (Wisdom et al. 2020; sparse/efficient MixIT 2021), section ``mixit``.

    Attributes:
        num_outputs: M separator outputs (4).
        loss: ``"mse"`` squared error (SURF D.4) or ``"snr"`` thresholded SNR (eq. 2).
        snr_max: SNR_max in dB for ``loss="snr"``.
        single_source_prob: probability that a reference mixture holds one image instead of K
            (0.5: mixtures of mixtures hold 2/3/4 images at 25/50/25 %, SURF D.4).
        assignment: how the mixing matrix is found: ``"exhaustive"`` search over all N^M
            binary matrices (eq. 1) or ``"efficient"`` least squares projected to the nearest
            binary matrix (eq. 3).
        sparsity: source-sparsity loss added to the MixIT loss: ``"none"``, ``"l1"`` (C_l1,
            eq. 5) or ``"l1_l2"`` (C_l1/l2, eq. 6).
        sparsity_weight: its weight (the paper's Table 1 uses 8 / 23 / 64 for M = 4 / 8 / 16).
        covariance_weight: weight of the covariance loss C_cov (eq. 7); 0 disables it.
    """

    num_outputs: int = param(4, ge=2)
    loss: str = param("mse", choices=("mse", "snr"))
    snr_max: float = 30.0
    single_source_prob: float = param(0.5, ge=0.0, le=1.0)
    assignment: str = param("exhaustive", choices=("exhaustive", "efficient"), omit_at_default=True)
    sparsity: str = param("none", choices=("none", "l1", "l1_l2"), omit_at_default=True)
    sparsity_weight: float = param(0.0, ge=0.0, finite=True, omit_at_default=True)
    covariance_weight: float = param(0.0, ge=0.0, finite=True, omit_at_default=True)

    def validate(self) -> None:
        """Cross-field rules of the efficient-assignment and sparsity options.

        Raises:
            ConfigError: an exhaustive search too large, or a sparsity weight without a loss.
        """
        if self.assignment == "exhaustive":
            # the table of the 2^M mixing matrices must fit in memory (here; checked again on
            # the run's device when it trains): refused with the fix in the message
            from methods.mixit_assignment import check_exhaustive_fits

            try:
                check_exhaustive_fits(2, self.num_outputs)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.sparsity == "none" and self.sparsity_weight > 0:
            raise ConfigError(
                f"mixit.sparsity_weight={self.sparsity_weight} has no effect with "
                "mixit.sparsity=none: also set mixit.sparsity=l1 or mixit.sparsity=l1_l2"
            )


@register_method
class MixIT(Method):
    """MixIT (exhaustive or efficient assignment), optionally with the sparsity and covariance
    losses of sparse/efficient MixIT."""

    name = "mixit"
    display_name = "MixIT"
    config_schema = {"mixit": MixITConfig}
    config_sections = ("task", "train", "net", "mixit", "eval")

    def setup(self, teacher: Method | None) -> None:
        cfg = self.config
        self.model = build_separator(self.task, cfg.mixit.num_outputs, cfg).to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.train.lr)
        self.loss_fn = signal_loss(cfg.mixit.loss, cfg.mixit.snr_max)
        self.compile_networks()

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable(self) -> nn.Module:
        return self.model

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        batch = self.config.train.batch_size
        references = self.task.sample_mixit_references(
            batch, generator, self.config.mixit.single_source_prob
        )  # 1. x_n (B, 2, *D)
        mom = references.sum(dim=1)  # 2. x_bar = sum_n x_n
        estimates = self.call_net(self.model, mom)  # 3. s_hat (B, M, *D)
        opts = self.config.mixit
        # 4. eq. (1), A from eq. (1) (exhaustive) or eq. (3) (efficient)
        mixit, _ = mixit_loss(estimates, references, self.loss_fn, opts.assignment)
        loss = mixit
        logs: dict[str, Tensor] = {}  # 0-d tensors, read to the host at train.log_every
        if opts.sparsity != "none":
            sparsity = sparsity_loss(opts.sparsity, estimates, mom)  # C_l1 eq. (5) / C_l1/l2 (6)
            loss = loss + opts.sparsity_weight * sparsity  # 5. + lambda_sp C_sp
            logs["sparsity"] = sparsity.detach().mean()
        if opts.covariance_weight > 0:
            covariance = covariance_loss(estimates)  # C_cov, eq. (7)
            loss = loss + opts.covariance_weight * covariance  # 5. + lambda_cov C_cov
            logs["covariance"] = covariance.detach().mean()
        if logs:
            logs["mixit_loss"] = mixit.detach().mean()
        loss = loss.mean()
        grad_norm = optimize(self, loss)  # 6.
        return {"loss": loss.detach(), "grad_norm": grad_norm, **logs}

    @torch.no_grad()
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, *D)`` -> ``(B, K, *D)``: M outputs reduced to K (mixture-consistent)."""
        return reduce_to_k(self.call_net(self.model, mixtures), self.task.num_sources)


@register_method
class MixtureReference(Method):
    """The do-nothing reference row: each source is estimated by the mixture brought back to
    the sources' scale (``m / K``). Not trainable; always added to a table."""

    name = "mixture"
    display_name = "Mixture (no separation)"
    config_sections = ("task",)
    reference_only = True

    def setup(self, teacher: Method | None) -> None:
        pass

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        raise RuntimeError("the mixture reference is not trained")

    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        return self.task.mixture_estimate(mixtures)
