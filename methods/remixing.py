"""Regression remixing baselines: ReMixIT (Tzinis et al. 2022) and Self-Remixing (Saijo and
Ogawa 2023), as formulated in SURF §2.3.

Training step (one iteration), teacher f_T initialised from the trained MixIT model:
    1. M ~ p(M): B observed mixtures
    2. X_bar = f_T(M)                                   teacher estimates (no gradient)
    3. Pi ~ U(S_BK), X_tilde = Pi X_bar                  (eq. 14)
    4. M_tilde = (I_B (x) 1^T) X_tilde                   (eq. 15)
    5. X_hat = f_theta(M_tilde)                          student estimates
    6. Upsilon = blkdiag(sigma_b), sigma_b = argmin ||x_hat_b - sigma x_tilde_b||^2   (PIT)
    7. ReMixIT:       L = ||X_hat - Upsilon X_tilde||^2                              (eq. 16)
       Self-Remixing: L = ||(I_B (x) 1^T) Pi^{-1} Upsilon^{-1} X_hat - M||^2         (eq. 17)
    8. Adam step on theta
    9. theta_T <- alpha theta_T + (1 - alpha) theta     EMA teacher

Teacher and student use the MixIT network itself (M outputs with mixture consistency, reduced
to K by the MixIT reduction rule), so both start exactly from the trained MixIT weights and the
EMA update is well defined.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import param
from benchmark.registry import register_method
from methods.base import Method, drop_compiled, make_optimizer, optimize
from methods.ema import ema_update, make_ema_copy
from methods.mixit_assignment import reduce_to_k
from methods.pit import apply_permutation, invert_permutation, pit_permutation
from methods.remix import Remix, remix, sum_to_mixtures, unshuffle

__all__ = ["RemixConfig", "ReMixIT", "SelfRemixing", "remixit_loss", "self_remixing_loss"]


@dataclass
class RemixConfig:
    """ReMixIT / Self-Remixing settings (SURF §2.3), section ``remix``.

    Attributes:
        ema_decay: alpha of the EMA teacher update ``theta_T <- alpha theta_T + (1 - alpha)
            theta``, in [0, 1].
    """

    ema_decay: float = param(0.999, ge=0.0, le=1.0)


def remixit_loss(student: Tensor, remixed: Remix, upsilon: Tensor) -> Tensor:
    """ReMixIT loss, SURF eq. (16): ``mean ||X_hat - Upsilon X_tilde||^2``.

    Args:
        student: ``(B, K, *D)`` student estimates ``X_hat`` of the remixed mixtures.
        remixed: the remix (``sources`` = ``X_tilde``).
        upsilon: ``(B, K)`` PIT permutations aligning ``X_tilde`` to ``X_hat``.

    Returns:
        Scalar mean squared error.
    """
    return (student - apply_permutation(remixed.sources, upsilon)).pow(2).mean()


def self_remixing_loss(
    student: Tensor, remixed: Remix, upsilon: Tensor, mixtures: Tensor
) -> Tensor:
    """Self-Remixing loss, SURF eq. (17).

    ``mean ||(I_B (x) 1^T) Pi^{-1} Upsilon^{-1} X_hat - M||^2``.

    Args:
        student: ``(B, K, *D)`` student estimates.
        remixed: the remix (``perm`` = ``Pi``).
        upsilon: ``(B, K)`` PIT permutations (student order -> remixed order).
        mixtures: ``(B, *D)`` the original observed mixtures ``M``.

    Returns:
        Scalar mean squared error against the observed mixtures.
    """
    in_remix_order = apply_permutation(student, invert_permutation(upsilon))  # Upsilon^{-1}
    routed = unshuffle(in_remix_order, remixed.perm)  # Pi^{-1}
    return (sum_to_mixtures(routed) - mixtures).pow(2).mean()  # (I_B (x) 1^T), ||.||^2


class _Remixing(Method):
    """Shared training loop of the two regression remixing baselines."""

    teacher_method = "mixit"
    config_schema = {"remix": RemixConfig}
    config_sections = ("task", "train", "net", "mixit", "remix", "eval")

    def setup(self, teacher: Method | None) -> None:
        if teacher is None or not hasattr(teacher, "model"):
            raise ValueError(f"{self.name} needs the trained MixIT model as teacher")
        # a copy of an uncompiled network (a compiled one's copy would run the original)
        self.student = drop_compiled(copy.deepcopy(teacher.model)).to(self.device)
        self.student.requires_grad_(True)
        self.student.train()
        self.ema = make_ema_copy(self.student)
        self.optimizer = make_optimizer(self.student.parameters(), self.config.train.lr)
        self.compile_networks()

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "ema": self.ema}

    def trainable(self) -> nn.Module:
        return self.student

    def _estimates(self, net: nn.Module, mixtures: Tensor) -> Tensor:
        return reduce_to_k(self.call_net(net, mixtures), self.task.num_sources)

    def loss(self, student: Tensor, remixed: Remix, upsilon: Tensor, mixtures: Tensor) -> Tensor:
        raise NotImplementedError

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        mixtures = self.task.sample_mixtures(cfg.train.batch_size, generator)  # 1. M
        with torch.no_grad():
            teacher_est = self._estimates(self.ema, mixtures)  # 2. X_bar = f_T(M)
        remixed = remix(teacher_est, generator)  # 3-4. eq. (14), (15)
        student_est = self._estimates(self.student, remixed.mixtures)  # 5. X_hat
        upsilon = pit_permutation(student_est, remixed.sources)  # 6. PIT
        loss = self.loss(student_est, remixed, upsilon, mixtures)  # 7. eq. (16) / (17)
        grad_norm = optimize(self, loss)  # 8.
        ema_update(self.ema, self.student, cfg.remix.ema_decay)  # 9.
        return {"loss": loss.detach(), "grad_norm": grad_norm}  # read at train.log_every

    @torch.no_grad()
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        net = self.ema if self.config.eval.model == "ema" else self.student
        return self._estimates(net, mixtures)


@register_method
class ReMixIT(_Remixing):
    """ReMixIT: student regresses the shuffled teacher estimates (SURF eq. 16)."""

    name = "remixit"
    display_name = "Regression (ReMixIT)"

    def loss(self, student: Tensor, remixed: Remix, upsilon: Tensor, mixtures: Tensor) -> Tensor:
        return remixit_loss(student, remixed, upsilon)


@register_method
class SelfRemixing(_Remixing):
    """Self-Remixing: student estimates routed back must rebuild the observed mixtures
    (SURF eq. 17)."""

    name = "self_remixing"
    display_name = "Regression (Self-Remixing)"

    def loss(self, student: Tensor, remixed: Remix, upsilon: Tensor, mixtures: Tensor) -> Tensor:
        return self_remixing_loss(student, remixed, upsilon, mixtures)
