"""Tests for BASIS (methods/basis.py, methods/langevin.py, methods/score_networks.py): the NCSN
schedules, the denoising score matching loss, annealed Langevin separation on a Gaussian prior
whose score and posterior are known in closed form, the score network, and end-to-end smoke runs
on real MNIST and CIFAR-10 through the CLI."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import TinyImages

from benchmark.cli import main
from benchmark.config import ConfigError, identity_dict, resolve_config
from benchmark.registry import get_method, get_task, method_names
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status
from benchmark.tables import render_table
from methods.basis import Basis
from methods.langevin import (
    annealed_langevin_separation,
    dsm_loss,
    geometric_sigmas,
    langevin_step_sizes,
)
from methods.model_factory import build_score_net
from methods.score_networks import ImageScoreNet, WaveformScoreNet, build_score_network

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def test_sigma_schedule_and_step_sizes_match_their_formulas() -> None:
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    # sigma_i = sigma_1 (sigma_L / sigma_1)^((i - 1) / (L - 1)) = 10^(-2 (i - 1) / 9)
    want = torch.tensor([10.0 ** (-2.0 * i / 9.0) for i in range(10)], dtype=F64)
    torch.testing.assert_close(sigmas, want, rtol=1e-12, atol=0)
    # the array hard-coded in BASIS's released separation scripts
    published = [1.0, 0.59948425, 0.35938137, 0.21544347, 0.12915497]
    published += [0.07742637, 0.04641589, 0.02782559, 0.01668101, 0.01]
    torch.testing.assert_close(sigmas, torch.tensor(published, dtype=F64), rtol=0, atol=5e-9)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.01 ** (1 / 9)))

    etas = langevin_step_sizes(sigmas, 3e-5)  # eta_i = epsilon sigma_i^2 / sigma_L^2
    torch.testing.assert_close(etas, 3e-5 * sigmas**2 / 0.01**2)
    assert etas[-1].item() == pytest.approx(3e-5) and etas[0].item() == pytest.approx(0.3)

    assert geometric_sigmas(0.5, 0.5, 1).tolist() == [0.5]
    for bad in [(1.0, 0.0, 10), (0.01, 1.0, 10), (1.0, 0.01, 0), (1.0, 0.5, 1)]:
        with pytest.raises(ValueError):
            geometric_sigmas(*bad)


# --------------------------------------------------------------------------------------------
# Denoising score matching
# --------------------------------------------------------------------------------------------


def test_dsm_loss_matches_hand_computation() -> None:
    # s(x_tilde, sigma) = -x_tilde; x_tilde = x + sigma z = [[1.5, 1.0], [1.0, -2.0]]
    # sigma s + z: row 1: -(1.5, 1.0) + (1, 0) = (-0.5, -1.0)      -> mean square 0.625
    #              row 2: -0.5 (1.0, -2.0) + (2, -2) = (1.5, -1.0)  -> mean square 1.625
    # L = 1/2 mean(0.625, 1.625) = 0.5625
    x = torch.tensor([[0.5, 1.0], [0.0, -1.0]], dtype=F64)
    sigma = torch.tensor([1.0, 0.5], dtype=F64)
    z = torch.tensor([[1.0, 0.0], [2.0, -2.0]], dtype=F64)
    seen = {}

    def score_fn(x_tilde, s):
        seen["x_tilde"], seen["sigma"] = x_tilde, s
        return -x_tilde

    assert dsm_loss(score_fn, x, sigma, z).item() == pytest.approx(0.5625, abs=1e-12)
    torch.testing.assert_close(seen["x_tilde"], torch.tensor([[1.5, 1.0], [1.0, -2.0]], dtype=F64))
    assert seen["sigma"] is sigma
    with pytest.raises(ValueError, match="same shape"):
        dsm_loss(score_fn, x, sigma, z[:1])


def test_dsm_loss_is_minimised_by_the_true_score_of_the_perturbed_data() -> None:
    # x ~ N(0, s^2): p_sigma = N(0, s^2 + sigma^2), score -x_tilde / (s^2 + sigma^2). Among the
    # scores -c x_tilde the DSM loss is smallest at c = 1 / (s^2 + sigma^2) (Vincent 2011).
    gen = torch.Generator().manual_seed(0)
    s, sig = 0.5, 0.3
    x = s * torch.randn(200_000, 1, generator=gen, dtype=F64)
    z = torch.randn(200_000, 1, generator=gen, dtype=F64)
    sigma = torch.full((200_000,), sig, dtype=F64)
    cs = torch.linspace(1.0, 5.0, 81, dtype=F64)
    losses = torch.stack([dsm_loss(lambda xt, _s, c=c: -c * xt, x, sigma, z) for c in cs])
    best = cs[losses.argmin()].item()
    assert best == pytest.approx(1.0 / (s**2 + sig**2), abs=0.1)


# --------------------------------------------------------------------------------------------
# Annealed Langevin separation with an analytic prior
# --------------------------------------------------------------------------------------------


def _gaussian_score(mu: float, s: float):
    """Score of N(mu, s^2 I) convolved with N(0, sigma^2 I): -(x - mu) / (s^2 + sigma^2)."""
    return lambda x, sigma: -(x - mu) / (s**2 + sigma**2)


@pytest.mark.parametrize("recon_weight", [1.0, 2.0])
def test_langevin_samples_the_analytic_posterior_at_a_fixed_level(recon_weight) -> None:
    # One level sigma = 1: the dynamics sample p(x_1, x_2 | m) with prior N(mu, v), v = s^2 + 1,
    # per source and likelihood N(m; x_1 + x_2, sigma^2 / w). Per coordinate the posterior has
    # E[x_k] = mu + v / (2 v + sigma^2 / w) (m - 2 mu),
    # Var(x_1 + x_2) = 2 / (1 / v + 2 w / sigma^2) and Var(x_1 - x_2) = 2 v.
    mu, s, m, w = 0.2, 0.5, 1.3, recon_weight
    v = s**2 + 1.0
    chains = 8_000
    mixtures = torch.full((chains, 1), m, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    x = annealed_langevin_separation(
        mixtures,
        _gaussian_score(mu, s),
        2,
        torch.tensor([1.0], dtype=F64),
        epsilon=0.02,
        steps_per_level=600,
        generator=gen,
        recon_weight=w,
    )
    assert x.shape == (chains, 2, 1)
    mean = mu + v / (2 * v + 1.0 / w) * (m - 2 * mu)
    assert abs(mean - m / 2) > 0.05  # the prior pulls the estimates away from m / 2
    # standard error of a chain average: ~0.9 / sqrt(8000) = 0.01
    assert x[:, 0].mean().item() == pytest.approx(mean, abs=0.03)
    assert x[:, 1].mean().item() == pytest.approx(mean, abs=0.03)
    var_sum = 2.0 / (1.0 / v + 2.0 * w)
    assert x.sum(1).var().item() == pytest.approx(var_sum, rel=0.08)
    assert (x[:, 0] - x[:, 1]).var().item() == pytest.approx(2 * v, rel=0.08)


def test_annealed_langevin_reduces_the_mixture_residual_and_reaches_the_posterior() -> None:
    # BASIS's schedule (sigma 1 -> 0.01, L = 10, T = 100, epsilon = 3e-5) with the analytic score
    # of a Gaussian prior N(mu, s^2 I) on 16-pixel sources: from the uniform initialisation the
    # residual ||m - sum_k x_k|| falls to the level of sigma_L, and the chains end at the
    # posterior of the last level (mean mu + v / (2 v + sigma_L^2) (m - 2 mu), v = s^2 + sigma_L^2,
    # spread Var(x_1 - x_2) = 2 v), not at m / 2.
    mu, s, dim, chains = 0.4, 0.3, 16, 256
    gen = torch.Generator().manual_seed(2)
    truth = mu + s * torch.randn(chains, 2, dim, generator=gen, dtype=F64)
    mixtures = truth.sum(1)
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    init = torch.rand(chains, 2, dim, generator=gen, dtype=F64)
    residual = []

    def score_fn(x, sigma):
        residual.append((mixtures - x.reshape(chains, 2, dim).sum(1)).norm(dim=1).mean().item())
        return _gaussian_score(mu, s)(x, sigma)

    x = annealed_langevin_separation(
        mixtures, score_fn, 2, sigmas, 3e-5, 100, gen, init=init.clone()
    )
    start = (mixtures - init.sum(1)).norm(dim=1).mean().item()
    end = (mixtures - x.sum(1)).norm(dim=1).mean().item()
    assert residual[0] == pytest.approx(start)
    assert end < start / 50
    # the residual at the end of each level shrinks with sigma_i (BASIS: gamma_i = sigma_i)
    per_level = residual[99::100]
    assert all(b < a for a, b in zip(per_level, per_level[1:], strict=False))
    assert end < 3 * 0.01 * math.sqrt(dim)

    v = s**2 + 0.01**2
    post_mean = mu + v / (2 * v + 0.01**2) * (mixtures - 2 * mu)  # (chains, dim)
    err = (x - post_mean[:, None]).pow(2).mean().sqrt().item()
    # one posterior draw deviates from the posterior mean by sqrt(v / 2) per pixel
    assert err == pytest.approx(math.sqrt(v / 2), rel=0.15)
    diff = x[:, 0] - x[:, 1] - (truth[:, 0] - truth[:, 1]).mean()
    assert diff.var().item() == pytest.approx(2 * v, rel=0.2)


def test_langevin_separation_is_reproducible_from_the_generator() -> None:
    mixtures = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = geometric_sigmas(1.0, 0.01, 3)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return annealed_langevin_separation(
            mixtures, _gaussian_score(0.3, 0.2), 2, sigmas, 3e-5, 4, gen
        )

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


# --------------------------------------------------------------------------------------------
# Score network and method
# --------------------------------------------------------------------------------------------


def _basis(**basis) -> Basis:
    cfg = resolve_config("basis", "mnist", 0, "smoke")
    cfg.train.batch_size = 5
    for key, value in basis.items():
        setattr(cfg.basis, key, value)
    torch.manual_seed(0)
    method = Basis(cfg, TinyImages(), torch.device("cpu"))
    method.setup(None)
    return method


def test_score_network_factory_and_scaling() -> None:
    cfg = resolve_config("basis", "mnist", 0, "smoke")
    net = build_score_network((1, 8, 8), cfg.net)
    assert isinstance(net, ImageScoreNet)
    with pytest.raises(ValueError, match="registered kinds: \\['image', 'waveform'\\]"):
        build_score_network((4, 16000), cfg.net)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(net(x, 0.5), torch.zeros_like(x))  # zero-initialised output layer
    # s = U(2x - 1, log sigma) / sigma: perturb the output layer and check the 1/sigma scaling
    torch.nn.init.normal_(net.unet.conv_out.weight, std=0.1)
    sig = torch.tensor([0.1, 0.1, 1.0, 1.0])
    raw = net.unet(2 * x - 1, torch.log(sig))
    torch.testing.assert_close(net(x, sig), raw / sig[:, None, None, None])


def test_train_step_uses_single_clean_sources_and_learns() -> None:
    method = _basis()
    gen = torch.Generator().manual_seed(0)
    x = method.sample_training_sources(gen)
    assert x.shape == (5, 1, 8, 8)  # B single sources from ceil(B / K) = 3 draws of K = 2
    pool = method.task.images.flatten(1)
    # dequantised: x = x0 255/256 + u/256 with x0 one of the pool's images
    gap = (x.flatten(1)[:, None] - pool[None] * 255 / 256).abs().amax(-1).min(1).values
    assert (gap <= 1 / 256).all()
    # a fixed held-out DSM loss at the three largest levels, where denoising is easy, falls
    held = torch.Generator().manual_seed(9)
    x_held = method.task.images
    sigma = method.sigmas.float()[torch.arange(16) % 3]
    z = torch.randn(x_held.shape, generator=held)
    with torch.no_grad():
        before = dsm_loss(method.score_net, x_held, sigma, z).item()
    assert before == pytest.approx(0.5 * z.pow(2).mean().item())  # zero-initialised output
    first = method.train_step(0, gen)["loss"]
    # zero output: the loss is 1/2 mean(z^2) over 5 x 64 draws (standard deviation ~0.04)
    assert first == pytest.approx(0.5, abs=0.15)
    for step in range(1, 40):
        method.train_step(step, gen)
    with torch.no_grad():
        after = dsm_loss(method.score_net, x_held, sigma, z).item()
    assert after < 0.8 * before


def test_separate_chunks_score_calls_and_is_seeded() -> None:
    method = _basis(steps_per_level=3)
    torch.nn.init.normal_(method.score_net.unet.conv_out.weight, std=0.05)
    method.eval_mode()
    mixtures = method.task.sample_mixtures(3, torch.Generator().manual_seed(1))
    calls = []
    forward = method.score_net.forward

    def spy(x, sigma):
        calls.append(x.shape[0])
        return forward(x, sigma)

    method.score_net.forward = spy
    method.config.basis.score_batch = 4
    out = method.separate(mixtures, torch.Generator().manual_seed(3))
    assert out.shape == (3, 2, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert calls[:2] == [4, 2] and len(calls) == 2 * 10 * 3  # chunks x L x T
    method.config.basis.score_batch = 1000
    again = method.separate(mixtures, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again, rtol=0, atol=1e-5)
    other = method.separate(mixtures, torch.Generator().manual_seed(4))
    assert not torch.allclose(out, other)


def test_config_presets_and_flags() -> None:
    paper = resolve_config("basis", "mnist", 0, "paper").basis
    assert (paper.sigma_begin, paper.sigma_end, paper.num_levels) == (1.0, 0.01, 10)
    assert (paper.steps_per_level, paper.epsilon, paper.recon_weight) == (100, 3e-5, 1.0)
    assert resolve_config("basis", "mnist", 0, "smoke").basis.steps_per_level < 100
    assert resolve_config("basis", "mnist", 0, "cpu").basis.steps_per_level < 100
    for bad in ["basis.sigma_end=2", "basis.steps_per_level=0", "basis.epsilon=-1"]:
        key, value = bad.split("=")
        with pytest.raises(ConfigError, match=key):
            resolve_config("basis", "mnist", 0, "smoke", [(None, key, value)])
    # the new section enters BASIS's identity only
    cpu = resolve_config("basis", "mnist", 0, "cpu")
    assert "basis" in identity_dict(cpu, Basis.config_sections)
    for name in method_names():
        if name != "basis":
            assert "basis" not in get_method(name).config_sections
    cls = get_method("basis")
    assert (cls.display_name, cls.unsupervised, cls.generative) == ("BASIS", False, True)
    assert cls.teacher_method is None and "basis" in method_names()


# --------------------------------------------------------------------------------------------
# Audio: the waveform score network and BASIS on real FSDD2Mix
# --------------------------------------------------------------------------------------------


def test_waveform_score_network_shape_scaling_and_sigma_conditioning() -> None:
    cfg = resolve_config("basis", "fsdd2mix", 0, "smoke")
    torch.manual_seed(0)
    net = build_score_network((1000,), cfg.audio_net)
    assert isinstance(net, WaveformScoreNet)
    x = torch.randn(4, 1000)
    assert torch.equal(net(x, 0.5), torch.zeros_like(x))  # zero-initialised decoder
    torch.nn.init.normal_(net.decoder.weight, std=0.1)
    # an odd length (not a multiple of the stride) comes back at its own length
    assert net(torch.randn(3, 999), 0.3).shape == (3, 999)
    sig = torch.tensor([0.01, 0.1, 1.0, 1.0])
    out = net(x, sig)
    assert out.shape == (4, 1000) and torch.isfinite(out).all()
    # sigma s(x, sigma) is the network's -z prediction; it depends on sigma through FiLM
    same = x[:1].expand(2, -1)
    raw = [(s * net(same[:1], s)).squeeze(0) for s in (0.01, 1.0)]
    assert (raw[0] - raw[1]).abs().mean() > 1e-3 * raw[1].abs().mean()
    # a scalar sigma is broadcast to every row
    torch.testing.assert_close(net(x, 1.0), net(x, torch.ones(4)))
    with pytest.raises(ValueError, match="\\(N, T\\)"):
        net(torch.randn(2, 1, 1000), 1.0)


def test_basis_on_fsdd2mix_trains_on_raw_waveforms_and_separates_unclamped(data_root) -> None:
    cfg = resolve_config("basis", "fsdd2mix", 0, "smoke")
    cfg.train.batch_size = 5
    cfg.basis.steps_per_level = 2
    task = get_task("fsdd2mix")(cfg.task, data_root)
    torch.manual_seed(0)
    method = Basis(cfg, task, torch.device("cpu"))
    method.setup(None)
    assert isinstance(method.score_net, WaveformScoreNet)
    assert isinstance(build_score_net(task, cfg), WaveformScoreNet)
    # line 1 with (B, K, T) sources and no dequantisation: exactly the task's utterances
    x = method.sample_training_sources(torch.Generator().manual_seed(2))
    ref = task.sample_sources(3, torch.Generator().manual_seed(2)).flatten(0, 1)[:5]
    assert x.shape == (5, task.segment) and torch.equal(x, ref)
    gen = torch.Generator().manual_seed(0)
    first = method.train_step(0, gen)["loss"]
    assert first == pytest.approx(0.5, abs=0.05)  # zero output: 1/2 mean(z^2) over 5 x 8000
    torch.nn.init.normal_(method.score_net.decoder.weight, std=0.05)
    method.eval_mode()
    mixtures = task.sample_mixtures(3, torch.Generator().manual_seed(1))
    out = method.separate(mixtures, torch.Generator().manual_seed(3))
    assert out.shape == (3, 2, task.segment) and torch.isfinite(out).all()
    assert out.min() < -1.0 and out.max() > 1.0  # standardised speech: no [0, 1] clamp
    # the likelihood term holds the estimates near the mixture constraint at sigma_L = 0.01
    residual = (mixtures - out.sum(dim=1)).pow(2).mean() / mixtures.pow(2).mean()
    assert residual < 0.05
    again = method.separate(mixtures, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# End to end (real data, smoke preset)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["mnist", "cifar10"])
def test_basis_end_to_end(task, data_root, results_dir, capsys) -> None:
    args = ["run", "--methods", "basis", "--task", task, "--preset", "smoke"]
    args += ["--executor", "debug", "--results-dir", str(results_dir)]
    assert main([*args, "--data-root", str(data_root)]) == 0
    runs = {d.parent.name: d for d in iter_run_dirs(results_dir)}
    assert set(runs) == {"mixture", "basis"}  # no teacher planned
    run = runs["basis"]
    assert read_status(run)["state"] == "done"
    record = RunRecord(run)
    metrics = record.metric_values()
    assert record.counts["n_mixtures"] == 32
    assert 0.0 < metrics["psnr"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
    assert len(pd.read_parquet(run / "scores.parquet")) == 32
    assert pd.read_csv(run / "curve.csv")["step"].tolist() == [2, 4, 6]
    info = read_json(run / "config.json")
    assert info["teacher_dir"] is None and info["sections"] == list(Basis.config_sections)
    assert info["config"]["basis"]["steps_per_level"] == 2
    table = render_table(results_dir, task=task)
    row = next(line for line in table.splitlines() if "BASIS" in line)
    assert "×" in row and "✓" in row  # not unsupervised, generative
    capsys.readouterr()
