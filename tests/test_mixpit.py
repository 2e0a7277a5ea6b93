"""Tests for MixPIT and MixCycle (methods/mixpit.py): the MixCycle remix bookkeeping, the PIT
losses against brute force, the cycle iteration (frozen teacher, remixed inputs), the switch
point, the config section, and end-to-end smoke runs on both image tasks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.config import ConfigError, config_hash, resolve_config
from benchmark.registry import get_method
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status
from methods.losses import negative_thresholded_snr, squared_error
from methods.mixpit import (
    MixCycle,
    MixPIT,
    mixcycle_loss,
    mixcycle_remix,
    mixpit_loss,
)
from methods.pit import pit_loss
from tasks.base import Task

# --------------------------------------------------------------------------------------------
# MixCycle remix (§III-B, eq. 5, Fig. 3)
# --------------------------------------------------------------------------------------------


def _identity_estimates(pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot "images" that name their origin: estimate ``k`` of mixture a of pair ``p`` is
    basis vector ``4p + k``, estimate ``k`` of mixture b is ``4p + 2 + k``."""
    eye = torch.eye(4 * pairs).reshape(pairs, 4, 4 * pairs)
    return eye[:, :2], eye[:, 2:]


def _origins(image: torch.Tensor, pairs: int) -> list[tuple[int, str, int]]:
    """Decode a sum of one-hot images into (pair, mixture, estimate) identities."""
    hot = torch.nonzero(image.round() == 1).flatten().tolist()
    assert torch.equal(image.round(), (image > 0.5).float()), "not a sum of distinct one-hots"
    return [(i // 4, "ab"[(i % 4) // 2], i % 2) for i in hot]


def test_mixcycle_remix_puts_one_estimate_from_each_original_mixture_into_each_new_mixture():
    pairs = 64
    est_a, est_b = _identity_estimates(pairs)
    gen = torch.Generator().manual_seed(0)
    pairings = set()
    for _ in range(5):  # several random draws of the swaps
        remixed = mixcycle_remix(est_a, est_b, gen)
        assert remixed.mixtures.shape == (pairs, 2, 4 * pairs)
        assert remixed.sources.shape == (pairs, 2, 2, 4 * pairs)
        assert remixed.flat_mixtures().shape == (2 * pairs, 4 * pairs)
        for p in range(pairs):
            used = []
            for r in range(2):
                origins = _origins(remixed.mixtures[p, r], pairs)
                # exactly two estimates, both from this pair, one from a and one from b
                assert len(origins) == 2
                assert {o[0] for o in origins} == {p}
                assert sorted(o[1] for o in origins) == ["a", "b"]
                used += origins
                # the bookkeeping names the same estimates, a first, and they sum to the mixture
                a_id, b_id = remixed.swap_a[p, r].item(), remixed.swap_b[p, r].item()
                assert _origins(remixed.sources[p, r, 0], pairs) == [(p, "a", a_id)]
                assert _origins(remixed.sources[p, r, 1], pairs) == [(p, "b", b_id)]
                assert torch.equal(remixed.sources[p, r].sum(0), remixed.mixtures[p, r])
            # every estimate of the pair is used exactly once over its two new mixtures
            assert sorted(used) == [(p, m, k) for m in "ab" for k in (0, 1)]
            a_with_b0 = remixed.swap_a[p, (remixed.swap_b[p] == 0).nonzero().item()].item()
            pairings.add(a_with_b0)
    # RSWAP is not biased towards one pairing: (j+k, i+l) and (i+k, j+l) both occur
    assert pairings == {0, 1}


def test_mixcycle_remix_swaps_are_uniform_and_reproduce_eq_5():
    pairs = 2000
    est_a, est_b = torch.randn(2, pairs, 2, 3, generator=torch.Generator().manual_seed(1))
    remixed = mixcycle_remix(est_a, est_b, torch.Generator().manual_seed(2))
    for swap in (remixed.swap_a, remixed.swap_b):
        assert sorted(swap.sum(1).tolist()) == [1] * pairs  # each row a permutation of (0, 1)
        assert 0.45 < swap[:, 0].float().mean().item() < 0.55
    # eq. (5): swapping a only gives x~_{j+k} = s~_j + s~_k and x~_{i+l} = s~_i + s~_l
    s_i, s_j, s_k, s_l = torch.arange(4.0)[:, None] * torch.ones(4, 5)
    fixed = mixcycle_remix(
        torch.stack([s_i, s_j])[None],
        torch.stack([s_k, s_l])[None],
        swap_a=torch.tensor([[1, 0]]),
        swap_b=torch.tensor([[0, 1]]),
    )
    torch.testing.assert_close(fixed.mixtures[0], torch.stack([s_j + s_k, s_i + s_l]))


def test_mixcycle_remix_is_reproducible_and_rejects_bad_shapes():
    est = torch.randn(8, 2, 3, 4, 4)
    one = mixcycle_remix(est, est.flip(0), torch.Generator().manual_seed(5))
    two = mixcycle_remix(est, est.flip(0), torch.Generator().manual_seed(5))
    assert torch.equal(one.mixtures, two.mixtures) and torch.equal(one.swap_a, two.swap_a)
    with pytest.raises(ValueError, match="same shape"):
        mixcycle_remix(est, est[:4])
    with pytest.raises(ValueError, match="same shape"):
        mixcycle_remix(torch.randn(4, 3, 5), torch.randn(4, 3, 5))


# --------------------------------------------------------------------------------------------
# PIT losses (eq. 1 with eq. 2) against brute force
# --------------------------------------------------------------------------------------------


def _snr(ref: torch.Tensor, est: torch.Tensor) -> float:
    """Eq. (2) for one pair of signals, written out."""
    tau = 10 ** (-30.0 / 10)
    ref_e = float(ref.pow(2).sum())
    err_e = float((ref - est).pow(2).sum())
    return -10 * math.log10((ref_e + 1e-8) / (err_e + tau * ref_e + 1e-8))


def _brute_force_pit(refs, ests, loss) -> list[float]:
    out = []
    for b in range(refs.shape[0]):
        n = refs.shape[1]
        out.append(
            min(
                sum(loss(refs[b, r], ests[b, p[r]]) for r in range(n))
                for p in itertools.permutations(range(n))
            )
        )
    return out


def _snr_fn(e, r):
    return negative_thresholded_snr(e, r, snr_max_db=30.0)


@pytest.mark.parametrize("num", [2, 3])
def test_pit_loss_matches_brute_force(num):
    gen = torch.Generator().manual_seed(num)
    refs = torch.rand(6, num, 1, 4, 4, generator=gen, dtype=torch.float64)
    ests = torch.rand(6, num, 1, 4, 4, generator=gen, dtype=torch.float64)
    loss, perm = pit_loss(ests, refs, _snr_fn)
    torch.testing.assert_close(loss, torch.tensor(_brute_force_pit(refs, ests, _snr)).double())
    # perm[b, k] is the reference matched with estimate k
    again = _snr_fn(ests, torch.gather(refs, 1, perm[:, :, None, None, None].expand_as(refs)))
    torch.testing.assert_close(again.sum(-1), loss)


def test_mixpit_loss_matches_brute_force_over_the_two_reference_mixtures():
    gen = torch.Generator().manual_seed(3)
    mixtures = torch.rand(16, 2, 3, 8, 8, generator=gen, dtype=torch.float64) * 2
    # estimates close to the references in either order, plus random ones
    estimates = mixtures.flip(1) + 0.1 * torch.randn(mixtures.shape, generator=gen).double()
    estimates[8:] = torch.rand(8, 2, 3, 8, 8, generator=gen, dtype=torch.float64)
    for loss_fn, single in ((_snr_fn, _snr), (squared_error, None)):
        got = mixpit_loss(estimates, mixtures, loss_fn)
        if single is None:

            def single(r, e):
                return float((r - e).pow(2).mean())

        expected = torch.tensor(_brute_force_pit(mixtures, estimates, single)).double()
        torch.testing.assert_close(got, expected)
    # the swapped-order estimates are matched swapped: loss far below the identity pairing
    identity = _snr_fn(estimates[:8], mixtures[:8]).sum(-1)
    assert (mixpit_loss(estimates[:8], mixtures[:8], _snr_fn) < identity - 10).all()
    # differentiable with respect to the estimates
    est = estimates.clone().requires_grad_(True)
    mixpit_loss(est, mixtures, _snr_fn).sum().backward()
    assert est.grad is not None and est.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="two mixtures"):
        mixpit_loss(torch.rand(2, 3, 4), torch.rand(2, 3, 4), _snr_fn)


def test_mixcycle_loss_pits_each_new_mixture_against_its_two_constituents():
    gen = torch.Generator().manual_seed(4)
    est_a, est_b = torch.rand(2, 5, 2, 1, 4, 4, generator=gen, dtype=torch.float64)
    remixed = mixcycle_remix(est_a, est_b, gen)
    student = torch.rand(10, 2, 1, 4, 4, generator=gen, dtype=torch.float64)
    got = mixcycle_loss(student, remixed, _snr_fn)
    expected = []
    for p, r in itertools.product(range(5), range(2)):
        targets = torch.stack([remixed.sources[p, r, 0], remixed.sources[p, r, 1]])[None]
        expected += _brute_force_pit(targets, student[2 * p + r][None], _snr)
    torch.testing.assert_close(got, torch.tensor(expected).double())


# --------------------------------------------------------------------------------------------
# The training iterations on a toy in-memory task
# --------------------------------------------------------------------------------------------


class _ToyTask(Task):
    """Random 1x8x8 "mixtures" (sum of two uniform images); mixtures only."""

    name = "toy"
    display_name = "toy"
    metrics = {"psnr": "max"}

    def __init__(self, num_sources: int = 2) -> None:
        cfg = resolve_config("mixcycle", "mnist", 0, "smoke").task
        cfg.num_sources = num_sources
        super().__init__(cfg, Path("."))

    @property
    def sample_shape(self):
        return (1, 8, 8)

    def sample_mixtures(self, batch_size, generator):
        return torch.rand(batch_size, 2, 1, 8, 8, generator=generator).sum(1)

    def sample_mixit_references(self, batch_size, generator):
        raise AssertionError("MixPIT/MixCycle must not use MixIT references")

    def sample_sources(self, batch_size, generator):
        raise AssertionError("MixPIT/MixCycle must not see sources")

    def eval_set(self):
        raise NotImplementedError

    def score(self, estimates, sources, mixtures):
        raise NotImplementedError


def _method(cls, *sets: str, num_sources: int = 2):
    from benchmark.config import parse_overrides

    cfg = resolve_config(cls.name, "mnist", 0, "smoke", parse_overrides(list(sets)))
    method = cls(cfg, _ToyTask(num_sources), torch.device("cpu"))
    method.setup(None)
    method.train_mode()
    return method


def _record_calls(model):
    calls = []

    def hook(module, inputs, output):
        calls.append(
            {
                "grad": torch.is_grad_enabled(),
                "training": module.training,
                "input": inputs[0].detach().clone(),
                "output": output.detach().clone(),
            }
        )

    return calls, model.register_forward_hook(hook)


def _perturb_zero_init(model: torch.nn.Module) -> None:
    """The U-Net's output layers start at zero (both outputs = m / 2); make them distinct."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1 and name.endswith("weight") and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def test_cycle_step_trains_on_remixed_estimates_of_the_frozen_current_model():
    method = _method(MixCycle, "train.batch_size=6", "net.dropout=0.1")
    _perturb_zero_init(method.model)
    calls, handle = _record_calls(method.model)
    logs = method.train_step(10, torch.Generator().manual_seed(0))  # step >= mixpit_steps = 3
    handle.remove()
    assert logs["cycle"] == 1.0 and math.isfinite(logs["loss"])
    teacher, student = calls
    # first separation: the current model, frozen (no gradient), deterministic (eval mode)
    assert not teacher["grad"] and not teacher["training"]
    assert teacher["input"].shape == (6, 1, 8, 8)
    # second separation: the student, with gradient, in train mode, on 6 new mixtures
    assert student["grad"] and student["training"] and method.model.training
    assert student["input"].shape == (6, 1, 8, 8)
    est = teacher["output"]  # (6, 2, 1, 8, 8): pairs (p, p + 3)
    for p in range(3):
        found = []
        for r in range(2):
            new = student["input"][2 * p + r]
            matches = [
                (ia, ib)
                for ia, ib in itertools.product(range(2), range(2))
                if torch.allclose(new, est[p, ia] + est[3 + p, ib], atol=1e-6)
            ]
            assert len(matches) == 1, "each new mixture is one estimate of a plus one of b"
            found += matches
        assert {f[0] for f in found} == {0, 1} and {f[1] for f in found} == {0, 1}
    # the mixture-consistent model keeps the constituents summing to the observed mixtures
    torch.testing.assert_close(est.sum(1), teacher["input"], atol=1e-5, rtol=1e-5)


def test_mixcycle_switches_from_mixpit_at_mixpit_steps():
    method = _method(MixCycle, "mixcycle.mixpit_steps=2")
    gen = torch.Generator().manual_seed(0)
    calls, handle = _record_calls(method.model)
    phases = [method.train_step(step, gen)["cycle"] for step in range(4)]
    handle.remove()
    assert phases == [0.0, 0.0, 1.0, 1.0]
    # MixPIT iterations: one forward with gradient on B mixtures of mixtures (B = 8)
    assert [c["grad"] for c in calls] == [True, True, False, True, False, True]
    assert all(c["input"].shape[0] == 8 for c in calls)
    # MixPIT itself never cycles and returns the K outputs at inference
    mixpit = _method(MixPIT)
    assert "cycle" not in mixpit.train_step(0, gen)
    mixtures = torch.rand(3, 1, 8, 8) * 2
    out = mixpit.separate(mixtures, gen)
    assert out.shape == (3, 2, 1, 8, 8)
    torch.testing.assert_close(out.sum(1), mixtures, atol=1e-5, rtol=1e-5)


def test_methods_refuse_tasks_without_two_sources():
    for cls in (MixPIT, MixCycle):
        with pytest.raises(ValueError, match="two-source"):
            _method(cls, num_sources=3)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_config_section_presets_and_hashes():
    for cls in (MixPIT, MixCycle):
        assert get_method(cls.name) is cls
        assert cls.unsupervised and not cls.generative and cls.teacher_method is None
    assert "mixcycle" in MixCycle.config_sections and "mixcycle" not in MixPIT.config_sections
    assert "mixit" not in MixPIT.config_sections + MixCycle.config_sections
    for preset, total, switch in (("smoke", 6, 3), ("cpu", 1200, 200), ("paper", 200_000, 33_000)):
        cfg = resolve_config("mixcycle", "mnist", 0, preset)
        assert (cfg.train.steps, cfg.mixcycle.mixpit_steps) == (total, switch)
        assert resolve_config("mixpit", "mnist", 0, preset).train.steps == total
    # the switch point is part of MixCycle's identity only
    base = resolve_config("mixcycle", "mnist", 0, "smoke")
    moved = resolve_config("mixcycle", "mnist", 0, "smoke", [(None, "mixcycle.mixpit_steps", "4")])
    assert config_hash(base, MixCycle.config_sections) != config_hash(
        moved, MixCycle.config_sections
    )
    assert config_hash(base, MixPIT.config_sections) == config_hash(moved, MixPIT.config_sections)
    with pytest.raises(ConfigError, match="even"):
        resolve_config("mixcycle", "mnist", 0, "smoke", [(None, "train.batch_size", "7")])
    resolve_config("mixpit", "mnist", 0, "smoke", [(None, "train.batch_size", "7")])
    with pytest.raises(ConfigError, match="mixpit_steps"):
        resolve_config("mixcycle", "mnist", 0, "smoke", [(None, "mixcycle.mixpit_steps", "-1")])


# --------------------------------------------------------------------------------------------
# End to end through the CLI (smoke preset, real data)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["mnist", "cifar10"])
def test_mixpit_and_mixcycle_end_to_end(task, data_root, results_dir, capsys):
    code = main(
        smoke_argv(
            results_dir,
            data_root,
            "--methods",
            "mixpit,mixcycle",
            "--task",
            task,
            "--executor",
            "debug",
            "--set",
            "mixcycle.mixpit_steps=3",
            "train.steps=6",
        )
    )
    assert code == 0
    runs = {d.parent.name: d for d in iter_run_dirs(results_dir)}
    assert set(runs) == {"mixture", "mixpit", "mixcycle"}
    for method in ("mixpit", "mixcycle"):
        run = runs[method]
        assert read_status(run)["state"] == "done", read_status(run)
        record = RunRecord(run)
        metrics = record.metric_values()
        assert record.counts["n_mixtures"] == 32
        assert 0.0 < metrics["psnr"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
        assert math.isfinite(record.metrics_record["training"]["final_loss"])
        assert read_json(run / "config.json")["teacher_dir"] is None
        curve = pd.read_csv(run / "curve.csv")
        assert curve["step"].tolist() == [2, 4, 6]
    # the MixCycle run went through MixPIT (steps 1-3) and then the cycle (steps 4-6)
    curve = pd.read_csv(runs["mixcycle"] / "curve.csv")
    assert curve["cycle"].tolist() == [0.0, 0.5, 1.0]
    capsys.readouterr()
    assert main(["table", "--task", task, "--results-dir", str(results_dir)]) == 0
    table = capsys.readouterr().out
    # rows are labelled with the overrides each method reads (mixcycle.* is not MixPIT's)
    assert "| MixPIT [train.steps=6] |" in table
    assert "| MixCycle [mixcycle.mixpit_steps=3 train.steps=6] |" in table
