"""Network dispatch by task modality: the image U-Nets (:mod:`methods.models`) or the audio
networks (:mod:`methods.audio_nets`).

Methods build their networks only through these functions, so a new modality or network family
is one branch here.

- :func:`build_separator`: regression separator, mixture ``(B, *D)`` -> ``(B, M, *D)``
  mixture-consistent (image: :class:`methods.models.RegressionSeparator`; audio:
  :class:`methods.audio_nets.ConvTasNet`, SURF D.3/D.5).
- :func:`build_flow_net`: velocity field ``v(x_t (B, K, *D), t (B,), m (B, *D))`` with zero-sum
  output (image: :class:`methods.models.FlowVelocityNet`; audio:
  :class:`methods.audio_nets.TFFlowNet`, SURF D.5 / Table 7).
- :func:`build_score_net`: noise-conditional score network ``s(x (N, *D), sigma (N,))`` for
  BASIS (image: :class:`methods.score_networks.ImageScoreNet`; audio:
  :class:`methods.score_networks.WaveformScoreNet`).
- :func:`is_audio` and :func:`flow_loss_kind` for the modality-dependent choices.
"""

from __future__ import annotations

from torch import nn

from benchmark.config import RunConfig
from tasks.base import Task

__all__ = [
    "build_flow_net",
    "build_score_net",
    "build_separator",
    "flow_loss_kind",
    "is_audio",
]


def is_audio(task: Task) -> bool:
    """True for audio tasks (``Task.modality``, the one answer: waveforms ``(T,)``,
    ``task.sample_rate`` in Hz)."""
    return task.modality == "audio"


def _sample_rate(task: Task) -> int:
    rate = getattr(task, "sample_rate", None)
    if not rate:
        raise ValueError(f"audio task {task.name!r} has no sample_rate (Hz)")
    return int(rate)


def build_separator(task: Task, num_outputs: int, cfg: RunConfig) -> nn.Module:
    """Regression separator with ``num_outputs`` (M) mixture-consistent outputs.

    Image tasks: the NCSN++ U-Net without time conditioning (``cfg.net``); audio tasks:
    Conv-TasNet with sigmoid masks and mixture consistency (``cfg.audio_net``).
    """
    if is_audio(task):
        from methods.audio_nets import ConvTasNet

        return ConvTasNet(num_outputs, cfg.audio_net)
    from methods.models import RegressionSeparator

    return RegressionSeparator(task.sample_shape, num_outputs, task.num_sources, cfg.net)


def build_flow_net(task: Task, cfg: RunConfig) -> nn.Module:
    """Flow velocity network for the task's K sources, output projected to zero sum over
    sources (FLOSS), so Euler iterates keep ``sum_k x_t^(k) = m``.

    Image tasks: the conditional NCSN++ U-Net (``cfg.net``); audio tasks: the
    permutation-equivariant time-frequency network (``cfg.audio_net``).
    """
    if is_audio(task):
        from methods.audio_nets import TFFlowNet

        return TFFlowNet(_sample_rate(task), task.num_sources, cfg.audio_net)
    from methods.models import FlowVelocityNet

    return FlowVelocityNet(task.sample_shape, task.num_sources, cfg.net)


def build_score_net(task: Task, cfg: RunConfig) -> nn.Module:
    """BASIS's score network for the task's single sources: the NCSN++ U-Net (``cfg.net``) on
    image tasks, :class:`methods.score_networks.WaveformScoreNet` (``cfg.audio_net``) on audio
    tasks; both conditioned on ``log sigma`` and divided by ``sigma``."""
    from methods.score_networks import build_score_network

    if is_audio(task):
        return build_score_network(task.sample_shape, cfg.audio_net, kind="waveform")
    return build_score_network(task.sample_shape, cfg.net)


def flow_loss_kind(task: Task, cfg: RunConfig) -> str:
    """``"mse"`` or ``"log_mse"``: ``surf.flow_loss``, with ``"auto"`` resolved to the log of the
    velocity squared error on audio (SURF D.5: "we train with a log-loss on the flow matching
    velocity squared error", following Scheibler et al. 2025) and the squared error on images
    (SURF D.4, Code Listing 1)."""
    kind = cfg.surf.flow_loss
    if kind == "auto":
        return "log_mse" if is_audio(task) else "mse"
    return kind
