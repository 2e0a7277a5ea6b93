"""Tests for PIT (methods/pit.py), MixIT assignment and reduction (methods/mixit_assignment.py)
and the signal losses (methods/losses.py), against brute-force references written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from methods.losses import negative_thresholded_snr, signal_loss, squared_error
from methods.mixit_assignment import mixit_assignments, mixit_loss, reduce_to_k
from methods.pit import (
    all_permutations,
    apply_permutation,
    best_permutation,
    invert_permutation,
    pairwise_squared_error,
    pit_permutation,
)

# Two shared CPU cores: intra-op threads only spin against other jobs on tiny tensors.

# --------------------------------------------------------------------------------------------
# PIT
# --------------------------------------------------------------------------------------------


def _brute_force_pit(est: torch.Tensor, ref: torch.Tensor) -> tuple[list[tuple[int, ...]], list]:
    """Per batch item: argmin over permutations p of sum_k ||est_k - ref_{p[k]}||^2."""
    best_perms, best_costs = [], []
    num_sources = est.shape[1]
    for b in range(est.shape[0]):
        best_p, best_c = None, math.inf
        for p in itertools.permutations(range(num_sources)):
            cost = sum(float(((est[b, k] - ref[b, p[k]]) ** 2).sum()) for k in range(num_sources))
            if cost < best_c:
                best_p, best_c = p, cost
        best_perms.append(best_p)
        best_costs.append(best_c)
    return best_perms, best_costs


@pytest.mark.parametrize("num_sources", [2, 3, 4])
def test_pit_permutation_matches_brute_force(num_sources: int) -> None:
    gen = torch.Generator().manual_seed(10 + num_sources)
    batch = 6
    est = torch.randn(batch, num_sources, 3, 4, generator=gen, dtype=torch.float64)
    ref = torch.randn(batch, num_sources, 3, 4, generator=gen, dtype=torch.float64)
    perm = pit_permutation(est, ref)
    assert perm.shape == (batch, num_sources)
    assert perm.dtype == torch.long
    best_perms, best_costs = _brute_force_pit(est, ref)
    assert [tuple(row) for row in perm.tolist()] == best_perms
    aligned = apply_permutation(ref, perm)
    got_costs = (est - aligned).pow(2).flatten(1).sum(-1)
    torch.testing.assert_close(
        got_costs, torch.tensor(best_costs, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("num_sources", [2, 3, 4])
def test_pit_permutation_recovers_known_permutation(num_sources: int) -> None:
    gen = torch.Generator().manual_seed(20 + num_sources)
    batch = 8
    est = torch.randn(batch, num_sources, 16, generator=gen, dtype=torch.float64)
    true_perm = torch.stack(
        [torch.randperm(num_sources, generator=gen) for _ in range(batch)]
    )  # refs such that apply_permutation(refs, true_perm) == est (+ noise)
    refs = apply_permutation(est, invert_permutation(true_perm))
    refs = refs + 1e-3 * torch.randn(refs.shape, generator=gen, dtype=torch.float64)
    perm = pit_permutation(est, refs)
    assert torch.equal(perm, true_perm)
    # Every permutation of S_K should occur for some row at K = 2 (a non-trivial case).
    if num_sources == 2:
        assert {tuple(r) for r in true_perm.tolist()} == {(0, 1), (1, 0)}


def test_pit_permutation_has_no_gradient() -> None:
    est = torch.randn(2, 3, 5, requires_grad=True)
    ref = torch.randn(2, 3, 5)
    perm = pit_permutation(est, ref)
    assert not perm.requires_grad


def test_apply_permutation_semantics_and_inverse_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    batch, num_sources = 5, 4
    x = torch.randn(batch, num_sources, 2, 3, generator=gen)
    perm = torch.stack([torch.randperm(num_sources, generator=gen) for _ in range(batch)])
    out = apply_permutation(x, perm)
    for b in range(batch):
        for k in range(num_sources):
            assert torch.equal(out[b, k], x[b, perm[b, k]])
    inv = invert_permutation(perm)
    for b in range(batch):
        for k in range(num_sources):
            assert inv[b, perm[b, k]] == k
    assert torch.equal(apply_permutation(out, inv), x)
    assert torch.equal(apply_permutation(apply_permutation(x, inv), perm), x)
    assert torch.equal(invert_permutation(inv), perm)


def test_apply_permutation_rejects_mismatched_shape() -> None:
    with pytest.raises(ValueError):
        apply_permutation(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


def test_all_permutations_table() -> None:
    perms = all_permutations(3)
    assert perms.tolist() == [list(p) for p in itertools.permutations(range(3))]
    assert perms[0].tolist() == [0, 1, 2]
    assert all_permutations(4).shape == (24, 4)
    with pytest.raises(ValueError):
        all_permutations(0)
    with pytest.raises(ValueError):
        all_permutations(9)


def test_pairwise_squared_error_matches_direct() -> None:
    gen = torch.Generator().manual_seed(4)
    est = torch.randn(3, 3, 2, 5, generator=gen, dtype=torch.float64)
    ref = torch.randn(3, 3, 2, 5, generator=gen, dtype=torch.float64)
    cost = pairwise_squared_error(est, ref)
    direct = (est[:, :, None] - ref[:, None, :]).pow(2).flatten(3).sum(-1)
    torch.testing.assert_close(cost, direct, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("num_sources", [2, 3, 4])
def test_best_permutation_totals_equal_brute_force_minimum(num_sources: int) -> None:
    gen = torch.Generator().manual_seed(30 + num_sources)
    batch = 7
    cost = torch.rand(batch, num_sources, num_sources, generator=gen, dtype=torch.float64)
    total, perm = best_permutation(cost)
    assert perm.shape == (batch, num_sources)
    assert total.shape == (batch,)
    for b in range(batch):
        sums = {
            p: sum(float(cost[b, k, p[k]]) for k in range(num_sources))
            for p in itertools.permutations(range(num_sources))
        }
        best = min(sums.values())
        assert float(total[b]) == pytest.approx(best, rel=1e-12, abs=1e-12)
        achieved = sum(float(cost[b, k, perm[b, k]]) for k in range(num_sources))
        assert achieved == pytest.approx(best, rel=1e-12, abs=1e-12)
        assert sorted(perm[b].tolist()) == list(range(num_sources))


def test_best_permutation_tie_resolves_to_identity() -> None:
    cost = torch.zeros(2, 3, 3)
    total, perm = best_permutation(cost)
    assert perm.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert total.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------------------------
# MixIT
# --------------------------------------------------------------------------------------------


def _mse_one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).mean()


def _neg_snr_one(y: torch.Tensor, y_hat: torch.Tensor, snr_max: float = 30.0) -> torch.Tensor:
    tau = 10.0 ** (-snr_max / 10.0)
    num = (y**2).sum() + 1e-8
    den = ((y - y_hat) ** 2).sum() + tau * (y**2).sum() + 1e-8
    return -10.0 * torch.log10(num / den)


def _brute_force_mixit(refs, ests, loss_one):
    """Plain loops over all N^M assignments: min_A sum_n L(x_n, sum_{m: a(m)=n} s_m)."""
    batch, num_refs = refs.shape[:2]
    num_outputs = ests.shape[1]
    mins = []
    for b in range(batch):
        best = math.inf
        for assign in itertools.product(range(num_refs), repeat=num_outputs):
            total = 0.0
            for n in range(num_refs):
                remix_n = torch.zeros_like(refs[b, n])
                for m in range(num_outputs):
                    if assign[m] == n:
                        remix_n = remix_n + ests[b, m]
                total += float(loss_one(refs[b, n], remix_n))
            best = min(best, total)
        mins.append(best)
    return mins


@pytest.mark.parametrize(
    "loss_fn, loss_one",
    [(squared_error, _mse_one), (negative_thresholded_snr, _neg_snr_one)],
    ids=["mse", "snr"],
)
def test_mixit_loss_equals_brute_force(loss_fn, loss_one) -> None:
    gen = torch.Generator().manual_seed(5)
    batch, num_refs, num_outputs = 5, 2, 4
    refs = torch.randn(batch, num_refs, 3, 4, generator=gen, dtype=torch.float64)
    # Estimates loosely related to the references so that the best assignment is non-trivial.
    ests = torch.randn(batch, num_outputs, 3, 4, generator=gen, dtype=torch.float64)
    ests[:, 0] += refs[:, 0]
    ests[:, 3] += refs[:, 1]
    ests.requires_grad_(True)

    loss, mats = mixit_loss(ests, refs, loss_fn)
    assert loss.shape == (batch,)
    assert mats.shape == (batch, num_refs, num_outputs)

    expected = _brute_force_mixit(refs, ests.detach(), loss_one)
    torch.testing.assert_close(
        loss.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9
    )

    # A is binary with one 1 per column (every output assigned to exactly one reference).
    assert torch.all((mats == 0) | (mats == 1))
    assert torch.equal(mats.sum(dim=1), torch.ones(batch, num_outputs, dtype=mats.dtype))

    # The returned A achieves the minimum.
    with torch.no_grad():
        for b in range(batch):
            remixed = torch.einsum("nm,mij->nij", mats[b], ests[b])
            achieved = sum(float(loss_one(refs[b, n], remixed[n])) for n in range(num_refs))
            assert achieved == pytest.approx(expected[b], rel=1e-9, abs=1e-9)

    # Gradient reaches the estimates.
    loss.sum().backward()
    assert ests.grad is not None
    assert torch.isfinite(ests.grad).all()
    assert ests.grad.abs().sum() > 0


def test_mixit_loss_finds_planted_assignment() -> None:
    gen = torch.Generator().manual_seed(6)
    batch = 4
    parts = torch.randn(batch, 4, 10, generator=gen, dtype=torch.float64)
    # x_1 = s_0 + s_2, x_2 = s_1 + s_3 exactly.
    refs = torch.stack([parts[:, 0] + parts[:, 2], parts[:, 1] + parts[:, 3]], dim=1)
    loss, mats = mixit_loss(parts, refs, squared_error)
    torch.testing.assert_close(loss, torch.zeros(batch, dtype=torch.float64), atol=1e-20, rtol=0)
    expected = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    for b in range(batch):
        assert torch.equal(mats[b], expected)


def test_mixit_assignments_table() -> None:
    mats = mixit_assignments(2, 4)
    assert mats.shape == (16, 2, 4)
    assert torch.equal(mats.sum(dim=1), torch.ones(16, 4))
    assert len({tuple(m.flatten().tolist()) for m in mats}) == 16
    assert mixit_assignments(3, 2).shape == (9, 3, 2)
    with pytest.raises(ValueError, match="mixit.assignment=efficient"):
        mixit_assignments(2, 40)  # 2^40 x 2 x 40 float64: more than the memory
    with pytest.raises(ValueError):
        mixit_assignments(0, 2)


# --------------------------------------------------------------------------------------------
# Thresholded SNR (sparse-MixIT eq. 2)
# --------------------------------------------------------------------------------------------


def test_negative_thresholded_snr_hand_values() -> None:
    # y = (3, 4): ||y||^2 = 25. y_hat = (2, 4): ||y - y_hat||^2 = 1. tau = 10^(-30/10) = 1e-3.
    # L = -10 log10(25 / (1 + 1e-3 * 25)) = -10 log10(25 / 1.025).
    # Second signal: y = (1, -2, 2) (||y||^2 = 9), y_hat = (0, 0, 0) (error energy 9).
    # L = -10 log10(9 / (9 + 9e-3)).
    refs = torch.tensor([[[3.0, 4.0, 0.0], [1.0, -2.0, 2.0]]], dtype=torch.float64)
    ests = torch.tensor([[[2.0, 4.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    got = negative_thresholded_snr(ests, refs, snr_max_db=30.0)
    want = torch.tensor(
        [[-10.0 * math.log10(25.0 / 1.025), -10.0 * math.log10(9.0 / 9.009)]],
        dtype=torch.float64,
    )
    assert got.shape == (1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    # SNR_max = 20 dB: tau = 0.01, L = -10 log10(25 / (1 + 0.25)) = -10 log10(20).
    got20 = negative_thresholded_snr(ests[:, :1], refs[:, :1], snr_max_db=20.0)
    assert float(got20) == pytest.approx(-10.0 * math.log10(20.0), abs=1e-6)


@pytest.mark.parametrize("snr_max", [30.0, 20.0])
def test_negative_thresholded_snr_saturates_for_perfect_estimate(snr_max: float) -> None:
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(3, 2, 50, generator=gen, dtype=torch.float64)
    got = negative_thresholded_snr(y.clone(), y, snr_max_db=snr_max)
    torch.testing.assert_close(got, torch.full_like(got, -snr_max), atol=1e-6, rtol=0)
    # Bounded below by -snr_max for any estimate.
    noisy = y + 1e-4 * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    assert (negative_thresholded_snr(noisy, y, snr_max_db=snr_max) >= -snr_max - 1e-9).all()


def test_signal_loss_lookup() -> None:
    refs = torch.randn(2, 2, 5)
    ests = torch.randn(2, 2, 5)
    assert torch.equal(signal_loss("mse")(ests, refs), squared_error(ests, refs))
    assert torch.equal(
        signal_loss("snr", 20.0)(ests, refs), negative_thresholded_snr(ests, refs, snr_max_db=20.0)
    )
    with pytest.raises(ValueError, match="mse"):
        signal_loss("l1")


def test_squared_error_is_per_signal_mean() -> None:
    refs = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    ests = torch.tensor([[[0.0, 0.0], [3.0, 1.0]]])
    assert squared_error(ests, refs).tolist() == [[2.5, 5.0]]


# --------------------------------------------------------------------------------------------
# M -> K reduction
# --------------------------------------------------------------------------------------------


def test_reduce_to_k_shape_and_mixture_consistency() -> None:
    gen = torch.Generator().manual_seed(8)
    est = torch.randn(5, 4, 3, 6, generator=gen, dtype=torch.float64)
    out = reduce_to_k(est, 2)
    assert out.shape == (5, 2, 3, 6)
    torch.testing.assert_close(out.sum(dim=1), est.sum(dim=1), rtol=0, atol=1e-12)
    out3 = reduce_to_k(est, 3)
    assert out3.shape == (5, 3, 3, 6)
    torch.testing.assert_close(out3.sum(dim=1), est.sum(dim=1), rtol=0, atol=1e-12)
    # Every reduced source is a sum of a subset of the outputs (one-hot grouping).
    for b in range(5):
        matched = 0
        for k in range(2):
            for r in range(1, 4):
                for subset in itertools.combinations(range(4), r):
                    if torch.allclose(out[b, k], est[b, list(subset)].sum(0), atol=1e-12):
                        matched += 1
                        break
                else:
                    continue
                break
        assert matched == 2


def test_reduce_to_k_groups_faint_copies_with_their_source() -> None:
    gen = torch.Generator().manual_seed(9)
    batch, eps = 3, 0.05
    a = torch.randn(batch, 2, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(batch, 2, 8, generator=gen, dtype=torch.float64)
    # Outputs in a scrambled order: [eps b, a, eps a, b].
    est = torch.stack([eps * b, a, eps * a, b], dim=1)
    out = reduce_to_k(est, 2)
    assert out.shape == (batch, 2, 2, 8)
    want_a, want_b = a + eps * a, b + eps * b
    for i in range(batch):
        direct = torch.allclose(out[i, 0], want_a[i]) and torch.allclose(out[i, 1], want_b[i])
        swapped = torch.allclose(out[i, 0], want_b[i]) and torch.allclose(out[i, 1], want_a[i])
        assert direct or swapped, f"batch item {i}: wrong grouping"


def test_reduce_to_k_identity_and_error() -> None:
    est = torch.randn(2, 3, 5)
    out = reduce_to_k(est, 3)
    assert torch.equal(out, est)
    with pytest.raises(ValueError):
        reduce_to_k(est, 4)


def test_reduce_to_k_is_differentiable() -> None:
    est = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    reduce_to_k(est, 2).pow(2).sum().backward()
    assert est.grad is not None and est.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# The one best-permutation search, PIT from the pairwise matrix (issue 13)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("num_sources", [1, 2, 3, 4, 5])
def test_best_permutation_equals_brute_force(num_sources: int, maximize: bool) -> None:
    gen = torch.Generator().manual_seed(40 + num_sources)
    cost = torch.randn(9, num_sources, num_sources, generator=gen, dtype=torch.float64)
    total, perm = best_permutation(cost, maximize=maximize)
    pick = max if maximize else min
    for b in range(cost.shape[0]):
        sums = {
            p: sum(float(cost[b, k, p[k]]) for k in range(num_sources))
            for p in itertools.permutations(range(num_sources))
        }
        best = pick(sums, key=sums.get)
        assert tuple(perm[b].tolist()) == best
        assert float(total[b]) == pytest.approx(sums[best], rel=1e-12, abs=1e-12)


def test_best_permutation_ties_and_nan() -> None:
    # every total equal: the identity; two best ones: the first in lexicographic order
    assert best_permutation(torch.ones(1, 3, 3))[1].tolist() == [[0, 1, 2]]
    score = torch.tensor([[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    assert best_permutation(score, maximize=True)[1].tolist() == [[1, 0, 2]]
    # a NaN total is never chosen over a number, whether minimising or maximising ...
    cost = torch.tensor([[[math.nan, 5.0], [5.0, 1.0]]])
    assert best_permutation(cost)[1].tolist() == [[1, 0]]
    assert best_permutation(-cost, maximize=True)[1].tolist() == [[1, 0]]
    # ... and when every total is NaN the identity is returned
    assert best_permutation(torch.full((1, 2, 2), math.nan))[1].tolist() == [[0, 1]]
    with pytest.raises(ValueError, match=r"\(B, K, K\)"):
        best_permutation(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("num_sources", [9, 12])
def test_best_permutation_uses_the_hungarian_algorithm_above_eight(num_sources: int) -> None:
    gen = torch.Generator().manual_seed(num_sources)
    planted = torch.stack([torch.randperm(num_sources, generator=gen) for _ in range(3)])
    cost = 10.0 + torch.rand(3, num_sources, num_sources, generator=gen, dtype=torch.float64)
    cost.scatter_(2, planted[:, :, None], 0.0)  # the planted pairing costs 0, any other >= 10
    total, perm = best_permutation(cost)
    assert torch.equal(perm, planted)
    assert total.tolist() == [0.0, 0.0, 0.0]
    total_max, perm_max = best_permutation(-cost, maximize=True)
    assert torch.equal(perm_max, planted)
    # agrees with the exhaustive search on random matrices (through the private entry point)
    from methods.pit import _hungarian

    random = torch.rand(20, 5, 5, generator=gen, dtype=torch.float64)
    exhaustive_total, _ = best_permutation(random)
    hungarian = _hungarian(random, maximize=False)
    torch.testing.assert_close(
        random.gather(2, hungarian[:, :, None]).sum((1, 2)), exhaustive_total, rtol=0, atol=1e-12
    )


def _pit_loss_by_k_factorial_evaluations(estimates, references, loss_fn):
    """The former pit_loss: the loss evaluated for each of the K! permutations (argmin, first
    of equals), transcribed as a reference."""
    num = estimates.shape[1]
    perms = all_permutations(num)
    totals = torch.stack(
        [
            loss_fn(estimates, apply_permutation(references, p.expand(len(estimates), num))).sum(-1)
            for p in perms
        ],
        dim=1,
    )
    best = totals.argmin(dim=1)
    return totals.gather(1, best[:, None]).squeeze(1), perms[best]


@pytest.mark.parametrize("num_sources", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pit_loss_equals_the_k_factorial_search_with_gradient(num_sources: int, dtype) -> None:
    from methods.pit import pit_loss

    gen = torch.Generator().manual_seed(50 + num_sources)
    refs = torch.randn(7, num_sources, 2, 30, generator=gen, dtype=dtype)
    mixing = 0.6 * torch.eye(num_sources, dtype=dtype) + 0.4 / num_sources
    ests = torch.einsum("kj,bjct->bkct", mixing, refs).flip(1)
    ests = ests + 0.3 * torch.randn(ests.shape, generator=gen, dtype=dtype)
    for loss_fn in (signal_loss("snr"), squared_error):
        a = ests.clone().requires_grad_(True)
        b = ests.clone().requires_grad_(True)
        loss, perm = pit_loss(a, refs, loss_fn)
        want, want_perm = _pit_loss_by_k_factorial_evaluations(b, refs, loss_fn)
        assert torch.equal(perm, want_perm)
        assert not torch.equal(perm, torch.arange(num_sources).expand_as(perm))
        torch.testing.assert_close(
            loss, want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0
        )
        loss.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Exhaustive MixIT from Gram matrices (issue 13)
# --------------------------------------------------------------------------------------------


def _mixit_batch(num_outputs: int, dtype, seed: int, length: int = 24):
    """Two reference mixtures of two sources and M mixture-consistent, partly separated
    outputs (each source spread over the outputs by a random softmax)."""
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randn(6, 4, length, generator=gen, dtype=torch.float64)
    refs = sources.reshape(6, 2, 2, length).sum(2)
    weights = torch.softmax(3.0 * torch.randn(6, num_outputs, 4, generator=gen), dim=1).double()
    ests = torch.einsum("bms,bsd->bmd", weights, sources)
    ests = ests + 0.05 * torch.randn(ests.shape, generator=gen, dtype=torch.float64)
    return ests.to(dtype), refs.to(dtype)


@pytest.mark.parametrize("num_outputs", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["mse", "snr"])
def test_gram_mixit_equals_the_search_on_remixed_signals(num_outputs, dtype, name) -> None:
    """N = 2, M = 2..8: the Gram-matrix search picks the matrix of the search that remixes
    the signals (the former implementation), with the same loss and gradient."""
    ests, refs = _mixit_batch(num_outputs, dtype, seed=num_outputs)
    loss_fn = signal_loss(name)
    assert hasattr(loss_fn, "from_energies")

    def without_energy_form(e, r):  # a plain callable: mixit_loss remixes the signals
        return loss_fn(e, r)

    a = ests.clone().requires_grad_(True)
    b = ests.clone().requires_grad_(True)
    loss, mats = mixit_loss(a, refs, loss_fn)
    want, want_mats = mixit_loss(b, refs, without_energy_form)
    assert torch.equal(mats, want_mats)
    assert torch.equal(loss, want)  # the same matrix, the loss evaluated once the same way
    loss.sum().backward()
    want.sum().backward()
    assert torch.equal(a.grad, b.grad)
    # and the remixed search is the brute-force minimum
    expected = _brute_force_mixit(
        refs.double(), ests.double(), _mse_one if name == "mse" else _neg_snr_one
    )
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(
        loss.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=tol
    )


def test_gram_mixit_runs_at_sixteen_outputs_and_the_table_is_cached() -> None:
    from methods.mixit_assignment import _assignment_table, exhaustive_assignment

    ests, refs = _mixit_batch(16, torch.float32, seed=16, length=40)
    loss_fn = signal_loss("snr")
    best = exhaustive_assignment(ests, refs, loss_fn.from_energies)
    loss, mats = mixit_loss(ests, refs, loss_fn)
    table = mixit_assignments(2, 16)
    assert table.shape == (65536, 2, 16)
    assert torch.equal(mats, table[best])
    # no matrix does better: compare with 2000 random ones and the efficient assignment
    gen = torch.Generator().manual_seed(0)
    rows = table[torch.randint(65536, (2000,), generator=gen)]
    remixed = torch.einsum("anm,bmd->band", rows, ests)
    others = loss_fn(remixed.flatten(0, 1), refs.repeat_interleave(2000, 0)).sum(-1)
    assert (loss.repeat_interleave(2000) <= others.reshape(-1) + 1e-4).all()
    efficient, _ = mixit_loss(ests, refs, loss_fn, assignment="efficient")
    assert (loss <= efficient + 1e-4).all()
    # the table is built once per (N, M, device), in itertools.product order
    assert _assignment_table(2, 16, "cpu") is _assignment_table(2, 16, "cpu")
    small = mixit_assignments(3, 3)
    product = list(itertools.product(range(3), repeat=3))
    assert [tuple(m.argmax(0).tolist()) for m in small] == product


def test_exhaustive_mixit_refuses_a_table_larger_than_memory() -> None:
    from methods.mixit_assignment import check_exhaustive_fits

    check_exhaustive_fits(2, 16)
    with pytest.raises(ValueError, match=r"N=2 .* M=48 .*mixit.assignment=efficient"):
        check_exhaustive_fits(2, 48)
