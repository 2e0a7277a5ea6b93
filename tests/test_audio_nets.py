"""Audio networks (Conv-TasNet, the time-frequency flow network), the modality dispatch, the
log flow loss, the audio config section's place in run identities, and every method's training
step and separation on a small synthetic audio task (waveforms (B, T), 8 kHz)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import torch

from benchmark.config import (
    RunConfig,
    config_hash,
    identity_dict,
    resolve_config,
)
from benchmark.registry import get_method
from methods.audio_nets import AudioNetConfig, ConvTasNet, TFFlowNet, mel_band_edges
from methods.flow import euler_sample, initial_state
from methods.model_factory import build_flow_net, build_separator, flow_loss_kind
from methods.models import FlowVelocityNet, RegressionSeparator
from methods.surf import reduce_flow_error, rm_fm_loss, sr_fm_loss
from tasks.base import EvalSet, Task

SMALL = AudioNetConfig(
    tasnet_n=16,
    tasnet_l=8,
    tasnet_b=8,
    tasnet_h=16,
    tasnet_p=3,
    tasnet_x=2,
    tasnet_r=1,
    flow_bands=8,
    flow_dim=16,
    flow_blocks=1,
    flow_heads=2,
)


class ToyAudioTask(Task):
    """Two-source synthetic audio: a random-frequency sine and white noise at 8 kHz, T = 800
    samples (0.1 s), mixtures in the sum convention m = x_1 + x_2."""

    name = "toy_audio"
    display_name = "Toy audio"
    modality = "audio"
    sample_rate = 8000
    metrics: ClassVar[dict[str, str]] = {"si_sdr": "↑"}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (800,)

    def sample_sources(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        t = torch.arange(800) / self.sample_rate
        freq = 200 + 1800 * torch.rand(batch_size, 1, generator=generator)
        sine = torch.sin(2 * torch.pi * freq * t)
        noise = 0.5 * torch.randn(batch_size, 800, generator=generator)
        return torch.stack([sine, noise], dim=1)

    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.sample_sources(batch_size, generator).sum(1)

    def sample_mixit_references(self, batch_size, generator, single_source_prob=0.5):
        return torch.stack([self.sample_mixtures(batch_size, generator) for _ in range(2)], dim=1)

    def eval_set(self) -> EvalSet:
        sources = self.sample_sources(4, torch.Generator().manual_seed(self.config.seed))
        return EvalSet(sources.sum(1), sources)

    def score(self, estimates, sources, mixtures) -> pd.DataFrame:
        err = (estimates - sources).pow(2).sum(-1).mean(-1)
        snr = 10 * torch.log10(sources.pow(2).sum(-1).mean(-1) / err)
        return pd.DataFrame({"mixture": range(len(snr)), "si_sdr": snr.numpy()})


def _toy_config(method: str) -> RunConfig:
    cfg = resolve_config(method, "mnist", 0, "smoke")  # smoke train/eval values
    cfg.task.name = "toy_audio"
    cfg.audio_net = SMALL
    cfg.train.batch_size = 4
    return cfg


# -- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [800, 803])
def test_conv_tasnet_outputs_sum_to_the_mixture(length):
    torch.manual_seed(0)
    net = ConvTasNet(4, SMALL)
    mixture = torch.randn(3, length)
    out = net(mixture)
    assert out.shape == (3, 4, length)
    torch.testing.assert_close(out.sum(1), mixture, atol=1e-5, rtol=0)
    # masks differ per output: the separation is not the trivial m / M
    assert (out - mixture[:, None] / 4).abs().max() > 1e-3
    # positively homogeneous: scaling the mixture scales the estimates (gLN eps aside)
    torch.testing.assert_close(net(3.0 * mixture), 3.0 * out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="must be even"):
        ConvTasNet(2, AudioNetConfig(tasnet_l=15))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        net(torch.randn(3, 1, length))


def _randomise_output(net: TFFlowNet) -> None:
    for head in net.merge:  # the output layer is zero-initialised; make it non-trivial
        torch.nn.init.normal_(head[1].weight, std=0.5)


def test_flow_net_is_permutation_equivariant_and_zero_sum():
    torch.manual_seed(0)
    net = TFFlowNet(8000, 3, SMALL).eval()
    _randomise_output(net)
    x_t, mixture, t = torch.randn(2, 3, 800), torch.randn(2, 800), torch.rand(2)
    v = net(x_t, t, mixture)
    assert v.shape == (2, 3, 800)
    torch.testing.assert_close(v.sum(1), torch.zeros(2, 800), atol=1e-5, rtol=0)
    assert v.abs().max() > 1e-3
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(net(x_t[:, perm], t, mixture), v[:, perm], atol=1e-5, rtol=1e-4)
    # the output depends on t and on the mixture (conditioning is wired in)
    assert (net(x_t, 1 - t, mixture) - v).abs().max() > 1e-4
    assert (net(x_t, t, 2 * mixture) - v).abs().max() > 1e-4
    # Euler iterates stay mixture-consistent (FLOSS)
    x0 = initial_state(mixture, 3, 1.0, generator=torch.Generator().manual_seed(1))
    x1 = euler_sample(lambda x, s: net(x, s, mixture), x0, 3)
    torch.testing.assert_close(x1.sum(1), mixture, atol=1e-4, rtol=0)


def test_flow_net_stft_follows_table7():
    net = TFFlowNet(16000, 2, AudioNetConfig(flow_dim=8, flow_blocks=1, flow_heads=2))
    assert (net.n_fft, net.hop) == (320, 160)  # 20 ms frames, 10 ms hop at 16 kHz
    torch.testing.assert_close(net.window.pow(2).sum(), torch.tensor(1.0))  # energy-normalised
    edges = mel_band_edges(161, 16000, 80)
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert edges[0] == 0 and edges[-1] == 161 and min(widths) >= 1
    assert widths[-1] > widths[0]  # mel spacing: wider bands at high frequencies
    assert 60 <= len(widths) <= 80
    with pytest.raises(ValueError, match="not usable"):
        TFFlowNet(100, 2, AudioNetConfig(flow_frame_ms=5.0))


def test_factory_dispatches_on_modality(data_root):
    from tasks.images import MnistTask

    cfg = resolve_config("surf_sr", "mnist", 0, "smoke")
    image = MnistTask(cfg.task, data_root)
    assert isinstance(build_separator(image, 4, cfg), RegressionSeparator)
    assert isinstance(build_flow_net(image, cfg), FlowVelocityNet)
    assert flow_loss_kind(image, cfg) == "mse"
    audio = ToyAudioTask(cfg.task, Path("."))
    cfg.audio_net = SMALL
    assert isinstance(build_separator(audio, 4, cfg), ConvTasNet)
    assert isinstance(build_flow_net(audio, cfg), TFFlowNet)
    assert flow_loss_kind(audio, cfg) == "log_mse"
    cfg.surf.flow_loss = "mse"
    assert flow_loss_kind(audio, cfg) == "mse"


# -- losses and config ------------------------------------------------------------------------


def test_log_flow_loss_is_the_per_mixture_log_of_the_squared_error():
    residual = torch.tensor([[[1.0, -1.0], [1.0, 1.0]], [[0.1, 0.1], [0.1, -0.1]]])  # (2, 2, 2)
    # mixture 0: mean square 1 -> 0 dB; mixture 1: 0.01 -> -20 dB; mean -10 dB
    assert reduce_flow_error(residual, "log_mse").item() == pytest.approx(-10.0, abs=1e-5)
    assert rm_fm_loss(residual, "mse").item() == pytest.approx(0.505)
    assert rm_fm_loss(residual, "log_mse").item() == pytest.approx(-10.0, abs=1e-5)
    # SR-FM routes residuals back to their mixture first (identity shuffle here)
    upsilon = torch.tensor([[0, 1], [0, 1]])
    perm = torch.arange(4)
    summed = residual.sum(1)  # (2, 2): [[2, 0], [0.2, 0]] -> mean squares 2 and 0.02
    expected = 10 * torch.log10(summed.pow(2).mean(-1) + 1e-8).mean()
    assert sr_fm_loss(residual, upsilon, perm, "log_mse").item() == pytest.approx(
        expected.item(), abs=1e-5
    )
    with pytest.raises(ValueError, match="mse"):
        reduce_flow_error(residual, "l1")


def test_audio_config_leaves_image_identities_unchanged(monkeypatch):
    """The network section follows the task's modality: image runs have ``net`` and no
    ``audio_net``, audio runs the reverse, and the identity holds the one the run has."""
    from benchmark import registry

    registry.task_names()  # load the real tasks first
    monkeypatch.setitem(registry.TASKS._items, ToyAudioTask.name, ToyAudioTask)
    for method in ("mixit", "surf_sr", "remixit", "mixcycle"):
        cls = get_method(method)
        image = resolve_config(method, "mnist", 0, "cpu")
        ident = identity_dict(image, cls.config_sections)
        assert "audio_net" not in ident and "net" in ident
        assert "audio_net" not in image.sections and image.network == "net"
        assert "flow_loss" not in ident.get("surf", {})  # at its default: not in the identity
        audio = resolve_config(method, "toy_audio", 0, "cpu")
        ident = identity_dict(audio, cls.config_sections)
        assert "audio_net" in ident and "net" not in ident
        assert "net" not in audio.sections and audio.network == "audio_net"
        before = config_hash(audio, cls.config_sections)
        audio.audio_net.tasnet_x = 3
        assert config_hash(audio, cls.config_sections) != before


# -- every method on audio --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    ["mixit", "mixpit", "mixcycle", "supervised", "floss", "remixit", "self_remixing", "surf_sr"],
)
def test_every_method_trains_and_separates_audio(method):
    torch.manual_seed(0)
    device = torch.device("cpu")
    cls = get_method(method)
    teacher = None
    if cls.teacher_method:
        tcfg = _toy_config(cls.teacher_method)
        teacher = get_method(cls.teacher_method)(tcfg, ToyAudioTask(tcfg.task, Path(".")), device)
        teacher.setup(None)
        teacher.eval_mode()
    cfg = _toy_config(method)
    if method == "mixcycle":
        cfg.mixcycle.mixpit_steps = 1
    task = ToyAudioTask(cfg.task, Path("."))
    m = cls(cfg, task, device)
    m.setup(teacher)
    gen = torch.Generator().manual_seed(0)
    m.train_mode()
    for step in range(2):
        logs = m.train_step(step, gen)
        assert torch.isfinite(torch.as_tensor(logs["loss"])), logs
    if method in ("floss", "surf_sr"):
        assert m.flow_loss == "log_mse"  # SURF D.5 default on audio
        assert logs["loss"] < 10.0  # dB scale, not a squared error of unit-variance sources
    m.eval_mode()
    data = task.eval_set()
    est = m.separate(data.mixtures, gen)
    assert est.shape == (4, 2, 800)
    torch.testing.assert_close(est.sum(1), data.mixtures, atol=1e-4, rtol=0)
    assert torch.isfinite(est).all()
