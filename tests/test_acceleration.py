"""``train.compile`` and ``train.autocast`` (off by default; meant for CUDA): compiled networks
give the fp32 results, bf16 autocast stays within the stated tolerance. On CPU here: compile with
the ``aot_eager`` backend (graph capture without code generation, seconds instead of minutes),
autocast with CPU bfloat16."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import ConfigError, config_hash, parse_overrides, resolve_config
from benchmark.registry import get_method
from tasks.images import MnistTask

#: bf16 autocast tolerance (README "Performance"): relative difference of a step's loss and
#: relative RMS difference of the separated estimates against fp32, at smoke sizes
BF16_RTOL = 0.05


def _method(name: str, data_root, overrides: list[str], teacher=None):
    cfg = resolve_config(name, "mnist", 0, "smoke", parse_overrides(overrides))
    torch.manual_seed(0)  # the same initial weights for every variant
    method = get_method(name)(cfg, MnistTask(cfg.task, data_root), torch.device("cpu"))
    method.setup(teacher)
    method.train_mode()
    return method


def _steps(method, count: int = 2) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    return [float(method.train_step(step, gen)["loss"]) for step in range(count)]


def _separate(method) -> torch.Tensor:
    method.eval_mode()
    mixtures = method.task.sample_mixtures(4, torch.Generator().manual_seed(2))
    return method.separate(mixtures, torch.Generator().manual_seed(3))


def test_config_fields_are_off_by_default_and_validated() -> None:
    cfg = resolve_config("mixit", "mnist", 0, "smoke")
    assert (cfg.train.autocast, cfg.train.compile) == ("off", "off")
    on = resolve_config(
        "mixit",
        "mnist",
        0,
        "smoke",
        parse_overrides(["train.autocast=bf16", "train.compile=default"]),
    )
    sections = ("task", "train", "net", "mixit", "eval")
    assert config_hash(on, sections) != config_hash(cfg, sections)  # results differ: new runs
    for item, field in (
        ("train.autocast=fp16", "train.autocast"),
        ("train.compile=on", "train.compile"),
    ):
        with pytest.raises(ConfigError, match=field):
            resolve_config("mixit", "mnist", 0, "smoke", parse_overrides([item]))


def test_compiled_networks_give_the_fp32_results(data_root) -> None:
    eager = _method("mixit", data_root, [])
    compiled = _method("mixit", data_root, ["train.compile=aot_eager"])
    assert compiled.model._compiled_call_impl is not None
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())  # checkpoints
    torch.testing.assert_close(_steps(compiled), _steps(eager), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_separate(compiled), _separate(eager), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_stays_within_the_stated_tolerance(data_root) -> None:
    teacher = _method("mixit", data_root, [])
    teacher.eval_mode()
    for name, extra, owner in (("mixit", [], None), ("surf_sr", ["surf.beta=0"], teacher)):
        fp32 = _method(name, data_root, extra, owner)
        bf16 = _method(name, data_root, [*extra, "train.autocast=bf16"], owner)
        want, got = _steps(fp32), _steps(bf16)
        for a, b in zip(got, want, strict=True):
            assert abs(a - b) <= BF16_RTOL * abs(b), (name, got, want)
        est_fp32, est_bf16 = _separate(fp32), _separate(bf16)
        assert est_bf16.dtype == torch.float32  # outputs cast back: losses in full precision
        rms = (est_bf16 - est_fp32).pow(2).mean().sqrt() / est_fp32.pow(2).mean().sqrt()
        assert float(rms) <= BF16_RTOL, (name, float(rms))
        assert got != want  # bf16 really ran
