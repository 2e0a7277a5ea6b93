"""Tests for the SURF losses against the paper's Code Listing 1 (methods/surf.py), the regression
remixing losses (methods/remixing.py), the EMA teacher and beta schedule (methods/ema.py) and the
run configuration (benchmark/config.py)."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch import nn

from benchmark.config import (
    ConfigError,
    config_hash,
    parse_overrides,
    resolve_config,
)
from methods.ema import beta_schedule, ema_update, make_ema_copy
from methods.flow import clean_estimate, initial_state, interpolant, target_velocity
from methods.mixit import MixIT
from methods.pit import apply_permutation, pit_permutation
from methods.remix import remix
from methods.remixing import remixit_loss, self_remixing_loss
from methods.surf import SurfSR, rm_fm_loss, sr_fm_loss

# Two shared CPU cores: intra-op threads only spin against other jobs on tiny tensors.

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Code Listing 1 (SURF), transcribed literally
# --------------------------------------------------------------------------------------------


def _listing_sr_fm(residual, upsilon_indices, perm, B, K, D):
    """The SR-FM branch of Code Listing 1, copied literally."""
    # Assuming upsilon_indices has shape [B, K]
    upsilon_inv_indices = torch.argsort(upsilon_indices, dim=1)
    # Gather the residuals back to their unaligned positions
    residual = torch.gather(residual, 1, upsilon_inv_indices.unsqueeze(-1).expand(-1, -1, D))
    inv_perm = torch.argsort(perm)
    # Re-shuffling residual to match original mixture M
    res_flat = residual.view(B * K, D)[inv_perm]
    res_unshuffled = res_flat.view(B, K, D)
    loss = (res_unshuffled.sum(dim=1) ** 2).mean()
    return loss


def _random_row_perms(batch: int, num_sources: int, gen: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randperm(num_sources, generator=gen) for _ in range(batch)])


@pytest.mark.parametrize("num_sources", [2, 3])
def test_sr_fm_loss_matches_code_listing(num_sources: int) -> None:
    B, K, D = 4, num_sources, 6
    gen = torch.Generator().manual_seed(100 + K)
    residual = torch.randn(B, K, D, generator=gen, dtype=F64)
    perm = torch.randperm(B * K, generator=gen)
    upsilon = _random_row_perms(B, K, gen)
    if K == 3:  # make sure 3-cycles (where argsort(u) != u) are present
        upsilon[0] = torch.tensor([1, 2, 0])
        upsilon[1] = torch.tensor([2, 0, 1])
    want = _listing_sr_fm(residual.clone(), upsilon, perm, B, K, D)
    got = sr_fm_loss(residual, upsilon, perm)
    assert got.dim() == 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    if K == 3:
        # The test distinguishes Upsilon from Upsilon^{-1}: using the non-inverted indices gives
        # a different value.
        wrong = _listing_sr_fm(residual.clone(), torch.argsort(upsilon, dim=1), perm, B, K, D)
        assert not torch.isclose(wrong, want, rtol=1e-6, atol=0)


def test_sr_fm_loss_gradient_matches_code_listing() -> None:
    B, K, D = 3, 3, 5
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(B, K, D, generator=gen, dtype=F64)
    perm = torch.randperm(B * K, generator=gen)
    upsilon = _random_row_perms(B, K, gen)
    r1 = base.clone().requires_grad_(True)
    r2 = base.clone().requires_grad_(True)
    sr_fm_loss(r1, upsilon, perm).backward()
    _listing_sr_fm(r2, upsilon, perm, B, K, D).backward()
    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-12, atol=1e-14)


def test_rm_fm_loss_is_mean_square() -> None:
    residual = torch.randn(4, 2, 3, 5, generator=torch.Generator().manual_seed(8), dtype=F64)
    assert torch.equal(rm_fm_loss(residual), (residual**2).mean())


class _TinyStudent(nn.Module):
    """Deterministic velocity model v(x, t, m) for the listing transcription.

    Accepts the listing's shapes (``t`` of shape (1,), mixture (B, 1, D)) and the library's
    (``t`` of shape (B,), mixture (B, D)).
    """

    def __init__(self, num_sources: int, dim: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(
            0.3
            * torch.randn(num_sources * dim + dim + 1, num_sources * dim, generator=gen, dtype=F64)
        )
        self.num_sources, self.dim = num_sources, dim

    def forward(self, x: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        tt = t.to(x.dtype).reshape(-1).expand(batch)[:, None]
        inp = torch.cat([x.reshape(batch, -1), m.reshape(batch, self.dim), tt], dim=1)
        return torch.tanh(inp @ self.w).reshape(x.shape) * 2.0


def _listing_optimal_pit(v_0, tilde_X_1, tilde_X_0):
    """Listing's ``optimal_pit``: argmin_Gamma ||v_0 - (Gamma X_1 - X_0)||^2 by brute force."""
    B, K = tilde_X_1.shape[:2]
    indices, aligned = [], []
    for b in range(B):
        best, best_cost = None, float("inf")
        for g in itertools.permutations(range(K)):
            cand = tilde_X_1[b, list(g)]
            cost = float(((v_0[b] - (cand - tilde_X_0[b])) ** 2).sum())
            if cost < best_cost:
                best, best_cost = g, cost
        indices.append(list(best))
        aligned.append(tilde_X_1[b, list(best)])
    return torch.stack(aligned), torch.tensor(indices)


@pytest.mark.parametrize("num_sources", [2, 3])
def test_surf_iteration_matches_code_listing(num_sources: int) -> None:
    B, K, D = 5, num_sources, 4
    gen = torch.Generator().manual_seed(200 + K)
    bar_X = torch.rand(B, K, D, generator=gen, dtype=F64)  # teacher estimates
    perm = torch.randperm(B * K, generator=gen)
    t = torch.rand(1, generator=gen, dtype=F64)
    Z = torch.randn(B, K, D, generator=gen, dtype=F64)
    student_listing = _TinyStudent(K, D, seed=K)
    student_lib = _TinyStudent(K, D, seed=K)

    # ---- Code Listing 1 (literal, with the given perm, t and Z) ----
    bar_X_flat = bar_X.view(B * K, D)
    tilde_X_1 = bar_X_flat[perm].view(B, K, D)
    tilde_M = tilde_X_1.sum(dim=1, keepdim=True)
    Z_centered = Z - Z.mean(dim=1, keepdim=True)
    tilde_X_0 = (tilde_M / K) + Z_centered
    with torch.no_grad():
        v_0 = student_listing(tilde_X_0, torch.zeros_like(t), tilde_M)
        tilde_X_1_aligned, upsilon_indices = _listing_optimal_pit(v_0, tilde_X_1, tilde_X_0)
    X_t = (1 - t) * tilde_X_0 + t * tilde_X_1_aligned
    target_drift = tilde_X_1_aligned - tilde_X_0
    v_pred = student_listing(X_t, t, tilde_M)
    residual_listing = v_pred - target_drift
    loss_rm_listing = (residual_listing**2).mean()
    loss_sr_listing = _listing_sr_fm(residual_listing, upsilon_indices, perm, B, K, D)

    # ---- library (the steps of methods.surf._Surf.train_step) ----
    r = remix(bar_X, perm=perm)
    x1, m_tilde = r.sources, r.mixtures
    torch.testing.assert_close(x1, tilde_X_1, rtol=0, atol=0)
    torch.testing.assert_close(m_tilde, tilde_M.squeeze(1), rtol=0, atol=0)
    x0 = initial_state(m_tilde, K, 1.0, noise=Z)
    torch.testing.assert_close(x0, tilde_X_0, rtol=0, atol=1e-14)
    tb = t.expand(B)
    with torch.no_grad():
        zeros = torch.zeros_like(tb)
        v0_lib = student_lib(x0, zeros, m_tilde)
        torch.testing.assert_close(v0_lib, v_0, rtol=0, atol=1e-13)
        upsilon = pit_permutation(clean_estimate(x0, v0_lib, zeros), x1)  # eq. (22)
    assert torch.equal(upsilon, upsilon_indices)  # eq. (21) == eq. (22)
    assert torch.equal(pit_permutation(x0 + v0_lib, x1), upsilon_indices)
    x1_aligned = apply_permutation(x1, upsilon)
    torch.testing.assert_close(x1_aligned, tilde_X_1_aligned, rtol=0, atol=0)
    x_t = interpolant(x0, x1_aligned, tb)
    torch.testing.assert_close(x_t, X_t, rtol=0, atol=1e-14)
    drift = target_velocity(x0, x1_aligned)
    torch.testing.assert_close(drift, target_drift, rtol=0, atol=1e-14)
    residual = student_lib(x_t, tb, m_tilde) - drift
    torch.testing.assert_close(residual, residual_listing, rtol=0, atol=1e-13)
    loss_rm = rm_fm_loss(residual)
    loss_sr = sr_fm_loss(residual, upsilon, r.perm)
    torch.testing.assert_close(loss_rm, loss_rm_listing, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss_sr, loss_sr_listing, rtol=1e-12, atol=0)

    # Gradients with respect to the student's weights agree too.
    (g_lib,) = torch.autograd.grad(loss_sr, student_lib.w)
    (g_listing,) = torch.autograd.grad(loss_sr_listing, student_listing.w)
    torch.testing.assert_close(g_lib, g_listing, rtol=1e-10, atol=1e-13)
    (g_lib_rm,) = torch.autograd.grad(
        rm_fm_loss(student_lib(x_t, tb, m_tilde) - drift), student_lib.w
    )
    (g_listing_rm,) = torch.autograd.grad(
        ((student_listing(X_t, t, tilde_M) - target_drift) ** 2).mean(), student_listing.w
    )
    torch.testing.assert_close(g_lib_rm, g_listing_rm, rtol=1e-10, atol=1e-13)

    # The case is non-trivial: PIT does not pick the identity for every mixture.
    identity = torch.arange(K).expand(B, K)
    assert not torch.equal(upsilon, identity)


# --------------------------------------------------------------------------------------------
# ReMixIT (eq. 16) and Self-Remixing (eq. 17)
# --------------------------------------------------------------------------------------------


def _remix_case(seed: int, B: int = 4, K: int = 3, D: int = 5):
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, K, D, generator=gen, dtype=F64)
    mixtures = teacher.sum(dim=1) + 0.1 * torch.randn(B, D, generator=gen, dtype=F64)
    r = remix(teacher, perm=torch.randperm(B * K, generator=gen))
    student = torch.randn(B, K, D, generator=gen, dtype=F64)
    upsilon = _random_row_perms(B, K, gen)
    upsilon[0] = torch.tensor([1, 2, 0])
    return teacher, mixtures, r, student, upsilon


def test_remixit_loss_matches_loop() -> None:
    _, _, r, student, upsilon = _remix_case(300)
    B, K, D = student.shape
    total = 0.0
    for b in range(B):
        for k in range(K):
            total += float(((student[b, k] - r.sources[b, upsilon[b, k]]) ** 2).sum())
    want = total / (B * K * D)
    assert float(remixit_loss(student, r, upsilon)) == pytest.approx(want, rel=1e-12)


def test_self_remixing_loss_matches_loop() -> None:
    _, mixtures, r, student, upsilon = _remix_case(301)
    B, K, D = student.shape
    routed = torch.zeros(B, D, dtype=F64)
    for b in range(B):
        for k in range(K):
            # Student row (b, k) estimates remixed source (b, upsilon[b, k]), i.e. flat row
            # i = b K + upsilon[b, k] of X_tilde, which is row perm[i] of X_bar: it belongs to the
            # observed mixture perm[i] // K.
            i = b * K + int(upsilon[b, k])
            origin = int(r.perm[i]) // K
            routed[origin] += student[b, k]
    want = float(((routed - mixtures) ** 2).mean())
    got = self_remixing_loss(student, r, upsilon, mixtures)
    assert got.dim() == 0
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_self_remixing_loss_is_zero_for_perfect_student() -> None:
    teacher, _, r, _, upsilon = _remix_case(302)
    mixtures = teacher.sum(dim=1)  # teacher estimates sum to the observed mixtures
    perfect = apply_permutation(r.sources, upsilon)  # = Upsilon X_tilde
    assert float(self_remixing_loss(perfect, r, upsilon, mixtures)) == pytest.approx(0, abs=1e-24)
    assert float(remixit_loss(perfect, r, upsilon)) == 0.0
    # A constant offset of the observed mixtures shows up exactly in the loss.
    assert float(self_remixing_loss(perfect, r, upsilon, mixtures + 1.0)) == pytest.approx(1.0)
    # With the wrong routing (a 3-cycle is not its own inverse) the loss is not zero.
    wrong = torch.argsort(upsilon, dim=1)
    assert float(self_remixing_loss(perfect, r, wrong, mixtures)) > 1e-3


# --------------------------------------------------------------------------------------------
# EMA and beta schedule
# --------------------------------------------------------------------------------------------


def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()


@pytest.mark.parametrize("alpha", [0.0, 0.9, 0.999, 1.0])
def test_ema_update_is_convex_combination(alpha: float) -> None:
    teacher, student = _linear(0), _linear(1)
    with torch.no_grad():  # distinct float buffers too
        teacher[1].running_mean.fill_(0.5)
        student[1].running_mean.fill_(-1.5)
        student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_state = student.state_dict()
    ema_update(teacher, student, alpha)
    after = teacher.state_dict()
    for name, old in before.items():
        if not old.is_floating_point():
            assert torch.equal(after[name], old), name  # integer buffers untouched
            continue
        want = alpha * old + (1 - alpha) * s_state[name]
        if alpha in (0.0, 1.0):
            assert torch.equal(after[name], want), name
        else:
            torch.testing.assert_close(after[name], want, rtol=1e-14, atol=1e-15)
    # The student is not modified.
    for name, value in student.state_dict().items():
        assert torch.equal(value, s_state[name])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_ema_update_rejects_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(ValueError):
        ema_update(_linear(0), _linear(1), alpha)


def test_ema_update_rejects_different_architectures() -> None:
    with pytest.raises(ValueError):
        ema_update(nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), 0.5)


def test_make_ema_copy_is_frozen_copy() -> None:
    model = _linear(2)
    model.train()
    teacher = make_ema_copy(model)
    params = list(teacher.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(p.requires_grad for p in model.parameters())
    assert not teacher.training
    assert model.training
    for (n1, p1), (n2, p2) in zip(
        model.named_parameters(), teacher.named_parameters(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(model[0].weight, teacher[0].weight)


def test_beta_schedule() -> None:
    assert beta_schedule(0, 200_000) == 1.0
    assert beta_schedule(50_000, 200_000) == 0.75
    assert beta_schedule(100_000, 200_000) == 0.5
    assert beta_schedule(150_000, 200_000) == 0.25
    assert beta_schedule(200_000, 200_000) == 0.0
    assert beta_schedule(250_000, 200_000) == 0.0
    assert beta_schedule(0, 0) == 0.0
    assert beta_schedule(10, 0) == 0.0
    values = [beta_schedule(s, 200_000) for s in range(0, 200_001, 10_000)]
    diffs = [a - b for a, b in itertools.pairwise(values)]
    assert all(d == pytest.approx(0.05) for d in diffs)
    assert beta_schedule(1, 4, start=0.2, end=1.0) == pytest.approx(0.4)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

_OVERRIDES = ["train.steps=7", "surf.ema_decay=0.5", "mixit:train.steps=99"]


def test_resolve_config_applies_overrides_per_method() -> None:
    cfg = resolve_config("surf_sr", "mnist", 0, "smoke", parse_overrides(_OVERRIDES))
    assert cfg.method == "surf_sr"
    assert cfg.preset == "smoke"
    assert cfg.task.name == "mnist"
    assert cfg.train.steps == 7
    assert cfg.surf.ema_decay == 0.5
    assert cfg.net.nf == resolve_config("mixit", "mnist", 0, "smoke").net.nf == 8
    assert cfg.net.ch_mult == (1, 2)
    assert cfg.overrides == ("train.steps=7", "surf.ema_decay=0.5")

    mixit = resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(_OVERRIDES))
    assert mixit.train.steps == 99
    assert "surf" not in mixit.sections  # a MixIT run has no SURF section to override
    assert mixit.overrides == ("train.steps=7", "train.steps=99")


def test_parse_overrides() -> None:
    assert parse_overrides(["mixit:train.steps = 5", "net.ch_mult=1,2"]) == [
        ("mixit", "train.steps", "5"),
        (None, "net.ch_mult", "1,2"),
    ]
    with pytest.raises(ConfigError):
        parse_overrides(["train.steps"])


def test_unknown_section_lists_valid_sections() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["trian.steps=3"]))
    msg = str(err.value)
    assert "trian" in msg
    for name in ("task", "train", "net", "mixit", "remix", "surf", "eval"):
        assert re.search(rf"'{name}'", msg), (name, msg)


def test_unknown_field_lists_valid_fields() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["train.stepz=3"]))
    msg = str(err.value)
    assert "stepz" in msg
    for name in ("steps", "batch_size", "lr", "warmup_steps", "grad_clip"):
        assert f"'{name}'" in msg, (name, msg)


def test_unknown_preset_lists_valid_presets() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config("mixit", "mnist", 0, "huge")
    msg = str(err.value)
    for name in ("smoke", "cpu", "paper"):
        assert f"'{name}'" in msg, (name, msg)


def test_bad_values_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["train.steps=many"]))
    with pytest.raises(ConfigError):
        resolve_config("surf_sr", "mnist", 0, "smoke", parse_overrides(["surf.ema_decay=1.5"]))
    # A method-prefixed item for another method is not applied (even if it would be invalid).
    cfg = resolve_config("surf_sr", "mnist", 0, "smoke", parse_overrides(["mixit:train.steps=x"]))
    assert cfg.train.steps == resolve_config("surf_sr", "mnist", 0, "smoke").train.steps == 6


def test_config_hash_is_stable_and_depends_on_listed_sections_only() -> None:
    sections = SurfSR.config_sections
    assert "surf" in sections and "remix" not in sections
    base = resolve_config("surf_sr", "mnist", 0, "smoke")
    h = config_hash(base, sections)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert config_hash(resolve_config("surf_sr", "mnist", 0, "smoke"), sections) == h
    assert config_hash(base, sections) == h

    changed = resolve_config(
        "surf_sr", "mnist", 0, "smoke", parse_overrides(["surf.ema_decay=0.5"])
    )
    assert config_hash(changed, sections) != h
    unlisted = resolve_config(
        "surf_sr", "mnist", 0, "smoke", parse_overrides(["remix.ema_decay=0.5"])
    )
    assert "remix" not in unlisted.sections  # not a section of SURF runs: nothing to change
    assert config_hash(unlisted, sections) == h
    other_seed = resolve_config("surf_sr", "mnist", 1, "smoke")
    assert config_hash(other_seed, sections) != h

    # A MixIT run does not depend on surf.* but does on mixit.*.
    mixit_sections = MixIT.config_sections
    m0 = resolve_config("mixit", "mnist", 0, "smoke")
    hm = config_hash(m0, mixit_sections)
    m_surf = resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["surf.ema_decay=0.5"]))
    assert config_hash(m_surf, mixit_sections) == hm
    m_mix = resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["mixit.snr_max=20"]))
    assert config_hash(m_mix, mixit_sections) != hm
