"""SURF: Separation via Unsupervised Remixing Flow (Li et al. 2026), Algorithm 1/2 and Code
Listing 1, with the hybrid teacher of Appendix D.3.

Training step (Algorithm 2; line numbers of Algorithm 1 in brackets):
    [3]  M ~ p(M)                                         B observed mixtures
    [4]  X_bar ~ p_theta_T(X_bar | M)                     teacher sample: 5-step Euler solve of
                                                          the hybrid velocity v_beta (App. D.3)
    [5]  Pi ~ U(S_BK), X_tilde_1 = Pi X_bar               global shuffle (eq. 14)
    [6]  M_tilde = (I_B (x) 1^T) X_tilde_1                remixed mixtures (eq. 15)
    [7]  t ~ U(0, 1)
    [8-9] X_tilde_0 = (1/K)(I_B (x) 1) M_tilde + (I_B (x) P_perp) Z          (eq. 4)
    [10] Upsilon = argmin_Gamma ||v_theta(X_0, 0, M_tilde) - (Gamma X_1 - X_0)||^2
                                                          PIT at t = 0, stop-gradient (eq. 21-22)
    [11] X_t = (1 - t) X_0 + t Upsilon X_1                (eq. 20)
    [12] R_t = v_theta(X_t, t, M_tilde) - (Upsilon X_1 - X_0)                (eq. 23)
    [13] RM-FM: L = ||R_t||^2                             (eq. 24)
    [14] SR-FM: L = ||(I_B (x) 1^T) Pi^{-1} Upsilon^{-1} R_t||^2            (eq. 30)
    [15] Adam step on theta
    [16] theta_T <- alpha theta_T + (1 - alpha) theta     EMA teacher

Lines [3]-[4] are :meth:`_Surf.teacher_sources`; supervised flow matching (FLOSS,
:mod:`methods.floss`) replaces them by ground-truth sources and shares every other line.

Norms are averaged over elements as in Code Listing 1 (``.mean()``), which rescales the loss by
a constant. The hybrid threshold beta follows :func:`methods.ema.beta_schedule` (1 -> 0 linearly
over ``surf.beta_decay_steps``) or a constant (``surf.beta``). Student and EMA teacher start from
the MixIT network's shape-matching weights (``surf.init_from_mixit``); with beta = 1 at step 0 the
first teacher samples are exactly the MixIT estimates. Evaluation samples ``eval.model`` (the EMA
teacher by default) with the ``eval.euler_steps``-step Euler solver from the eq. (4) state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import ConfigError, param
from benchmark.registry import register_method
from methods.base import Method, make_optimizer, optimize
from methods.ema import beta_schedule, ema_update, make_ema_copy
from methods.flow import (
    clean_estimate,
    euler_sample,
    hybrid_euler_sample,
    initial_state,
    interpolant,
    noise_sigma,
    target_velocity,
)
from methods.model_factory import build_flow_net, flow_loss_kind, is_audio
from methods.models import transfer_matching_weights
from methods.pit import apply_permutation, invert_permutation, pit_permutation
from methods.remix import remix, sum_to_mixtures, unshuffle

__all__ = ["SurfConfig", "SurfRM", "SurfSR", "reduce_flow_error", "rm_fm_loss", "sr_fm_loss"]


@dataclass
class SurfConfig:
    """SURF settings (SURF §3, Algorithm 1, Appendix D.3), section ``surf``; also read by
    supervised flow matching (:mod:`methods.floss`).

    Attributes:
        ema_decay: alpha of the EMA teacher, ``theta_T <- alpha theta_T + (1 - alpha) theta``,
            in [0, 1].
        beta: hybrid-teacher threshold: ``"linear"`` for the paper's schedule (1 -> 0 over
            ``beta_decay_steps``), or a constant in [0, 1] as a string or number (Table 9).
        beta_decay_steps: iterations of the linear beta decay (200k in the paper).
        euler_steps: Euler steps of the teacher sampler (5).
        noise_scale: sigma of the initial state's Gaussian (eq. 4 uses 1).
        noise_reference: ``"absolute"`` (sigma = ``noise_scale`` in data units) or
            ``"mixture_rms"`` (sigma = ``noise_scale * rms(m) / sqrt(K)`` per mixture, for audio
            corpora at file amplitude; :func:`methods.flow.noise_sigma`).
        t_sampling: ``"batch"`` (one t per iteration, as Algorithm 2 line 11 and Code Listing 1)
            or ``"sample"`` (one t per mixture).
        init_from_mixit: initialise student and EMA teacher from the MixIT network's
            shape-matching weights (everything but the input/output convolutions and the time
            embedding, which the regression network does not have). Image tasks only: on audio
            the MixIT network (Conv-TasNet) and the flow network share no layer, and the
            transfer is skipped with a logged note.
        flow_loss: reduction of the flow-matching residual: ``"mse"`` (mean squared error, SURF
            Code Listing 1), ``"log_mse"`` (the log of the velocity squared error per mixture,
            ``10 log10(mean(R^2) + 1e-8)`` averaged over mixtures, SURF D.5 following Scheibler
            et al. 2025), or ``"auto"``: ``log_mse`` on audio tasks, ``mse`` on images.
    """

    ema_decay: float = param(0.999, ge=0.0, le=1.0)
    beta: str = "linear"
    beta_decay_steps: int = param(200_000, ge=1)
    euler_steps: int = param(5, ge=1)
    noise_scale: float = param(1.0, gt=0.0, finite=True)
    noise_reference: str = param(
        "absolute", choices=("absolute", "mixture_rms"), omit_at_default=True
    )
    t_sampling: str = param("batch", choices=("batch", "sample"))
    init_from_mixit: bool = True
    flow_loss: str = param("auto", choices=("auto", "mse", "log_mse"), omit_at_default=True)

    def validate(self) -> None:
        """``beta`` is ``"linear"`` or a number in [0, 1].

        Raises:
            ConfigError: any other value.
        """
        if self.beta == "linear":
            return
        try:
            beta = float(self.beta)
        except ValueError:
            raise ConfigError(
                f"surf.beta must be 'linear' or a number in [0, 1], got {self.beta!r}"
            ) from None
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"surf.beta must be in [0, 1], got {beta}")


log = logging.getLogger("benchmark")

#: added to the per-mixture mean squared error inside the log of ``flow_loss="log_mse"``
LOG_MSE_EPS = 1e-8


def reduce_flow_error(error: Tensor, kind: str = "mse") -> Tensor:
    """Reduce a flow-matching error tensor to the scalar loss.

    ``"mse"``: ``mean(error^2)`` over everything (Code Listing 1). ``"log_mse"``: the log of
    the velocity squared error per mixture, ``mean_b 10 log10(mean(error_b^2) + 1e-8)`` in dB
    (SURF D.5, following Scheibler et al. 2025), the loss of the flow models on audio.

    Args:
        error: ``(B, ...)``, one row per (remixed or observed) mixture.
        kind: ``"mse"`` or ``"log_mse"``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "mse":
        return error.pow(2).mean()
    if kind == "log_mse":
        per_mixture = error.pow(2).flatten(1).mean(-1)
        return (10.0 * torch.log10(per_mixture + LOG_MSE_EPS)).mean()
    raise ValueError(f"flow loss must be 'mse' or 'log_mse', got {kind!r}")


def rm_fm_loss(residual: Tensor, kind: str = "mse") -> Tensor:
    """RM-FM loss, SURF eq. (24) / Algorithm 1 line 13: ``mean(R_t^2)`` (``kind="mse"``), or
    its per-mixture log (``kind="log_mse"``, :func:`reduce_flow_error`).

    Args:
        residual: ``(B, K, *D)`` drift residual ``R_t`` (eq. 23) in aligned order.
        kind: ``"mse"`` or ``"log_mse"``.
    """
    return reduce_flow_error(residual, kind)


def sr_fm_loss(residual: Tensor, upsilon: Tensor, perm: Tensor, kind: str = "mse") -> Tensor:
    """SR-FM loss, SURF eq. (30) / Algorithm 1 line 14 / Code Listing 1.

    ``mean( ((I_B (x) 1^T) Pi^{-1} Upsilon^{-1} R_t)^2 )``: residuals are routed back from the
    aligned order (``Upsilon^{-1}``) and from the global shuffle (``Pi^{-1}``) to the observed
    mixture they came from, summed over its K sources and squared.

    Args:
        residual: ``(B, K, *D)`` ``R_t`` in aligned order.
        upsilon: ``(B, K)`` PIT permutations (aligned row k is remixed row ``upsilon[b, k]``).
        perm: ``(B*K,)`` global shuffle ``Pi`` of :func:`methods.remix.remix`.
        kind: ``"mse"``, or ``"log_mse"`` for the per-mixture log (:func:`reduce_flow_error`).

    Returns:
        Scalar loss.
    """
    unaligned = apply_permutation(residual, invert_permutation(upsilon))  # Upsilon^{-1}
    unshuffled = unshuffle(unaligned, perm)  # Pi^{-1}
    return reduce_flow_error(sum_to_mixtures(unshuffled), kind)  # (I_B (x) 1^T), ||.||^2


class _Surf(Method):
    """Shared SURF training loop; subclasses pick the RM-FM or SR-FM objective."""

    generative = True
    teacher_method = "mixit"
    config_schema = {"surf": SurfConfig}
    config_sections = ("task", "train", "net", "mixit", "surf", "eval")

    def setup(self, teacher: Method | None) -> None:
        if teacher is None or not hasattr(teacher, "model"):
            raise ValueError(f"{self.name} needs the trained MixIT model as teacher")
        cfg = self.config
        self.mixit = teacher  # frozen f_MixIT of the hybrid teacher (App. D.3)
        self.mixit.eval_mode()
        self.student = build_flow_net(self.task, cfg)
        self.flow_loss = flow_loss_kind(self.task, cfg)
        if cfg.surf.init_from_mixit and is_audio(self.task):
            # Conv-TasNet (MixIT) and the time-frequency flow network share no layer (D.3, D.5)
            log.info(
                "surf.init_from_mixit: skipped on audio (Conv-TasNet and the flow network "
                "share no layer); the flow network starts from its initialisation"
            )
        elif cfg.surf.init_from_mixit:
            transfer_matching_weights(teacher.model.unet, self.student.unet)
        self.student.to(self.device).train()
        self.ema = make_ema_copy(self.student)
        self.optimizer = make_optimizer(self.student.parameters(), cfg.train.lr)
        self.compile_networks()

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "ema": self.ema}

    def trainable(self) -> nn.Module:
        return self.student

    def beta(self, step: int) -> float:
        """Hybrid-teacher threshold at ``step`` (App. D.3; Table 9 constants)."""
        surf = self.config.surf
        if surf.beta == "linear":
            return beta_schedule(step, surf.beta_decay_steps)
        return float(surf.beta)

    @torch.inference_mode()
    def teacher_sample(self, mixtures: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        """``X_bar ~ p_theta_T(. | M)``: Euler solve of the hybrid velocity (App. D.3).

        Runs under ``torch.inference_mode`` (no gradient, no autograd bookkeeping); the MixIT
        estimate is computed only when ``beta > 0`` and the EMA flow teacher only at grid times
        ``t_i >= beta``, decided from Python floats (:func:`methods.flow.hybrid_euler_sample`).

        Args:
            mixtures: ``(B, *D)``.
            beta: hybrid threshold; ``t < beta`` follows the straight path to the MixIT
                estimate, ``t >= beta`` the EMA flow teacher.
            generator: noise for the initial state.

        Returns:
            ``(B, K, *D)`` mixture-consistent teacher estimates.
        """
        surf = self.config.surf
        x0 = initial_state(
            mixtures, self.task.num_sources, self._sigma(mixtures), generator=generator
        )
        mixit_est = self.mixit.separate(mixtures, generator) if beta > 0 else None
        return hybrid_euler_sample(
            x0,
            mixit_est,
            lambda x, s: self.call_net(self.ema, x, s, mixtures),
            beta,
            surf.euler_steps,
        )

    def _sigma(self, mixtures: Tensor) -> float | Tensor:
        """``sigma`` of eq. 4 for these mixtures (``surf.noise_scale``, ``noise_reference``)."""
        surf = self.config.surf
        return noise_sigma(mixtures, self.task.num_sources, surf.noise_scale, surf.noise_reference)

    def _sample_t(self, batch: int, generator: torch.Generator) -> Tensor:
        if self.config.surf.t_sampling == "batch":  # Algorithm 2 line 11, Code Listing 1
            t = torch.rand(1, generator=generator, device=generator.device).expand(batch)
        else:
            t = torch.rand(batch, generator=generator, device=generator.device)
        return t.to(self.device)

    def loss(self, residual: Tensor, upsilon: Tensor, perm: Tensor) -> Tensor:
        raise NotImplementedError

    def teacher_sources(self, step: int, generator: torch.Generator) -> Tensor:
        """Where ``X_bar`` comes from, Algorithm 1 lines [3]-[4]: draw ``M ~ p(M)`` and sample
        the hybrid teacher ``X_bar ~ p_theta_T(X_bar | M)`` (App. D.3) at ``beta(step)``.

        Supervised flow matching (:class:`methods.floss.Floss`) overrides this with ground-truth
        sources and otherwise shares :meth:`train_step`.

        Returns:
            ``(B, K, *D)`` teacher sources, ``B = train.batch_size``.
        """
        mixtures = self.task.sample_mixtures(self.config.train.batch_size, generator)  # [3] M
        return self.teacher_sample(mixtures, self.beta(step), generator)  # [4] X_bar

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        k = self.task.num_sources
        beta = self.beta(step)
        teacher_est = self.teacher_sources(step, generator)  # [3] M, [4] X_bar
        remixed = remix(teacher_est, generator)  # [5-6] eq. (14), (15)
        x1, m_tilde = remixed.sources, remixed.mixtures
        t = self._sample_t(x1.shape[0], generator)  # [7]
        x0 = initial_state(m_tilde, k, self._sigma(m_tilde), generator=generator)  # [8-9] eq. 4
        with torch.inference_mode():  # [10] PIT at t = 0 with stop-gradient, eq. (21)-(22)
            zeros = torch.zeros_like(t)
            v0 = self.call_net(self.student, x0, zeros, m_tilde)
            x1_hat = clean_estimate(x0, v0, zeros)  # eq. (9)
            upsilon = pit_permutation(x1_hat, x1)
        x1_aligned = apply_permutation(x1, upsilon)  # Upsilon X_1
        x_t = interpolant(x0, x1_aligned, t)  # [11] eq. (20)
        velocity = self.call_net(self.student, x_t, t, m_tilde)
        residual = velocity - target_velocity(x0, x1_aligned)  # [12] eq. (23)
        loss = self.loss(residual, upsilon, remixed.perm)  # [13] / [14]
        grad_norm = optimize(self, loss)  # [15]
        ema_update(self.ema, self.student, cfg.surf.ema_decay)  # [16]
        # 0-d tensors: read to the host by the training loop at train.log_every only
        return {"loss": loss.detach(), "grad_norm": grad_norm, "beta": beta}

    @torch.no_grad()
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """5-step Euler sample of ``eval.model`` (EMA teacher or student) from eq. (4)."""
        cfg = self.config
        net = self.ema if cfg.eval.model == "ema" else self.student
        x0 = initial_state(
            mixtures, self.task.num_sources, self._sigma(mixtures), generator=generator
        )
        return euler_sample(
            lambda x, t: self.call_net(net, x, t, mixtures), x0, cfg.eval.euler_steps
        )


@register_method
class SurfRM(_Surf):
    """SURF with the ReMixIT objective, RM-FM (eq. 24)."""

    name = "surf_rm"
    display_name = "SURF (ReMixIT)"

    def loss(self, residual: Tensor, upsilon: Tensor, perm: Tensor) -> Tensor:
        return rm_fm_loss(residual, getattr(self, "flow_loss", "mse"))


@register_method
class SurfSR(_Surf):
    """SURF with the Self-Remixing objective, SR-FM (eq. 30)."""

    name = "surf_sr"
    display_name = "SURF (Self-Remixing)"

    def loss(self, residual: Tensor, upsilon: Tensor, perm: Tensor) -> Tensor:
        return sr_fm_loss(residual, upsilon, perm, getattr(self, "flow_loss", "mse"))
