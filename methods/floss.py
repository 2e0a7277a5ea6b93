"""Supervised flow matching reference (SURF Table 1 "Supervised Flow"): FLOSS (Scheibler et al.
2025, as reviewed in SURF §2.2), trained on **clean sources**.

SURF §5.1: "The supervised flow matching model is trained via the ReMixIT variant of Algorithm 1,
where the teacher model samples X_bar are replaced by ground truth sources." So this is
:class:`methods.surf.SurfRM` with lines [3]-[4] (:meth:`teacher_sources`) replaced by
``X_bar = x ~ p(x)`` (``task.sample_sources``) and every other line shared
(:meth:`methods.surf._Surf.train_step`):

    [3-4] X_bar = x ~ p(x)                       B clean K-source tuples (ground truth)
    [5-6] Pi X_bar, M_tilde                      global shuffle and remix (eq. 14-15): fresh
                                                 mixtures of ground-truth sources, i.e. draws
                                                 of p(x, m), the FLOSS training pairs
    [7-9] t ~ U(0, 1), X_0 from eq. (4)          mixture-consistent initial state
    [10]  PIT at t = 0 with stop-gradient        eq. (7)-(9)
    [11]  interpolant sigma x_1 path             eq. (11)
    [12-13] RM-FM loss ||v_theta - (sigma x_1 - x_0)||^2                 eq. (10)
    [15-16] Adam step, EMA copy

Sampling: ``eval.euler_steps``-step Euler (5, SURF D.4) of the EMA copy (``eval.model``) from the
eq. (4) initial state, as SURF. The network is :class:`methods.models.FlowVelocityNet` with its
zero-sum output projection, trained from scratch: no MixIT teacher and no MixIT initialisation
(``surf.beta``, ``surf.beta_decay_steps`` and ``surf.init_from_mixit`` are not used; the other
``surf`` fields are: EMA decay, noise scale, t sampling).
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.registry import register_method
from methods.base import Method, make_optimizer
from methods.ema import make_ema_copy
from methods.model_factory import build_flow_net, flow_loss_kind
from methods.surf import SurfRM

__all__ = ["Floss"]


@register_method
class Floss(SurfRM):
    """FLOSS: SURF's ReMixIT variant (RM-FM, eq. 24 = eq. 10) on ground-truth teacher samples."""

    name = "floss"
    display_name = "Supervised Flow"
    unsupervised = False
    generative = True
    teacher_method = None
    config_sections = ("task", "train", "net", "surf", "eval")

    def setup(self, teacher: Method | None) -> None:
        del teacher  # no teacher: the targets are ground truth
        cfg = self.config
        self.mixit = None  # no hybrid teacher (App. D.3 does not apply)
        self.student = build_flow_net(self.task, cfg)
        self.student.to(self.device).train()
        self.ema = make_ema_copy(self.student)
        self.optimizer = make_optimizer(self.student.parameters(), cfg.train.lr)
        self.flow_loss = flow_loss_kind(self.task, cfg)
        self.compile_networks()

    def beta(self, step: int) -> float:
        """No hybrid teacher, so no MixIT path: logged as 0 (``surf.beta`` is not used)."""
        return 0.0

    def teacher_sources(self, step: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 lines [3]-[4] with the teacher samples replaced by ground truth
        (SURF §5.1): ``(B, K, *D)`` clean sources from ``task.sample_sources``."""
        return self.task.sample_sources(self.config.train.batch_size, generator)
