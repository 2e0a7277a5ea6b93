"""Tests for the sparse/efficient MixIT options (Wisdom et al. 2021): the efficient assignment
(eq. 3, methods/mixit_assignment.py), the sparsity losses (eq. 5, 6) and the covariance loss
(eq. 7) (methods/losses.py), their config fields and the MixIT training step that uses them."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.config import (
    ConfigError,
    config_hash,
    identity_dict,
    parse_overrides,
    resolve_config,
)
from methods.losses import (
    covariance_loss,
    negative_thresholded_snr,
    sparsity_l1,
    sparsity_l1_l2,
    sparsity_loss,
    squared_error,
)
from methods.mixit import MixIT, MixITConfig
from methods.mixit_assignment import efficient_assignment, mixit_loss
from tasks.images import MnistTask


def _assert_valid_binary(mats: torch.Tensor, batch: int, num_refs: int, num_outputs: int) -> None:
    """Every matrix is 0/1 with exactly one 1 per column (an element of B^{N x M})."""
    assert mats.shape == (batch, num_refs, num_outputs)
    assert torch.all((mats == 0) | (mats == 1))
    assert torch.equal(mats.sum(dim=1), torch.ones(batch, num_outputs, dtype=mats.dtype))


# --------------------------------------------------------------------------------------------
# Efficient MixIT (eq. 3)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_outputs", [4, 8])
@pytest.mark.parametrize("loss_fn", [squared_error, negative_thresholded_snr], ids=["mse", "snr"])
def test_efficient_equals_exhaustive_on_well_separated_inputs(num_outputs: int, loss_fn) -> None:
    gen = torch.Generator().manual_seed(100 + num_outputs)
    batch, num_refs = 64, 2
    ests = torch.randn(batch, num_outputs, 1, 4, 8, generator=gen, dtype=torch.float64)
    # Planted assignment: x_n = sum of the outputs assigned to n, plus small noise (a reference
    # may receive no output at all: then it is noise only).
    owner = torch.randint(0, num_refs, (batch, num_outputs), generator=gen)
    planted = torch.nn.functional.one_hot(owner, num_refs).transpose(1, 2).double()
    refs = torch.einsum("bnm,bmchw->bnchw", planted, ests)
    refs = refs + 1e-3 * torch.randn(refs.shape, generator=gen, dtype=torch.float64)

    mats_eff = efficient_assignment(ests, refs)
    assert torch.equal(mats_eff, planted)

    loss_exh, mats_exh = mixit_loss(ests, refs, loss_fn)
    loss_eff, mats_eff2 = mixit_loss(ests, refs, loss_fn, assignment="efficient")
    assert torch.equal(mats_exh, planted)
    assert torch.equal(mats_eff2, mats_exh)
    assert loss_eff.shape == (batch,)
    torch.testing.assert_close(loss_eff, loss_exh, rtol=1e-12, atol=1e-12)


def test_efficient_mixit_loss_is_the_loss_of_its_matrix_with_gradient() -> None:
    gen = torch.Generator().manual_seed(7)
    refs = torch.randn(5, 2, 12, generator=gen, dtype=torch.float64)
    ests = torch.randn(5, 4, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    loss, mats = mixit_loss(ests, refs, squared_error, assignment="efficient")
    assert not mats.requires_grad  # a discrete choice: no gradient through A
    want = squared_error(torch.einsum("bnm,bmt->bnt", mats, ests.detach()), refs).sum(-1)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    assert ests.grad is not None and torch.isfinite(ests.grad).all()


def _degenerate_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(11)
    batch, t = 6, 10
    refs = torch.randn(batch, 2, t, generator=gen)
    noise = torch.randn(batch, 4, t, generator=gen)
    duplicated = noise.clone()
    duplicated[:, 1] = duplicated[:, 0]
    colinear = noise.clone()
    colinear[:, 2] = -3.0 * colinear[:, 3]
    one_zero = noise.clone()
    one_zero[:, 1] = 0.0
    non_finite = noise.clone()
    non_finite[0, 0, 0] = math.nan
    non_finite[1, 2, 3] = math.inf
    return {
        "all_zero_estimates": (refs, torch.zeros(batch, 4, t)),
        "all_zero_everything": (torch.zeros(batch, 2, t), torch.zeros(batch, 4, t)),
        "duplicated_outputs": (refs, duplicated),
        "colinear_outputs": (refs, colinear),
        "one_zero_output": (refs, one_zero),
        "random_noise": (refs, noise),
        "non_finite": (refs, non_finite),
        "float64_tiny_scale": (1e-20 * refs.double(), 1e-20 * noise.double()),
    }


@pytest.mark.parametrize("case", sorted(_degenerate_cases()))
def test_efficient_assignment_is_always_a_valid_binary_matrix(case: str) -> None:
    refs, ests = _degenerate_cases()[case]
    mats = efficient_assignment(ests, refs)
    _assert_valid_binary(mats, refs.shape[0], 2, ests.shape[1])
    assert mats.dtype == ests.dtype
    if case == "duplicated_outputs":  # identical outputs go to the same reference
        assert torch.equal(mats[:, :, 0], mats[:, :, 1])
    if case.startswith("all_zero"):  # nothing to explain: everything to the first reference
        assert torch.equal(mats[:, 0], torch.ones_like(mats[:, 0]))


def test_efficient_assignment_many_outputs_and_unknown_name() -> None:
    gen = torch.Generator().manual_seed(12)
    refs = torch.randn(3, 2, 40, generator=gen)
    # 2^40 matrices: the exhaustive search's table (2^40 x 2 x 40 float64) does not fit
    ests = torch.randn(3, 40, 40, generator=gen)
    loss, mats = mixit_loss(ests, refs, squared_error, assignment="efficient")
    _assert_valid_binary(mats, 3, 2, 40)
    assert torch.isfinite(loss).all()
    with pytest.raises(ValueError, match="mixit.assignment=efficient"):
        mixit_loss(ests, refs, squared_error)
    with pytest.raises(ValueError, match="exhaustive.*efficient"):
        mixit_loss(ests[:, :4, :4], refs[:, :, :4], squared_error, assignment="greedy")


# --------------------------------------------------------------------------------------------
# Sparsity (eq. 4-6) and covariance (eq. 7) losses on hand-computed examples
# --------------------------------------------------------------------------------------------

# One mixture, M = 3 outputs of T = 4 elements:
#   s_1 = (1, 1, 1, 1)  r_1 = sqrt((1 + 1 + 1 + 1) / 4) = 1
#   s_2 = (2, 2, 2, 2)  r_2 = sqrt((4 + 4 + 4 + 4) / 4) = 2
#   s_3 = (0, 0, 0, 0)  r_3 = 0            (1e-6 with the eps inside the square root)
#   x_bar = s_1 + s_2 + s_3 = (3, 3, 3, 3), rms(x_bar) = 3
# Second mixture, uncorrelated outputs:
#   s_1 = (3, 0, 0, 0)  r_1 = sqrt(9 / 4) = 1.5
#   s_2 = (0, 4, 0, 0)  r_2 = sqrt(16 / 4) = 2
#   s_3 = (0, 0, 0, 0)  r_3 = 0
#   x_bar = (3, 4, 0, 0), rms(x_bar) = sqrt(25 / 4) = 2.5
_SPARSE = torch.tensor(
    [
        [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]],
        [[3.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    ],
    dtype=torch.float64,
)


def test_sparsity_l1_hand_values() -> None:
    # eq. (5): C_l1 = (1/M) ||r||_1 / rms(x_bar)
    #   first:  (1/3) (1 + 2 + 0) / 3   = 1/3
    #   second: (1/3) (1.5 + 2 + 0) / 2.5 = 3.5 / 7.5 = 7/15
    want = torch.tensor([1.0 / 3.0, 7.0 / 15.0], dtype=torch.float64)
    got = sparsity_l1(_SPARSE)  # x_bar = sum of the outputs
    assert got.shape == (2,)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # An explicit x_bar is used as given: twice the mixture halves the loss.
    got2 = sparsity_l1(_SPARSE, mixture=2.0 * _SPARSE.sum(dim=1))
    torch.testing.assert_close(got2, want / 2.0, rtol=0, atol=1e-6)
    # Same numbers with image-shaped signals (B, M, C, H, W): T counts every element.
    torch.testing.assert_close(sparsity_l1(_SPARSE.reshape(2, 3, 1, 2, 2)), want, rtol=0, atol=1e-6)


def test_sparsity_l1_l2_hand_values() -> None:
    # eq. (6): C_l1/l2 = (1/M) ||r||_1 / ||r||_2
    #   first:  (1/3) (1 + 2 + 0) / sqrt(1 + 4 + 0)      = 1/sqrt(5)  = 0.4472...
    #   second: (1/3) (1.5 + 2 + 0) / sqrt(2.25 + 4 + 0) = 3.5 / 7.5 = 7/15 (for uncorrelated
    #           outputs ||r||_2 = rms(x_bar), so eq. 5 and eq. 6 agree)
    want = torch.tensor([1.0 / math.sqrt(5.0), 7.0 / 15.0], dtype=torch.float64)
    got = sparsity_l1_l2(_SPARSE)
    assert got.shape == (2,)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # Scale-invariant; bounds 1/M (one active output) and 1/sqrt(M) (equal levels), M = 4.
    torch.testing.assert_close(sparsity_l1_l2(7.0 * _SPARSE), want, rtol=0, atol=1e-6)
    one = torch.zeros(1, 4, 5, dtype=torch.float64)
    one[0, 2] = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0])
    assert float(sparsity_l1_l2(one)) == pytest.approx(1.0 / 4.0, abs=1e-6)
    equal = torch.tensor([[[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]]])
    assert float(sparsity_l1_l2(equal)) == pytest.approx(1.0 / 2.0, abs=1e-6)
    # All-zero outputs: finite (1/sqrt(M) through the eps) with a finite gradient.
    zeros = torch.zeros(2, 4, 6, requires_grad=True)
    value = sparsity_l1_l2(zeros)
    assert torch.allclose(value, torch.full((2,), 0.5))
    (value.sum() + sparsity_l1(zeros).sum()).backward()
    assert torch.isfinite(zeros.grad).all()


def test_sparsity_loss_lookup() -> None:
    assert torch.equal(sparsity_loss("l1", _SPARSE), sparsity_l1(_SPARSE))
    assert torch.equal(sparsity_loss("l1_l2", _SPARSE), sparsity_l1_l2(_SPARSE))
    assert torch.equal(sparsity_loss("none", _SPARSE), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="l1_l2"):
        sparsity_loss("l2", _SPARSE)


def test_covariance_loss_hand_values() -> None:
    # One mixture, M = 3 outputs, T = 4:
    #   s_1 = (1, 2, 3, 4) mean 2.5, centred (-1.5, -0.5, 0.5, 1.5)
    #   s_2 = (2, 0, 2, 0) mean 1,   centred ( 1,   -1,   1,  -1  )
    #   s_3 = (4, 3, 2, 1) mean 2.5, centred ( 1.5,  0.5, -0.5, -1.5)
    # cov(a, b) = (1/T) sum_t (a_t - mean a)(b_t - mean b):
    #   cov(s_1, s_2) = ((-1.5)(1) + (-0.5)(-1) + (0.5)(1) + (1.5)(-1)) / 4
    #                 = (-1.5 + 0.5 + 0.5 - 1.5) / 4 = -2 / 4 = -0.5
    #   cov(s_1, s_3) = ((-1.5)(1.5) + (-0.5)(0.5) + (0.5)(-0.5) + (1.5)(-1.5)) / 4
    #                 = (-2.25 - 0.25 - 0.25 - 2.25) / 4 = -5 / 4 = -1.25
    #   cov(s_2, s_3) = ((1)(1.5) + (-1)(0.5) + (1)(-0.5) + (-1)(-1.5)) / 4
    #                 = (1.5 - 0.5 - 0.5 + 1.5) / 4 = 2 / 4 = 0.5
    # eq. (7), ordered pairs m != m': 2 (|-0.5| + |-1.25| + |0.5|) = 2 (2.25) = 4.5
    # (the variances 1.25, 1, 1.25 are not counted: with them it would be 8.0; with 1/(T-1)
    # instead of 1/T it would be 6.0).
    # Second mixture: s_2 shifted by a constant (covariance is centred) and the outputs in
    # another order (the sum is symmetric): also 4.5. Third: uncorrelated outputs, 0.
    s1 = [1.0, 2.0, 3.0, 4.0]
    s2 = [2.0, 0.0, 2.0, 0.0]
    s3 = [4.0, 3.0, 2.0, 1.0]
    ests = torch.tensor(
        [
            [s1, s2, s3],
            [s3, [v + 10.0 for v in s2], s1],
            [[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]],
        ],
        dtype=torch.float64,
    )
    got = covariance_loss(ests)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.tensor([4.5, 4.5, 0.0], dtype=torch.float64))
    # Image-shaped signals give the same numbers.
    torch.testing.assert_close(covariance_loss(ests.reshape(3, 3, 1, 2, 2)), got)
    # Gradient is finite, also where a covariance is exactly 0.
    leaf = ests.clone().requires_grad_(True)
    covariance_loss(leaf).sum().backward()
    assert torch.isfinite(leaf.grad).all()


# --------------------------------------------------------------------------------------------
# Config fields and the MixIT training step
# --------------------------------------------------------------------------------------------

_OPTIONS = [
    "mixit.assignment=efficient",
    "mixit.sparsity=l1_l2",
    "mixit.sparsity_weight=23",
    "mixit.covariance_weight=0.1",
]


def test_config_defaults_keep_todays_behaviour_and_run_addresses() -> None:
    default = MixITConfig()
    assert (default.assignment, default.sparsity) == ("exhaustive", "none")
    assert (default.sparsity_weight, default.covariance_weight) == (0.0, 0.0)
    sections = MixIT.config_sections
    for preset in ("smoke", "cpu", "paper"):
        cfg = resolve_config("mixit", "mnist", 0, preset)
        # Options at their defaults are not part of a run's identity: hashes of runs stored
        # before the options existed are unchanged.
        assert set(identity_dict(cfg, sections)["mixit"]) == {
            "num_outputs",
            "loss",
            "snr_max",
            "single_source_prob",
        }
    variants = [
        [],
        ["mixit.assignment=efficient"],
        ["mixit.sparsity=l1"],
        ["mixit.sparsity=l1_l2"],
        ["mixit.sparsity=l1_l2", "mixit.sparsity_weight=23"],
        ["mixit.covariance_weight=0.1"],
    ]
    hashes = {
        config_hash(resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(v)), sections)
        for v in variants
    }
    assert len(hashes) == len(variants)


def test_config_reads_options_and_rejects_bad_values() -> None:
    cfg = resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(_OPTIONS))
    assert cfg.mixit.assignment == "efficient"
    assert cfg.mixit.sparsity == "l1_l2"
    assert cfg.mixit.sparsity_weight == 23.0
    assert cfg.mixit.covariance_weight == 0.1
    bad = [
        (["mixit.assignment=greedy"], "mixit.assignment"),
        (["mixit.sparsity=l2"], "mixit.sparsity"),
        (["mixit.sparsity=l1", "mixit.sparsity_weight=-1"], "mixit.sparsity_weight"),
        (["mixit.covariance_weight=nan"], "mixit.covariance_weight"),
        (["mixit.covariance_weight=-0.5"], "mixit.covariance_weight"),
        (["mixit.covariance_weight=abc"], "mixit.covariance_weight"),
    ]
    for items, message in bad:
        with pytest.raises(ConfigError, match=message):
            resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(items))
    with pytest.raises(ConfigError, match="mixit.sparsity=l1"):  # a weight without a loss
        resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["mixit.sparsity_weight=23"]))
    # M = 16 (2^16 matrices) fits; M = 40 (a table of 2^40 x 2 x 40 float64) does not
    resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["mixit.num_outputs=16"]))
    with pytest.raises(ConfigError, match="mixit.assignment=efficient"):
        resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["mixit.num_outputs=40"]))
    resolve_config(
        "mixit", "mnist", 0, "smoke", parse_overrides(["mixit.num_outputs=40", _OPTIONS[0]])
    )


def _method(data_root, overrides: list[str]) -> MixIT:
    cfg = resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(overrides))
    method = MixIT(cfg, MnistTask(cfg.task, data_root), torch.device("cpu"))
    method.setup(None)
    method.train_mode()
    return method


def test_mixit_train_step_with_options_logs_the_terms(data_root) -> None:
    torch.manual_seed(0)
    method = _method(data_root, _OPTIONS)
    logs = {k: float(v) for k, v in method.train_step(0, torch.Generator().manual_seed(0)).items()}
    assert set(logs) == {"loss", "grad_norm", "mixit_loss", "sparsity", "covariance"}
    assert all(math.isfinite(v) for v in logs.values())
    # M = 4 outputs: C_l1/l2 lies in [1/4, 1/2].
    assert 0.25 - 1e-6 <= logs["sparsity"] <= 0.5 + 1e-6
    assert logs["covariance"] >= 0.0
    # L = L_MixIT + 23 C_l1/l2 + 0.1 C_cov (batch means).
    want = logs["mixit_loss"] + 23.0 * logs["sparsity"] + 0.1 * logs["covariance"]
    assert logs["loss"] == pytest.approx(want, rel=1e-5)

    l1 = _method(data_root, ["mixit.sparsity=l1", "mixit.sparsity_weight=2"])
    logs = {k: float(v) for k, v in l1.train_step(0, torch.Generator().manual_seed(0)).items()}
    assert set(logs) == {"loss", "grad_norm", "mixit_loss", "sparsity"}
    assert logs["loss"] == pytest.approx(logs["mixit_loss"] + 2.0 * logs["sparsity"], rel=1e-5)

    plain = _method(data_root, [])
    assert set(plain.train_step(0, torch.Generator().manual_seed(0))) == {"loss", "grad_norm"}
