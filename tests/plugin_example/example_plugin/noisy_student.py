"""Noisy-student distillation of the MixIT teacher (Xie et al. 2020, applied to separation).

An example plug-in method: it owns its config section (``noisy_student``), keeps its preset
values beside it (``noisy_student.yaml``), starts from the trained ``mixit`` run of the same task
and seed (``teacher_method``), and uses the teacher only through the public
:meth:`methods.base.Method.separate`.

Training step:
    1. m ~ p(m)                                  B observed mixtures (no sources)
    2. X_bar = f_T(m)                            teacher estimates, no gradient
    3. m_noisy = m + noise_std * z, z ~ N(0, I)  the student sees a noisier input
    4. X_hat = f_theta(m_noisy)                  student estimates, K outputs
    5. L = min_P ||X_hat - P X_bar||^2           PIT (SURF eq. 3 with squared error)
    6. Adam step on theta
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.config import param
from benchmark.registry import register_method
from methods.base import Method, make_optimizer, optimize
from methods.model_factory import build_separator
from methods.pit import apply_permutation, pit_permutation


@dataclass
class NoisyStudentConfig:
    """Section ``noisy_student``.

    Attributes:
        noise_std: standard deviation of the Gaussian noise added to the student's input
            mixture, in data units (>= 0; 0 is plain distillation).
    """

    noise_std: float = param(0.1, ge=0.0, finite=True)


@register_method
class NoisyStudent(Method):
    """A student separator trained on noisy mixtures to reproduce the MixIT teacher."""

    name = "noisy_student"
    display_name = "Noisy Student (example plug-in)"
    teacher_method = "mixit"
    config_schema = {"noisy_student": NoisyStudentConfig}
    config_sections = ("task", "train", "net", "mixit", "noisy_student", "eval")
    paper_numbers = "paper.csv"

    def setup(self, teacher: Method | None) -> None:
        if teacher is None:
            raise ValueError("noisy_student needs its trained mixit teacher")
        self.teacher = teacher
        self.student = build_separator(self.task, self.task.num_sources, self.config)
        self.student = self.student.to(self.device)
        self.optimizer = make_optimizer(self.student.parameters(), self.config.train.lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def trainable(self) -> nn.Module:
        return self.student

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        mixtures = self.task.sample_mixtures(self.config.train.batch_size, generator)  # 1.
        with torch.no_grad():
            targets = self.teacher.separate(mixtures, generator)  # 2.
        noise = torch.randn(mixtures.shape, generator=generator, device=generator.device).to(
            mixtures.device
        )
        noisy = mixtures + self.config.noisy_student.noise_std * noise  # 3.
        estimates = self.student(noisy)  # 4.
        perm = pit_permutation(estimates, targets)  # 5.
        loss = (estimates - apply_permutation(targets, perm)).pow(2).mean()
        optimize(self, loss)  # 6.
        return {"loss": float(loss.detach())}

    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, *D)`` mixtures -> ``(B, K, *D)`` estimates."""
        return self.student(mixtures)
