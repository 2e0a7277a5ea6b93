"""Tests for the NCSN++-style U-Net backbone (methods/networks.py)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.networks import FIRResample, NCSNppUNet, UNetConfig, count_parameters

SMALL = UNetConfig(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.1)

# state_dict entries that may differ between the conditional and the regression variant.
_ALLOWED = re.compile(r"^(time_embed\..*|.*\.temb_proj\..*|conv_in\..*|conv_out\..*)$")


def _perturb_zero_init(net: nn.Module, std: float = 0.05) -> None:
    """Re-initialise every all-zero weight matrix/kernel (init_scale=0 layers) with N(0, std)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1 and name.endswith("weight") and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("image_size", [16, 32])
def test_output_shape(conditional: bool, image_size: int) -> None:
    torch.manual_seed(0)
    net = NCSNppUNet(9, 6, image_size, SMALL, conditional=conditional)
    x = torch.randn(3, 9, image_size, image_size)
    t = torch.rand(3) if conditional else None
    out = net(x, t)
    assert out.shape == (3, 6, image_size, image_size)
    assert out.dtype == x.dtype


def test_fresh_net_outputs_exact_zero() -> None:
    torch.manual_seed(0)
    for conditional in (True, False):
        net = NCSNppUNet(4, 5, 16, SMALL, conditional=conditional)
        out = net(torch.randn(2, 4, 16, 16), torch.rand(2) if conditional else None)
        assert torch.equal(out, torch.zeros_like(out))


def test_conditional_output_depends_on_t() -> None:
    torch.manual_seed(0)
    net = NCSNppUNet(9, 6, 16, SMALL, conditional=True).eval()
    _perturb_zero_init(net)
    x = torch.randn(2, 9, 16, 16)
    out_a = net(x, torch.full((2,), 0.1))
    out_b = net(x, torch.full((2,), 0.9))
    assert out_a.abs().max() > 0
    assert not torch.allclose(out_a, out_b, atol=1e-6)
    # Per-sample times: sample 0 must match the constant-time run, sample 1 must not.
    out_mixed = net(x, torch.tensor([0.1, 0.9]))
    torch.testing.assert_close(out_mixed[0], out_a[0])
    torch.testing.assert_close(out_mixed[1], out_b[1])
    # A 0-d time is broadcast over the batch.
    torch.testing.assert_close(net(x, torch.tensor(0.1)), out_a)
    with pytest.raises(ValueError):
        net(x, None)
    with pytest.raises(ValueError):
        net(x, torch.rand(3))


def test_nonconditional_ignores_t() -> None:
    torch.manual_seed(0)
    net = NCSNppUNet(3, 12, 16, SMALL, conditional=False).eval()
    _perturb_zero_init(net)
    x = torch.randn(2, 3, 16, 16)
    out = net(x)
    assert out.abs().max() > 0
    assert torch.equal(out, net(x, torch.full((2,), 0.1)))
    assert torch.equal(out, net(x, torch.full((2,), 0.9)))
    assert not any("time_embed" in k or "temb_proj" in k for k in net.state_dict())


def test_dropout_active_only_in_train_mode() -> None:
    torch.manual_seed(0)
    net = NCSNppUNet(3, 3, 16, SMALL, conditional=False)
    _perturb_zero_init(net)
    x = torch.randn(2, 3, 16, 16)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_conditional_vs_regression_parameter_contract() -> None:
    cond = NCSNppUNet(9, 6, 16, SMALL, conditional=True)
    reg = NCSNppUNet(3, 12, 16, SMALL, conditional=False)
    sc, sr = _shapes(cond), _shapes(reg)
    only_cond = set(sc) - set(sr)
    only_reg = set(sr) - set(sc)
    assert only_reg == set()
    assert only_cond, "the conditional net must have time-embedding tensors"
    assert all(_ALLOWED.match(k) for k in only_cond), sorted(only_cond)
    assert any(k.startswith("time_embed.") for k in only_cond)
    assert any(".temb_proj." in k for k in only_cond)
    mismatched = {k for k in set(sc) & set(sr) if sc[k] != sr[k]}
    assert mismatched == {"conv_in.weight", "conv_out.weight", "conv_out.bias"}
    # Same holds for the paper preset's structure at a small width.
    cfg = UNetConfig(nf=8, num_res_blocks=2)
    sc = _shapes(NCSNppUNet(9, 6, 32, cfg, conditional=True))
    sr = _shapes(NCSNppUNet(3, 12, 32, cfg, conditional=False))
    assert set(sr) <= set(sc)
    assert all(_ALLOWED.match(k) for k in set(sc) ^ set(sr))
    assert all(sc[k] == sr[k] or _ALLOWED.match(k) for k in set(sc) & set(sr))


def test_warm_start_from_regression_net() -> None:
    """Copy every same-named, shape-matching tensor from a regression net into a flow net."""
    torch.manual_seed(0)
    reg = NCSNppUNet(3, 12, 16, SMALL, conditional=False)
    _perturb_zero_init(reg)
    cond = NCSNppUNet(9, 6, 16, SMALL, conditional=True)
    src = reg.state_dict()
    dst = cond.state_dict()
    copied = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    missing, unexpected = cond.load_state_dict(copied, strict=False)
    assert not unexpected
    assert all(_ALLOWED.match(k) for k in missing), missing
    for k, v in cond.state_dict().items():
        if not _ALLOWED.match(k):
            assert torch.equal(v, src[k]), k


def test_backward_reaches_all_parameters() -> None:
    torch.manual_seed(0)
    net = NCSNppUNet(9, 6, 16, SMALL, conditional=True)
    _perturb_zero_init(net)
    out = net(torch.randn(2, 9, 16, 16), torch.rand(2))
    out.square().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


@pytest.mark.parametrize(
    ("image_size", "config"),
    [
        (20, UNetConfig(ch_mult=(1, 2, 2, 2))),  # 20 % 8 != 0
        (15, UNetConfig(nf=16, ch_mult=(1, 2), attn_resolutions=())),  # 15 % 2 != 0
        (16, UNetConfig(nf=16, ch_mult=(1, 2), attn_resolutions=(4,))),  # 4 never occurs
        (0, SMALL),
    ],
)
def test_bad_sizes_raise(image_size: int, config: UNetConfig) -> None:
    with pytest.raises(ValueError):
        NCSNppUNet(3, 3, image_size, config)


def test_wrong_input_shape_raises() -> None:
    net = NCSNppUNet(3, 3, 16, SMALL, conditional=False)
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError):
        net(torch.randn(1, 4, 16, 16))


def _upfirdn2d_reference(x: torch.Tensor, k: torch.Tensor, up: int, down: int, pad: tuple):
    """Plain re-statement of NCSN++'s ``upfirdn2d_native`` for non-negative padding."""
    b, c, h, w = x.shape
    z = x.new_zeros(b, c, h * up, w * up)
    z[..., ::up, ::up] = x
    z = F.pad(z, (pad[0], pad[1], pad[0], pad[1]))
    kernel = torch.flip(k, [0, 1])[None, None].expand(c, 1, *k.shape)
    return F.conv2d(z, kernel, groups=c)[..., ::down, ::down]


def test_fir_resampling_matches_upfirdn2d() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    k = torch.outer(k1, k1)
    k = k / k.sum()
    down = FIRResample("down").double()(x)
    up = FIRResample("up").double()(x)
    torch.testing.assert_close(down, _upfirdn2d_reference(x, k, up=1, down=2, pad=(1, 1)))
    torch.testing.assert_close(up, _upfirdn2d_reference(x, k * 4, up=2, down=1, pad=(2, 1)))
    assert down.shape == (2, 3, 4, 4) and up.shape == (2, 3, 16, 16)
    # Nothing from the FIR kernels ends up in the state_dict.
    assert FIRResample("up").state_dict() == {}


def test_paper_config_parameter_count() -> None:
    """Paper preset (no forward pass). Prints the counts; asserts only the structure."""
    cfg = UNetConfig()
    cond = NCSNppUNet(in_channels=9, out_channels=6, image_size=32, config=cfg, conditional=True)
    reg = NCSNppUNet(in_channels=3, out_channels=12, image_size=32, config=cfg, conditional=False)
    n_cond, n_reg = count_parameters(cond), count_parameters(reg)
    print(f"\nNCSNppUNet paper config: conditional 9->6: {n_cond:,}; regression 3->12: {n_reg:,}")
    assert 5_000_000 < n_reg < n_cond < 60_000_000
    # The difference is exactly: time MLP + per-block time projections + in/out convs.
    nf = cfg.nf
    time_mlp = (2 * nf * 4 * nf + 4 * nf) + (4 * nf * 4 * nf + 4 * nf)
    temb_proj = sum(
        m.temb_proj.weight.numel() + m.temb_proj.bias.numel()
        for m in cond.modules()
        if getattr(m, "temb_proj", None) is not None
    )

    def io(cin: int, cout: int) -> int:  # conv_in + conv_out parameters
        return cin * nf * 9 + nf + nf * cout * 9 + cout

    assert n_cond - n_reg == time_mlp + temb_proj + io(9, 6) - io(3, 12)
