"""MixPIT and MixCycle (Karamatli and Kirbiz 2022, "Unsupervised source separation via
self-supervised training", §III).

Both use one K-output separator f_theta with mixture consistency (the paper's masks add up to
one, §III-B; here :func:`methods.models.mixture_consistency`), K = 2 outputs for the two-source
image tasks, and the paper's loss: utterance-level PIT (eq. 1) over the negative thresholded
SNR (eq. 2, SNR_max = 30 dB). Training sees observed mixtures only (``task.sample_mixtures``).

MixPIT, one iteration (§III-A, Fig. 2c):
    1. draw two observed mixtures x_{i+j}, x_{k+l} (B pairs)
    2. mixture of mixtures x_{i+j} + x_{k+l}
    3. (x_hat_{i+j}, x_hat_{k+l}) = f_theta(x_{i+j} + x_{k+l})       two mixture estimates
    4. L = L_PIT(x_{i+j}, x_{k+l}, S_hat)                             eq. (1) with mixtures as
                                                                       references, eq. (2) loss
    5. Adam step

MixCycle, one iteration (§III-B, Fig. 3):
    if step < mixcycle.mixpit_steps:  MixPIT iteration as above        ("epoch <= I")
    else:
    1. draw B observed mixtures as B/2 pairs (x_{i+j}, x_{k+l})
    2. (s~_i, s~_j) = f_theta'(x_{i+j}), (s~_k, s~_l) = f_theta'(x_{k+l})   eq. (4); theta' is
       the current theta (theta' <- theta after every step, no EMA), frozen: no gradient
    3. S~_1 = RSWAP(s~_i, s~_j), S~_2 = RSWAP(s~_k, s~_l)              random swap per mixture
    4. R~ = S~_1 + S~_2: new mixture r = [S~_1]_r + [S~_2]_r, one estimate from each original
       mixture, e.g. (x~_{j+k}, x~_{i+l})                             eq. (5)
    5. S_hat_r = f_theta([R~]_r)                                       eq. (6)
    6. L_MC = sum_r L_PIT([S~_1]_r, [S~_2]_r, S_hat_r)                 PIT of each artificial
       mixture's two student estimates against the two teacher estimates it was made of
    7. Adam step (theta' <- theta is implicit: the teacher is the same network)

Step 6 follows eq. (6), the §III-B text and Fig. 2d ("considering the pair (s~_2, s~_3), the
best match between the two student source estimates and the teacher source estimates s~_2,
s~_3 is chosen by a permutation matrix P"); Fig. 3's listing writes the two PIT terms with
the row indices of S_hat_1 and S_hat_2 interchanged, which would pair outputs of different
artificial mixtures, so we read it as the caption and equations describe.

Batch convention: an iteration of either phase feeds B mixtures to the network with gradient
(B mixtures of mixtures, or B artificial mixtures); the cycle phase therefore draws B observed
mixtures (B/2 pairs, ``train.batch_size`` must be even), the MixPIT phase 2B, as in the paper
where a MixPIT epoch has half as many steps as a MixCycle epoch. The teacher pass runs with
the network in eval mode (f_theta' is a deterministic function of theta'; this only matters
with dropout), the student pass in train mode.

Inference (both): f_theta(x_{i+j}) gives the K source estimates directly (§III-A, last
paragraph).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import ConfigError, param
from benchmark.registry import register_method
from methods.base import Method, make_optimizer, optimize
from methods.losses import signal_loss
from methods.model_factory import build_separator
from methods.pit import apply_permutation, pit_loss

__all__ = [
    "CycleRemix",
    "MixCycle",
    "MixCycleConfig",
    "MixPIT",
    "PAPER_SNR_MAX_DB",
    "mixcycle_loss",
    "mixcycle_remix",
    "mixpit_loss",
]


@dataclass
class MixCycleConfig:
    """MixCycle settings (Karamatli and Kirbiz 2022, §III-B, Fig. 3), section ``mixcycle``.

    Attributes:
        mixpit_steps: the switch point: iterations ``0 .. mixpit_steps - 1`` train with MixPIT
            (Fig. 3, "if epoch <= I": initialisation with MixPIT), every later iteration with
            the MixCycle remix. The paper counts ``I = 50`` epochs (§IV-C), an epoch being one
            pass over its training set of observed mixtures; on Libri2Mix that is the first
            sixth or less of a run (Fig. 4: the jump at epoch 51 of the >= 300 shown). The image
            tasks draw mixtures on the fly and presets fix a step budget instead of epochs, so
            the presets keep that share: ``mixpit_steps`` is about ``train.steps / 6`` (``cpu``
            200 of 1,200; ``paper`` 33,000 of 200,000). The value is a step count and does not
            follow a later ``--set train.steps=...``.
    """

    mixpit_steps: int = param(33_000, ge=0)


#: SNR_max of the thresholded-SNR loss, eq. (2): "we use SNR_max = 30 dB as in [7]" (§II-A)
PAPER_SNR_MAX_DB = 30.0


def mixpit_loss(
    estimates: Tensor, references: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """MixPIT loss (§III-A, Fig. 2c): PIT, eq. (1), of the two mixture estimates against the
    two observed mixtures whose sum was the input.

    Args:
        estimates: ``(B, 2, *D)`` the network outputs ``f_theta(x_{i+j} + x_{k+l})``.
        references: ``(B, 2, *D)`` the observed mixtures ``x_{i+j}, x_{k+l}``.
        loss_fn: per-signal loss ``(estimates (B, 2, *D), references (B, 2, *D)) -> (B, 2)``
            (eq. 2).

    Returns:
        ``(B,)`` ``min_P [L(x_{i+j}, [P S_hat]_1) + L(x_{k+l}, [P S_hat]_2)]``.
    """
    if references.shape[1] != 2:
        raise ValueError(f"MixPIT separates two mixtures, got {references.shape[1]} references")
    loss, _ = pit_loss(estimates, references, loss_fn)
    return loss


@dataclass
class CycleRemix:
    """Result of :func:`mixcycle_remix` for ``P`` pairs of original mixtures (a, b).

    Attributes:
        mixtures: ``(P, 2, *D)`` the artificial mixtures ``R~``: ``mixtures[p, r]`` is new
            mixture ``r`` of pair ``p`` (eq. 5).
        sources: ``(P, 2, 2, *D)`` what each new mixture is made of: ``sources[p, r, 0]``
            comes from mixture a, ``sources[p, r, 1]`` from mixture b; ``mixtures[p, r] =
            sources[p, r].sum(0)``. These are the PIT targets of new mixture ``r`` (eq. 6).
        swap_a: ``(P, 2)`` long, the RSWAP of mixture a: new mixture ``r`` takes estimate
            ``swap_a[p, r]`` of ``estimates_a[p]`` (``[S~_1]_r``).
        swap_b: ``(P, 2)`` long, the same for mixture b (``[S~_2]_r``).
    """

    mixtures: Tensor
    sources: Tensor
    swap_a: Tensor
    swap_b: Tensor

    def flat_mixtures(self) -> Tensor:
        """``(2P, *D)``: the new mixtures as one batch (row ``2p + r``)."""
        return self.mixtures.flatten(0, 1)

    def flat_sources(self) -> Tensor:
        """``(2P, 2, *D)``: the targets, row ``2p + r`` matching :meth:`flat_mixtures`."""
        return self.sources.flatten(0, 1)


def _random_swaps(pairs: int, generator: torch.Generator | None, device) -> Tensor:
    """``(P, 2)`` uniform permutations of (0, 1): RSWAP of Fig. 3."""
    gen_device = generator.device if generator is not None else device
    flip = torch.randint(0, 2, (pairs, 1), generator=generator, device=gen_device).to(device)
    return torch.cat([flip, 1 - flip], dim=1)


def mixcycle_remix(
    estimates_a: Tensor,
    estimates_b: Tensor,
    generator: torch.Generator | None = None,
    swap_a: Tensor | None = None,
    swap_b: Tensor | None = None,
) -> CycleRemix:
    """MixCycle remix (§III-B, eq. 5; Fig. 3 lines RSWAP and ``R~ <- S~_1 + S~_2``).

    Each original mixture's two estimates are randomly swapped (RSWAP), then row ``r`` of both
    is summed: each new mixture takes one estimate from each original mixture, and each
    estimate is used exactly once. Over the random swaps the pair yields ``(x~_{j+k},
    x~_{i+l})`` or ``(x~_{i+k}, x~_{j+l})`` with equal probability (Fig. 3 caption).

    Args:
        estimates_a: ``(P, 2, *D)`` teacher estimates ``(s~_i, s~_j)`` of the first mixtures.
        estimates_b: ``(P, 2, *D)`` teacher estimates ``(s~_k, s~_l)`` of their partners.
        generator: random generator for the swaps (drawn on its device).
        swap_a: optional fixed ``(P, 2)`` swaps for ``estimates_a`` (tests).
        swap_b: optional fixed ``(P, 2)`` swaps for ``estimates_b`` (tests).

    Returns:
        :class:`CycleRemix` with the new mixtures, their constituent estimates and the swaps.
    """
    if estimates_a.shape != estimates_b.shape or estimates_a.shape[1] != 2:
        raise ValueError(
            "mixcycle_remix takes two (P, 2, *D) estimate tensors of the same shape, got "
            f"{tuple(estimates_a.shape)} and {tuple(estimates_b.shape)}"
        )
    pairs = estimates_a.shape[0]
    if swap_a is None:
        swap_a = _random_swaps(pairs, generator, estimates_a.device)
    if swap_b is None:
        swap_b = _random_swaps(pairs, generator, estimates_a.device)
    tilde_1 = apply_permutation(estimates_a, swap_a)  # S~_1 = RSWAP(f(x_{i+j}))
    tilde_2 = apply_permutation(estimates_b, swap_b)  # S~_2 = RSWAP(f(x_{k+l}))
    sources = torch.stack([tilde_1, tilde_2], dim=2)  # (P, r, origin, *D)
    return CycleRemix(
        mixtures=tilde_1 + tilde_2,  # R~ = S~_1 + S~_2
        sources=sources,
        swap_a=swap_a,
        swap_b=swap_b,
    )


def mixcycle_loss(
    student: Tensor, remixed: CycleRemix, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """MixCycle loss ``L_MC`` (§III-B, eq. 6, Fig. 2d, Fig. 3): for every artificial mixture,
    PIT, eq. (1), of its two student estimates against the two teacher estimates it is the
    sum of.

    Args:
        student: ``(2P, 2, *D)`` ``f_theta`` of :meth:`CycleRemix.flat_mixtures`.
        remixed: the remix (targets :meth:`CycleRemix.flat_sources`, no gradient expected).
        loss_fn: per-signal loss (eq. 2).

    Returns:
        ``(2P,)`` PIT loss per artificial mixture.
    """
    loss, _ = pit_loss(student, remixed.flat_sources(), loss_fn)
    return loss


class _MixPITBase(Method):
    """Shared network, optimizer and MixPIT iteration of MixPIT and MixCycle."""

    unsupervised = True
    generative = False
    teacher_method = None

    def setup(self, teacher: Method | None) -> None:
        del teacher
        k = self.task.num_sources
        if k != 2:
            raise ValueError(
                f"{self.name} is defined for two-source mixtures (paper §II-III): two mixtures "
                f"in, two outputs; task {self.task.name!r} has K={k}"
            )
        self.model = build_separator(self.task, k, self.config).to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), self.config.train.lr)
        self.loss_fn = signal_loss("snr", PAPER_SNR_MAX_DB)  # eq. (2)
        self.compile_networks()

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable(self) -> nn.Module:
        return self.model

    def mixpit_step(self, generator: torch.Generator) -> dict[str, float]:
        """One MixPIT iteration (§III-A, Fig. 2c; Fig. 3 "Initialization with MixPIT")."""
        batch = self.config.train.batch_size
        x_a = self.task.sample_mixtures(batch, generator)  # 1. x_{i+j}
        x_b = self.task.sample_mixtures(batch, generator)  # 1. x_{k+l}
        estimates = self.call_net(self.model, x_a + x_b)  # 2-3. S~ = f_theta(x_{i+j} + x_{k+l})
        references = torch.stack([x_a, x_b], dim=1)
        loss = mixpit_loss(estimates, references, self.loss_fn).mean()  # 4. eq. (1), (2)
        grad_norm = optimize(self, loss)  # 5. theta <- STEP(theta, grad L_PIT)
        return {"loss": loss.detach(), "grad_norm": grad_norm}  # read at train.log_every

    @torch.no_grad()
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, *D)`` -> ``(B, K, *D)``: the K outputs of f_theta(x_{i+j}) (§III-A)."""
        return self.call_net(self.model, mixtures)


@register_method
class MixPIT(_MixPITBase):
    """MixPIT: separate mixtures of two mixtures into two mixture estimates with PIT."""

    name = "mixpit"
    display_name = "MixPIT"
    config_sections = ("task", "train", "net", "eval")

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        return self.mixpit_step(generator)


@register_method
class MixCycle(_MixPITBase):
    """MixCycle: MixPIT for ``mixcycle.mixpit_steps`` iterations, then PIT on remixed
    estimates of the current model (Fig. 3)."""

    name = "mixcycle"
    display_name = "MixCycle"
    config_schema = {"mixcycle": MixCycleConfig}
    config_sections = ("task", "train", "net", "mixcycle", "eval")

    @classmethod
    def check_config(cls, config) -> None:
        """MixCycle pairs the observed mixtures of a batch (Fig. 3): ``train.batch_size`` must
        be even.

        Raises:
            ConfigError: an odd batch size.
        """
        if config.train.batch_size % 2:
            raise ConfigError(
                "mixcycle pairs the observed mixtures of a batch (Fig. 3): train.batch_size "
                f"must be even, got {config.train.batch_size}"
            )

    def setup(self, teacher: Method | None) -> None:
        super().setup(teacher)
        if self.config.train.batch_size % 2:
            raise ValueError(
                f"mixcycle needs an even train.batch_size, got {self.config.train.batch_size}"
            )

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        if step < self.config.mixcycle.mixpit_steps:  # Fig. 3: "if epoch <= I"
            return {**self.mixpit_step(generator), "cycle": 0.0}
        return {**self.cycle_step(generator), "cycle": 1.0}

    @torch.no_grad()
    def teacher_estimates(self, mixtures: Tensor) -> Tensor:
        """``f_theta'(x)`` with ``theta' = theta`` (eq. 4), frozen: no gradient, eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.call_net(self.model, mixtures)
        finally:
            self.model.train(was_training)

    def cycle_step(self, generator: torch.Generator) -> dict[str, float]:
        """One main MixCycle iteration (§III-B, Fig. 3 ``else`` branch)."""
        pairs = self.config.train.batch_size // 2
        observed = self.task.sample_mixtures(2 * pairs, generator)  # 1. (x_{i+j}, x_{k+l})
        teacher = self.teacher_estimates(observed)  # 2. eq. (4), theta' frozen
        remixed = mixcycle_remix(teacher[:pairs], teacher[pairs:], generator)  # 3-4. eq. (5)
        student = self.call_net(self.model, remixed.flat_mixtures())  # 5. eq. (6)
        loss = mixcycle_loss(student, remixed, self.loss_fn).mean()  # 6. L_MC
        grad_norm = optimize(self, loss)  # 7. theta <- STEP(theta, grad L_MC); theta' <- theta
        return {"loss": loss.detach(), "grad_norm": grad_norm}
