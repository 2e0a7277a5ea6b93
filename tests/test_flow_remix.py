"""Tests for the flow-matching pieces (methods/flow.py), the separator networks' output
constraints (methods/models.py) and bootstrapped remixing (methods/remix.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods.flow import (
    clean_estimate,
    euler_sample,
    euler_times,
    hybrid_velocity,
    initial_state,
    interpolant,
    project_zero_sum,
    target_velocity,
)
from methods.models import FlowVelocityNet, RegressionSeparator, mixture_consistency
from methods.networks import UNetConfig as NetConfig
from methods.remix import remix, sum_to_mixtures, unshuffle

TINY = NetConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)

# Two shared CPU cores: intra-op threads only spin against other jobs on tiny tensors.


def _randomize(net: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    """Re-initialise every parameter with N(0, std) so the (zero-init) output is not zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return net.eval()


@pytest.fixture(scope="module", params=[1, 3], ids=["C1", "C3"])
def flow_net(request) -> tuple[FlowVelocityNet, int]:
    torch.manual_seed(0)
    channels = request.param
    net = FlowVelocityNet((channels, 16, 16), 2, TINY)
    return _randomize(net, seed=channels), channels


# --------------------------------------------------------------------------------------------
# initial state (eq. 4) and zero-sum projection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (4, 64)], ids=["BCHW", "BT"])
@pytest.mark.parametrize("num_sources", [2, 3])
def test_initial_state_is_mixture_consistent(shape, num_sources) -> None:
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(shape, generator=gen)
    x0 = initial_state(m, num_sources, 1.0, generator=gen)
    assert x0.shape == (shape[0], num_sources, *shape[1:])
    torch.testing.assert_close(x0.sum(dim=1), m, atol=1e-5, rtol=0)
    # The noise is really there (sources differ from m / K).
    assert (x0 - m[:, None] / num_sources).abs().max() > 0.1


def test_initial_state_without_noise_is_equal_split() -> None:
    m = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    x0 = initial_state(m, 4, noise_scale=0.0, generator=torch.Generator().manual_seed(3))
    for k in range(4):
        torch.testing.assert_close(x0[:, k], m / 4, atol=1e-7, rtol=0)


def test_initial_state_with_explicit_noise() -> None:
    gen = torch.Generator().manual_seed(4)
    m = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 2, 10, generator=gen, dtype=torch.float64)
    x0 = initial_state(m, 2, noise_scale=0.7, noise=z)
    want = m[:, None] / 2 + 0.7 * (z - z.mean(dim=1, keepdim=True))
    torch.testing.assert_close(x0, want, rtol=0, atol=1e-14)
    with pytest.raises(ValueError):
        initial_state(m, 3, noise=z)


def test_initial_state_generator_is_reproducible() -> None:
    m = torch.randn(2, 5)
    a = initial_state(m, 2, generator=torch.Generator().manual_seed(5))
    b = initial_state(m, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_project_zero_sum() -> None:
    v = torch.randn(3, 4, 2, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    p = project_zero_sum(v)
    torch.testing.assert_close(p.sum(dim=1), torch.zeros(3, 2, 5, dtype=torch.float64))
    # Idempotent, and a zero-sum input is unchanged.
    torch.testing.assert_close(project_zero_sum(p), p, rtol=0, atol=1e-14)
    # The removed part is the same for every source.
    diff = v - p
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=0, atol=1e-14)


def test_interpolant_target_and_clean_estimate() -> None:
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    x1 = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    xt = interpolant(x0, x1, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * x1[1])
    torch.testing.assert_close(xt[2], x1[2])
    v = target_velocity(x0, x1)
    torch.testing.assert_close(v, x1 - x0)
    # With the exact conditional velocity the clean estimate is x1 at every t.
    torch.testing.assert_close(clean_estimate(xt, v, t), x1, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------
# networks: zero-sum velocity and mixture consistency
# --------------------------------------------------------------------------------------------


def test_flow_velocity_net_output_sums_to_zero(flow_net) -> None:
    net, channels = flow_net
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(2, 2, channels, 16, 16, generator=gen)
    m = x.sum(dim=1)
    with torch.no_grad():
        v = net(x, torch.tensor([0.1, 0.7]), m)
    assert v.shape == x.shape
    assert v.abs().max() > 1e-3, "randomised network must not output zeros"
    assert torch.isfinite(v).all()
    torch.testing.assert_close(v.sum(dim=1), torch.zeros_like(m), atol=1e-5, rtol=0)


def test_regression_separator_is_mixture_consistent() -> None:
    torch.manual_seed(0)
    net = _randomize(RegressionSeparator((1, 16, 16), 4, 2, TINY), seed=11)
    m = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 2
    with torch.no_grad():
        out = net(m)
    assert out.shape == (2, 4, 1, 16, 16)
    # Outputs are not trivially m / M.
    assert (out - m[:, None] / 4).abs().max() > 1e-3
    torch.testing.assert_close(out.sum(dim=1), m, atol=1e-5, rtol=0)


def test_mixture_consistency_projection() -> None:
    gen = torch.Generator().manual_seed(10)
    est = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    m = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    out = mixture_consistency(est, m)
    torch.testing.assert_close(out.sum(dim=1), m, rtol=0, atol=1e-13)
    # Every output receives the same correction.
    corr = out - est
    torch.testing.assert_close(corr, corr[:, :1].expand_as(corr), rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Euler sampler
# --------------------------------------------------------------------------------------------


def test_euler_times() -> None:
    assert euler_times(5) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert euler_times(1) == [0.0]
    with pytest.raises(ValueError):
        euler_times(0)


def test_euler_sample_keeps_mixture_consistency(flow_net) -> None:
    net, channels = flow_net
    gen = torch.Generator().manual_seed(12)
    m = torch.rand(2, channels, 16, 16, generator=gen) * 2
    x0 = initial_state(m, 2, 1.0, generator=gen)
    with torch.no_grad():
        x1 = euler_sample(lambda x, t: net(x, t, m), x0, num_steps=5)
    assert x1.shape == x0.shape
    assert (x1 - x0).abs().max() > 1e-3, "the sampler must move the state"
    torch.testing.assert_close(x1.sum(dim=1), m, atol=1e-4, rtol=0)


def test_euler_sample_constant_velocity_and_times() -> None:
    gen = torch.Generator().manual_seed(13)
    x0 = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return v

    out = euler_sample(velocity, x0, num_steps=5)
    torch.testing.assert_close(out, x0 + v, rtol=0, atol=1e-14)
    assert len(seen) == 5
    for t, want in zip(seen, [0.0, 0.2, 0.4, 0.6, 0.8], strict=True):
        assert t.shape == (3,)
        assert t.dtype == x0.dtype
        assert torch.all(t == want)


def test_euler_sample_matches_manual_loop_for_nonlinear_field() -> None:
    gen = torch.Generator().manual_seed(14)
    x0 = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * (1 + t[:, None, None])

    x = x0.clone()
    for i in range(4):
        x = x + 0.25 * velocity(x, torch.full((2,), i / 4, dtype=torch.float64))
    torch.testing.assert_close(euler_sample(velocity, x0, num_steps=4), x, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Hybrid teacher velocity (SURF App. D.3)
# --------------------------------------------------------------------------------------------


def _raising_flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the flow teacher must not be evaluated here")


def _flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) - 0.5 * x * t.reshape(-1, *([1] * (x.dim() - 1)))


def _hybrid_setup(seed: int = 15):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64)
    mix = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64)
    xt = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64)
    return x0, mix, xt


@pytest.mark.parametrize("t_value", [0.0, 0.2, 0.5, 0.8, 0.999])
def test_hybrid_velocity_beta_one_is_straight_path_to_mixit(t_value: float) -> None:
    x0, mix, xt = _hybrid_setup()
    t = torch.full((3,), t_value, dtype=torch.float64)
    v = hybrid_velocity(xt, t, x0, mix, _raising_flow, beta=1.0)
    torch.testing.assert_close(v, mix - x0, rtol=0, atol=0)


@pytest.mark.parametrize("t_value", [0.0, 0.4, 0.8])
def test_hybrid_velocity_beta_zero_is_flow(t_value: float) -> None:
    x0, mix, xt = _hybrid_setup()
    t = torch.full((3,), t_value, dtype=torch.float64)
    v = hybrid_velocity(xt, t, x0, None, _flow, beta=0.0)
    torch.testing.assert_close(v, _flow(xt, t), rtol=0, atol=0)
    v_with_mix = hybrid_velocity(xt, t, x0, mix, _flow, beta=0.0)
    torch.testing.assert_close(v_with_mix, _flow(xt, t), rtol=0, atol=0)


def test_hybrid_velocity_per_item_times() -> None:
    x0, mix, xt = _hybrid_setup()
    t = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)  # t = beta uses the flow (t >= beta)
    v = hybrid_velocity(xt, t, x0, mix, _flow, beta=0.5)
    flow_v = _flow(xt, t)
    torch.testing.assert_close(v[0], (mix - x0)[0], rtol=0, atol=0)
    torch.testing.assert_close(v[1], flow_v[1], rtol=0, atol=0)
    torch.testing.assert_close(v[2], flow_v[2], rtol=0, atol=0)


def test_hybrid_velocity_needs_mixit_estimate() -> None:
    x0, _, xt = _hybrid_setup()
    with pytest.raises(ValueError):
        hybrid_velocity(xt, torch.zeros(3, dtype=torch.float64), x0, None, _flow, beta=0.5)


def test_hybrid_euler_beta_one_ends_at_mixit_estimate() -> None:
    x0, mix, _ = _hybrid_setup(16)
    out = euler_sample(
        lambda x, t: hybrid_velocity(x, t, x0, mix, _raising_flow, beta=1.0), x0, num_steps=5
    )
    torch.testing.assert_close(out, mix, rtol=0, atol=1e-14)


def test_hybrid_euler_beta_half_switches_after_three_steps() -> None:
    x0, mix, _ = _hybrid_setup(17)
    flow_times: list[float] = []

    def flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flow_times.append(float(t[0]))
        return _flow(x, t)

    out = euler_sample(lambda x, t: hybrid_velocity(x, t, x0, mix, flow, beta=0.5), x0, 5)

    # Manual: t = 0, 0.2, 0.4 follow the straight path to the MixIT estimate, t = 0.6, 0.8 the flow.
    x = x0.clone()
    for _ in range(3):
        x = x + 0.2 * (mix - x0)
    for t_value in (0.6, 0.8):
        x = x + 0.2 * _flow(x, torch.full((3,), t_value, dtype=torch.float64))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-13)
    assert flow_times == pytest.approx([0.6, 0.8])
    # After the MixIT part the state sits at 0.4 x0 + 0.6 mix.
    x_mid = x0 + 0.6 * (mix - x0)
    x_ref = x_mid + 0.2 * _flow(x_mid, torch.full((3,), 0.6, dtype=torch.float64))
    x_ref = x_ref + 0.2 * _flow(x_ref, torch.full((3,), 0.8, dtype=torch.float64))
    torch.testing.assert_close(out, x_ref, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------------
# Remix (eq. 14-15)
# --------------------------------------------------------------------------------------------


def test_remix_with_fixed_perm() -> None:
    gen = torch.Generator().manual_seed(18)
    batch, num_sources = 3, 2
    x = torch.randn(batch, num_sources, 2, 4, 4, generator=gen)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    r = remix(x, perm=perm)
    assert torch.equal(r.perm, perm)
    assert r.sources.shape == x.shape
    assert r.mixtures.shape == (batch, 2, 4, 4)
    flat_in = x.reshape(batch * num_sources, 2, 4, 4)
    flat_out = r.sources.reshape(batch * num_sources, 2, 4, 4)
    for i in range(batch * num_sources):
        assert torch.equal(flat_out[i], flat_in[perm[i]])
    # Row (b, k) of the shuffled tensor is flat row b*K + k.
    assert torch.equal(r.sources[1, 0], x[2, 1])  # perm[2] = 5 -> (2, 1)
    assert torch.equal(r.sources[0, 0], x[2, 0])  # perm[0] = 4 -> (2, 0)
    # eq. (15): new mixtures are the per-row sums of the shuffled sources.
    for b in range(batch):
        torch.testing.assert_close(r.mixtures[b], r.sources[b, 0] + r.sources[b, 1])
    assert torch.equal(sum_to_mixtures(r.sources), r.mixtures)
    # Pi^{-1} restores the original order.
    assert torch.equal(unshuffle(r.sources, perm), x)


def test_remix_random_perm_is_permutation_and_reproducible() -> None:
    x = torch.randn(4, 3, 10, generator=torch.Generator().manual_seed(19))
    r = remix(x, generator=torch.Generator().manual_seed(20))
    assert r.perm.dtype == torch.long
    assert sorted(r.perm.tolist()) == list(range(12))
    assert torch.equal(unshuffle(r.sources, r.perm), x)
    # Total mass is conserved (it is a shuffle).
    torch.testing.assert_close(r.mixtures.sum(0), x.sum(dim=(0, 1)), atol=1e-5, rtol=0)
    r2 = remix(x, generator=torch.Generator().manual_seed(20))
    assert torch.equal(r2.perm, r.perm)
    assert torch.equal(r2.sources, r.sources)


def test_noise_sigma_mixture_rms_follows_the_mixture_level() -> None:
    """``surf.noise_reference=mixture_rms``: sigma_b = noise_scale * rms(m_b) / sqrt(K), so a
    quiet corpus (file amplitude) gets noise at its own level; the state stays consistent."""
    from methods.flow import noise_sigma

    g = torch.Generator().manual_seed(0)
    sources = torch.randn(3, 2, 4000, generator=g) * torch.tensor([0.02, 0.1, 1.0])[:, None, None]
    m = sources.sum(1)
    assert noise_sigma(m, 2, 0.5) == 0.5  # absolute: the config value itself
    sigma = noise_sigma(m, 2, 0.5, "mixture_rms")
    assert sigma.shape == (3, 1, 1)
    expected = 0.5 * m.pow(2).mean(1).sqrt() / 2**0.5
    torch.testing.assert_close(sigma.flatten(), expected)
    # for uncorrelated equal-power sources that is noise_scale x the source RMS (2 % here)
    torch.testing.assert_close(
        sigma.flatten(), 0.5 * sources.pow(2).mean((1, 2)).sqrt(), rtol=0.03, atol=0
    )
    x0 = initial_state(m, 2, sigma, generator=g)
    torch.testing.assert_close(x0.sum(1), m, rtol=1e-5, atol=1e-6)
    deviation = (x0 - m[:, None] / 2).flatten(1).std(1)  # = sigma * sqrt(1 - 1/K) per mixture
    torch.testing.assert_close(deviation, sigma.flatten() * 0.5**0.5, rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="noise_reference"):
        noise_sigma(m, 2, 0.5, "relative")


def test_noise_reference_enters_hashes_only_when_set_and_corpora_use_mixture_rms() -> None:
    from benchmark.config import config_hash, resolve_config

    for task in ("mnist", "fsdd2mix"):
        cfg = resolve_config("surf_sr", task, 0, "smoke", [])
        assert cfg.surf.noise_reference == "absolute"
        before = config_hash(cfg, ("task", "train", "net", "surf", "eval"))
        cfg.surf.noise_reference = "mixture_rms"
        assert config_hash(cfg, ("task", "train", "net", "surf", "eval")) != before
    for preset in ("smoke", "paper"):
        for task in ("libri2mix", "fuss", "libri_fuss"):
            cfg = resolve_config("surf_rm", task, 0, preset, [])
            assert cfg.surf.noise_reference == "mixture_rms", (preset, task)
