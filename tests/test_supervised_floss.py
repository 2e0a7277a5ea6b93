"""Tests for the clean-source references: supervised regression with the log-SNR PIT loss
(methods/supervised.py, methods/losses.py) and supervised flow matching, FLOSS, on SURF's code
path (methods/floss.py, methods/surf.py), plus end-to-end smoke runs on real data."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch
from helpers import TinyImages

import methods.surf
from benchmark.cli import main
from benchmark.config import ConfigError, config_hash, resolve_config
from benchmark.registry import get_method
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status
from methods.floss import Floss
from methods.losses import log_mse, negative_thresholded_snr, pairwise_log_mse
from methods.supervised import SupervisedRegression, supervised_pit_loss
from methods.surf import SurfRM, _Surf

F64 = torch.float64


def _method(cls, batch_size: int = 3):
    cfg = resolve_config(cls.name, "mnist", 0, "smoke")
    cfg.train.batch_size = batch_size
    torch.manual_seed(0)
    method = cls(cfg, TinyImages(), torch.device("cpu"))
    method.setup(None)
    return method


# --------------------------------------------------------------------------------------------
# FLOSS on SURF's code path
# --------------------------------------------------------------------------------------------


def test_floss_on_ground_truth_teacher_samples_shares_the_surf_code_path(monkeypatch) -> None:
    # Structure: only the source of X_bar (and the network set-up) differ from SURF (ReMixIT).
    assert issubclass(Floss, SurfRM)
    assert Floss.train_step is methods.surf._Surf.train_step
    assert Floss.loss is SurfRM.loss and Floss.separate is _Surf.separate
    assert Floss.teacher_sources is not _Surf.teacher_sources
    assert (Floss.teacher_method, Floss.unsupervised, Floss.generative) == (None, False, True)
    assert Floss.config_sections == ("task", "train", "net", "surf", "eval")

    # Behaviour: one step's X_1 targets are a permutation of the drawn ground-truth sources.
    method = _method(Floss)
    seen = {}
    remix, interpolant = methods.surf.remix, methods.surf.interpolant

    def spy_remix(teacher_est, generator):
        seen["x_bar"] = teacher_est
        seen["remixed"] = remix(teacher_est, generator)
        return seen["remixed"]

    def spy_interpolant(x0, x1, t):
        seen["x1_aligned"] = x1
        return interpolant(x0, x1, t)

    def no_teacher(*args, **kwargs):
        raise AssertionError("FLOSS must not sample a teacher")

    monkeypatch.setattr(methods.surf, "remix", spy_remix)
    monkeypatch.setattr(methods.surf, "interpolant", spy_interpolant)
    monkeypatch.setattr(_Surf, "teacher_sample", no_teacher)
    generator = torch.Generator().manual_seed(3)
    drawn = method.task.sample_sources(3, torch.Generator().manual_seed(3))  # same stream
    logs = method.train_step(0, generator)
    assert math.isfinite(logs["loss"]) and logs["beta"] == 0.0

    assert torch.equal(seen["x_bar"], drawn)
    rows = drawn.flatten(0, 1).flatten(1)  # the B*K ground-truth images
    for x1 in (seen["remixed"].sources, seen["x1_aligned"]):
        targets = x1.flatten(0, 1).flatten(1)
        match = (targets[:, None] == rows[None]).all(-1)  # exact copies, no teacher estimate
        assert match.any(1).all()
        matched = match.float().argmax(1)
        assert sorted(matched.tolist()) == list(range(rows.shape[0]))  # a permutation
    torch.testing.assert_close(
        seen["remixed"].mixtures, seen["remixed"].sources.sum(1), rtol=0, atol=1e-6
    )


def test_floss_step_equals_surf_rm_step_with_ground_truth_teacher(monkeypatch) -> None:
    """A SurfRM whose teacher_sources returns ground truth performs exactly FLOSS's step."""
    floss = _method(Floss)
    surf = SurfRM(floss.config, floss.task, torch.device("cpu"))
    torch.manual_seed(0)
    Floss.setup(surf, None)  # same networks and initial weights (same torch seed)
    monkeypatch.setattr(surf, "teacher_sources", lambda step, gen: surf.task.sample_sources(3, gen))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for step in range(2):
        assert floss.train_step(step, g1)["loss"] == surf.train_step(step, g2)["loss"]
    for p, q in zip(floss.ema.parameters(), surf.ema.parameters(), strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------
# Supervised regression: log-SNR PIT loss (SURF §5.1, eq. 3)
# --------------------------------------------------------------------------------------------


def _hand_pit_log_mse(est, ref, snr_max):
    """Brute-force transcription: mean_b (1/K) min_sigma sum_k 10 log10(||x - x_hat||^2 +
    tau ||x||^2) with norms summed over elements."""
    tau = 10 ** (-snr_max / 10)
    B, K = est.shape[:2]
    losses, perms = [], []
    for b in range(B):
        best, best_perm = math.inf, None
        for sigma in itertools.permutations(range(K)):
            total = 0.0
            for k in range(K):
                x, x_hat = ref[b, sigma[k]], est[b, k]
                err = float(((x - x_hat) ** 2).sum())
                total += 10 * math.log10(err + tau * float((x**2).sum()) + 1e-8)
            if total < best:
                best, best_perm = total, sigma
        losses.append(best / K)
        perms.append(best_perm)
    return sum(losses) / B, torch.tensor(perms)


@pytest.mark.parametrize(("num_sources", "snr_max"), [(2, 30.0), (3, 30.0), (3, 10.0), (2, 1e9)])
def test_supervised_pit_loss_matches_hand_transcription(num_sources, snr_max) -> None:
    gen = torch.Generator().manual_seed(num_sources)
    ref = torch.rand(5, num_sources, 1, 4, 4, generator=gen, dtype=F64)
    # estimates near a random permutation of the references, some nearly exact
    shuffled = torch.stack([r[torch.randperm(num_sources, generator=gen)] for r in ref])
    scale = torch.tensor([1.0, 0.1, 0.01, 1e-3, 0.5], dtype=F64).reshape(5, 1, 1, 1, 1)
    est = shuffled + scale * torch.randn(shuffled.shape, generator=gen, dtype=F64)
    want, want_perm = _hand_pit_log_mse(est, ref, snr_max)
    est.requires_grad_(True)
    got, perm = supervised_pit_loss(est, ref, snr_max)
    assert got.dim() == 0
    assert float(got.detach()) == pytest.approx(want, rel=1e-10)
    assert torch.equal(perm, want_perm)
    assert not torch.equal(perm, torch.arange(num_sources).expand_as(perm))  # non-trivial case
    (grad,) = torch.autograd.grad(got, est)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_log_mse_threshold_and_relation_to_thresholded_snr() -> None:
    gen = torch.Generator().manual_seed(9)
    ref = torch.rand(3, 2, 10, generator=gen, dtype=F64)
    est = ref + 0.05 * torch.randn(3, 2, 10, generator=gen, dtype=F64)
    energy_db = 10 * torch.log10(ref.pow(2).sum(-1))
    # l = -SNR_tau + 10 log10 ||x||^2 (up to eps): same gradients and permutations as eq. (2)
    torch.testing.assert_close(
        log_mse(est, ref, eps=0.0), negative_thresholded_snr(est, ref, eps=0.0) + energy_db
    )
    # a perfect estimate is floored at SNR_max below the reference energy
    torch.testing.assert_close(log_mse(ref, ref, 30.0, eps=0.0), energy_db - 30.0)
    # snr_max = inf: the literal SURF §5.1 loss 10 log10 ||x - x_hat||^2
    literal = 10 * torch.log10((ref - est).pow(2).sum(-1))
    torch.testing.assert_close(log_mse(est, ref, math.inf, eps=0.0), literal)
    cost = pairwise_log_mse(est, ref)  # [estimate, reference]
    assert cost.shape == (3, 2, 2)
    torch.testing.assert_close(cost[:, 1, 0], log_mse(est[:, [1]], ref[:, [0]])[:, 0])


def test_supervised_regression_trains_on_clean_sources() -> None:
    method = _method(SupervisedRegression, batch_size=4)
    assert SupervisedRegression.config_sections == ("task", "train", "net", "supervised", "eval")
    assert (SupervisedRegression.teacher_method, SupervisedRegression.unsupervised) == (None, False)
    assert method.model.num_outputs == 2
    before = [p.clone() for p in method.model.parameters()]
    logs = method.train_step(0, torch.Generator().manual_seed(1))
    assert math.isfinite(logs["loss"])
    params = list(method.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    mixtures = method.task.sample_mixtures(2, torch.Generator().manual_seed(2))
    out = method.separate(mixtures, torch.Generator())
    assert out.shape == (2, 2, 1, 8, 8)
    torch.testing.assert_close(out.sum(1), mixtures, rtol=0, atol=1e-5)  # mixture-consistent


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_presets_and_config_section() -> None:
    steps = {
        (m, p): resolve_config(m, "mnist", 0, p).train.steps
        for m in ("supervised", "floss")
        for p in ("cpu", "paper")
    }
    assert steps == {
        ("supervised", "cpu"): 1200,
        ("floss", "cpu"): 800,
        ("supervised", "paper"): 200_000,
        ("floss", "paper"): 400_000,
    }
    cfg = resolve_config("supervised", "mnist", 0, "cpu")
    assert cfg.supervised.snr_max == 30.0 and cfg.train.steps == 1200
    sections = SupervisedRegression.config_sections
    h = config_hash(cfg, sections)
    other = resolve_config("supervised", "mnist", 0, "cpu", [(None, "supervised.snr_max", "20")])
    assert config_hash(other, sections) != h
    surf = resolve_config("surf_sr", "mnist", 0, "cpu", [(None, "supervised.snr_max", "20")])
    assert config_hash(surf, get_method("surf_sr").config_sections) == config_hash(
        resolve_config("surf_sr", "mnist", 0, "cpu"), get_method("surf_sr").config_sections
    )
    assert resolve_config("supervised", "mnist", 0, "smoke", [(None, "supervised.snr_max", "inf")])
    with pytest.raises(ConfigError):
        resolve_config("supervised", "mnist", 0, "smoke", [(None, "supervised.snr_max", "nan")])


# --------------------------------------------------------------------------------------------
# End to end (real data, smoke preset)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["mnist", "cifar10"])
def test_supervised_and_floss_end_to_end(task, data_root, results_dir, capsys) -> None:
    args = ["run", "--methods", "supervised,floss", "--task", task, "--preset", "smoke"]
    args += ["--executor", "debug", "--results-dir", str(results_dir)]
    assert main([*args, "--data-root", str(data_root)]) == 0
    runs = {d.parent.name: d for d in iter_run_dirs(results_dir)}
    assert set(runs) == {"mixture", "supervised", "floss"}  # no MixIT teacher planned
    for method in ("supervised", "floss"):
        run = runs[method]
        assert read_status(run)["state"] == "done", method
        record = RunRecord(run)
        metrics = record.metric_values()
        assert record.counts["n_mixtures"] == 32
        assert 0.0 < metrics["psnr"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
        assert len(pd.read_parquet(run / "scores.parquet")) == 32
        assert pd.read_csv(run / "curve.csv")["step"].tolist() == [2, 4, 6]
        info = read_json(run / "config.json")
        assert info["teacher_dir"] is None and info["config"]["teacher"] == ""
        assert info["sections"] == list(get_method(method).config_sections)
    capsys.readouterr()
