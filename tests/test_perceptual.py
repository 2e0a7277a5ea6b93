"""Perceptual metrics (LPIPS, FID, IS): real lpips / torch-fidelity code paths with network
weights the tests create (random AlexNet; random Inception-v3 with batch-norm statistics
calibrated on real images), saved under the file names the metrics look for. Inception runs on
the CPU at 299x299, so the image sets are tiny."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from benchmark.cli import main
from benchmark.store import RunRecord
from tasks.images import load_images
from tasks.perceptual import (
    ALEXNET_FILE,
    INCEPTION_FILE,
    InceptionFeatures,
    WeightsMissing,
    find_weights,
    frechet_distance,
    load_lpips,
    lpips_per_mixture,
    to_uint8_rgb,
)


def _make_weights(folder: Path, calibration: torch.Tensor) -> Path:
    """Write test weights: torchvision AlexNet (random) and torch-fidelity's Inception-v3
    (random torchvision Inception-v3 with 1008 classes, batch norms calibrated on
    ``calibration`` so that features stay O(1))."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / ALEXNET_FILE)
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=True
    )
    path = folder / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    for module in extractor.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    extractor.train()
    with torch.no_grad():
        extractor(calibration)
    torch.save(extractor.state_dict(), path)
    return folder


@pytest.fixture(scope="module")
def images(data_root) -> dict[str, torch.Tensor]:
    return {
        "mnist": load_images("mnist", str(data_root)),
        "cifar10": load_images("cifar10", str(data_root)),
    }


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, images) -> Path:
    calibration = torch.cat(
        [to_uint8_rgb(images["mnist"][:3]), to_uint8_rgb(images["cifar10"][:3])]
    )
    return _make_weights(tmp_path_factory.mktemp("weights"), calibration)


def test_weight_file_names_match_the_installed_packages():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert ALEXNET_FILE == Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name
    assert INCEPTION_FILE == Path(URL_INCEPTION_V3).name


def test_missing_weights_are_reported_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsMissing) as err:
        load_lpips(tmp_path / "nothing-here")
    assert ALEXNET_FILE in str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(WeightsMissing) as err:
        InceptionFeatures(None)
    assert INCEPTION_FILE in str(err.value)
    assert err.value.record()["file"] == INCEPTION_FILE
    assert not (tmp_path / "torch").exists()  # nothing was downloaded or created


def test_weights_found_in_weights_dir_and_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_weights(ALEXNET_FILE, tmp_path / "w") is None
    (tmp_path / "w" / "checkpoints").mkdir(parents=True)
    (tmp_path / "w" / "checkpoints" / ALEXNET_FILE).write_bytes(b"x")
    assert find_weights(ALEXNET_FILE, tmp_path / "w") == tmp_path / "w/checkpoints" / ALEXNET_FILE
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / INCEPTION_FILE).write_bytes(b"x")
    assert find_weights(INCEPTION_FILE) == hub / INCEPTION_FILE


def test_lpips_zero_for_identical_images_positive_otherwise(weights_dir, images):
    model = load_lpips(weights_dir)
    for name in ("mnist", "cifar10"):  # 1-channel (replicated) and 3-channel 32x32 images
        x = images[name][:8].reshape(4, 2, *images[name].shape[1:])
        y = images[name][8:16].reshape(4, 2, *images[name].shape[1:])
        identity = np.array([[0, 1]] * 4)
        assert np.allclose(lpips_per_mixture(model, x, x, identity), 0.0, atol=1e-7)
        different = lpips_per_mixture(model, x, y, identity)
        assert different.shape == (4,) and (different > 1e-4).all()
        # the permutation is applied: swapped estimates with perm (1, 0) match exactly
        swapped = x.flip(1)
        assert np.allclose(lpips_per_mixture(model, swapped, x, identity[:, ::-1]), 0, atol=1e-7)
        assert (lpips_per_mixture(model, swapped, x, identity) > 1e-4).all()


def test_fid_of_a_set_against_itself_is_zero_and_inception_score_runs(weights_dir, images):
    inception = InceptionFeatures(weights_dir, batch_size=8)
    a = inception.features(to_uint8_rgb(images["cifar10"][:4]))
    b = inception.features(to_uint8_rgb(images["mnist"][:4]))
    assert a["2048"].shape == (4, 2048) and torch.isfinite(a["2048"]).all()
    fid_other = inception.fid(a, b)
    assert fid_other > 0
    assert abs(inception.fid(a, a)) < 1e-9 * fid_other
    score, std = inception.inception_score(a, splits=2)
    assert 1.0 <= score <= 1008 and np.isfinite(std)


def test_frechet_distance_matches_torch_fidelity_on_both_paths():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    gen = torch.Generator().manual_seed(0)
    for n, m, d in ((6, 9, 16), (40, 50, 16)):  # fewer samples than dimensions, then more
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = 0.5 + 2 * torch.randn(m, d, generator=gen, dtype=torch.float64)
        stats = [fid_features_to_statistics(f) for f in (x, y)]
        expected = fid_statistics_to_metric(*stats, False)["frechet_inception_distance"]
        # torch-fidelity takes sqrt of round-off eigenvalues of a rank-deficient product: 1e-8
        assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
        assert abs(frechet_distance(x, x)) < 1e-9 * expected


def _run(results: Path, data_root: Path, weights: Path | None = None) -> None:
    argv = [
        "run",
        "--methods",
        "mixture",
        "--task",
        "mnist",
        "--preset",
        "smoke",
        "--executor",
        "debug",
        "--results-dir",
        str(results),
        "--data-root",
        str(data_root),
        "--device",
        "cpu",
        "--set",
        "task.eval_mixtures=4",
        "perceptual.fid_reference_images=4",
        "perceptual.table2_mixtures=2",
    ]
    if weights is not None:
        argv += ["--weights-dir", str(weights)]
    assert main(argv) == 0


def _table(results: Path, capsys, which: str = "table1") -> str:
    capsys.readouterr()
    assert main(["table", "--results-dir", str(results), "--which", which]) == 0
    return capsys.readouterr().out


def test_without_weights_na_with_reason_then_placed_weights_fill_the_columns(
    weights_dir, data_root, tmp_path, monkeypatch, capsys
):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    results = tmp_path / "results"
    _run(results, data_root)
    run_dir = next((results / "runs" / "mnist" / "mixture").iterdir())
    record = RunRecord(run_dir).metrics_record
    metrics = record["metrics"]
    assert metrics["lpips"] is None and metrics["fid"] is None and metrics["table2_is"] is None
    assert record["perceptual"]["fid"]["file"] == INCEPTION_FILE
    table = _table(results, capsys)
    row = next(line for line in table.splitlines() if line.startswith("| Mixture"))
    assert row.count("n/a") == 2  # LPIPS and FID
    assert ALEXNET_FILE in table and INCEPTION_FILE in table and "n/a reason" in table
    table2 = _table(results, capsys, "table2")
    assert "n/a" in table2 and INCEPTION_FILE in table2
    # the same command again does nothing while the weights are still missing
    mtime = (run_dir / "metrics.json").stat().st_mtime_ns
    _run(results, data_root)
    assert (run_dir / "metrics.json").stat().st_mtime_ns == mtime

    # place the weights in the torch hub cache: the same commands fill the columns
    hub.mkdir(parents=True)
    for name in (ALEXNET_FILE, INCEPTION_FILE):
        (hub / name).write_bytes((weights_dir / name).read_bytes())
    _run(results, data_root)
    metrics = RunRecord(run_dir).metric_values()
    assert metrics["lpips"] > 0 and metrics["fid"] > 0 and metrics["table2_is"] > 1 - 1e-9
    record = RunRecord(run_dir).perceptual
    assert record["fid"]["n_images"] == 8 and record["fid"]["n_reference"] == 4
    assert record["table2"]["n_images"] == 4 and record["table2"]["n_mixtures"] == 2
    assert "mnist test split" in record["fid"]["reference"]
    scores = pd.read_parquet(run_dir / "scores.parquet")
    assert np.isclose(scores["lpips"].mean(), metrics["lpips"])
    table = _table(results, capsys)
    row = next(line for line in table.splitlines() if line.startswith("| Mixture"))
    assert "n/a" not in row and f"| {metrics['fid']:.2f} (n=1) |" in row  # one seed: no ±
    assert "AlexNet" in table and "8 separated images of 4 mixtures" in table
    table2 = _table(results, capsys, "table2")
    row2 = next(line for line in table2.splitlines() if line.startswith("| Mixture"))
    assert "n/a" not in row2 and f"{metrics['table2_fid']:.2f}" in row2


def test_perceptual_settings_never_enter_a_run_hash():
    from benchmark.config import config_hash, parse_overrides, resolve_config
    from benchmark.registry import get_method, method_names

    changed = parse_overrides(["perceptual.table2_mixtures=3", "perceptual.enabled=false"])
    for method in method_names():
        sections = get_method(method).config_sections
        assert "perceptual" not in sections
        for preset in ("smoke", "cpu", "paper"):
            base = resolve_config(method, "mnist", 0, preset)
            other = resolve_config(method, "mnist", 0, preset, changed)
            assert config_hash(base, sections) == config_hash(other, sections)


def test_finished_run_is_refreshed_only_when_needed(tmp_path, monkeypatch):
    from benchmark.config import resolve_config, to_dict
    from benchmark.perceptual_eval import needs_refresh
    from benchmark.store import RunRecord, atomic_write_json

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = resolve_config("mixit", "mnist", 0, "smoke")
    run_dir = tmp_path / "run"
    atomic_write_json(run_dir / "config.json", {"config": to_dict(cfg)})
    atomic_write_json(run_dir / "metrics.json", {"psnr": 20.0})  # a version-1 (flat) record
    assert needs_refresh(RunRecord(run_dir), cfg)  # made before perceptual metrics existed
    missing = {"status": "unavailable", "reason": "r", "file": INCEPTION_FILE}
    record = {"settings": to_dict(cfg.perceptual), "lpips": {"status": "done"}, "fid": missing}
    atomic_write_json(run_dir / "metrics.json", {"psnr": 20.0, "perceptual": record})
    assert not needs_refresh(RunRecord(run_dir), cfg)  # weights still missing: nothing to redo
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / INCEPTION_FILE).write_bytes(b"x")
    assert needs_refresh(RunRecord(run_dir), cfg, tmp_path / "w")  # placed since
    changed = resolve_config("mixit", "mnist", 0, "smoke", [(None, "perceptual.isc_splits", "5")])
    assert needs_refresh(RunRecord(run_dir), changed)  # settings changed
    before = (run_dir / "config.json").read_bytes()
    assert needs_refresh(RunRecord(run_dir), changed)
    assert (run_dir / "config.json").read_bytes() == before  # a question writes nothing
    disabled = resolve_config("mixit", "mnist", 0, "smoke", [(None, "perceptual.enabled", "0")])
    assert not needs_refresh(RunRecord(run_dir), disabled)
