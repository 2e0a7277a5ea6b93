"""``libri2mix``, ``fuss`` and ``libri_fuss`` loaders on small fixtures in the corpora's exact
on-disk layouts (metadata CSV, list files, LibriSpeech folders; ``tests/audio_fixtures.py``),
built from real FSDD speech; their error reports; an end-to-end ``mixture`` reference run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from audio_fixtures import make_fuss, make_libri2mix, make_librispeech

from benchmark.cli import main
from benchmark.store import RunRecord
from tasks.audio import AudioDataError, AudioTaskConfig
from tasks.audio_corpora import FussTask, Libri2MixTask, LibriFussTask
from tasks.audio_metrics import si_sdr
from tasks.base import DatasetNotFoundError

# --------------------------------------------------------------------------------------------
# libri2mix
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libri_root(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("librimix")
    make_libri2mix(root, data_root)
    return root


def _libri_task(root, **kw):
    cfg = AudioTaskConfig(name="libri2mix", sample_rate=8000, segment_s=1.0, eval_mixtures=10, **kw)
    return Libri2MixTask(cfg, root)


def test_libri2mix_training_reads_mixture_segments(libri_root):
    task = _libri_task(libri_root)
    assert task.modality == "audio" and task.sample_shape == (8000,)
    assert len(task.train_index) == 3
    # absolute paths of another machine fall back to the layout path of the mixture_ID
    assert all(str(p).startswith(str(libri_root)) for p in task.train_index["mixture"])
    mixtures = task.sample_mixtures(4, torch.Generator().manual_seed(0))
    assert mixtures.shape == (4, 8000)
    # every row is a contiguous 1 s segment of one of the training mixture files
    files = [sf.read(p, dtype="float32")[0] for p in task.train_index["mixture"]]
    for row in mixtures.numpy():
        hits = [
            any(np.array_equal(row, f[o : o + 8000]) for o in range(0, len(f) - 7999))
            for f in files
        ]
        assert any(hits)
    refs = task.sample_mixit_references(5, torch.Generator().manual_seed(1))
    assert refs.shape == (5, 2, 8000)
    assert not any(torch.equal(r[0], r[1]) for r in refs)
    sources = task.sample_sources(3, torch.Generator().manual_seed(2))
    assert sources.shape == (3, 2, 8000)


def test_libri2mix_eval_full_length_padded_and_scored_on_true_length(libri_root):
    task = _libri_task(libri_root)
    data = task.eval_set()
    assert data.mixtures.shape == (3, 76_800) and data.sources.shape == (3, 2, 76_800)
    assert data.lengths.tolist() == [73_600, 76_800, 75_200]
    torch.testing.assert_close(data.mixtures, data.sources.sum(1), atol=1e-6, rtol=0)
    assert float(data.sources[0, :, 73_600:].abs().sum()) == 0.0
    noisy = data.sources.flip(1) + 0.05 * torch.randn(
        data.sources.shape, generator=torch.Generator().manual_seed(0)
    )
    scores = task.score(noisy, data.sources, data.mixtures, lengths=data.lengths)
    assert set(task.metrics) <= set(scores.columns) and (scores["perm"] == "1,0").all()
    end = 73_600
    direct = si_sdr(noisy[0, [1, 0], :end].numpy(), data.sources[0, :, :end].numpy()).mean()
    assert scores.at[0, "si_sdr"] == pytest.approx(direct, rel=1e-12)
    assert 1.0 < scores["dnsmos"].min() and scores["pesq"].notna().all()
    cropped = _libri_task(libri_root, eval_segment_s=2.0).eval_set()
    assert cropped.mixtures.shape == (3, 16_000) and cropped.lengths is None


def test_libri2mix_missing_dataset_names_layout(tmp_path):
    task = Libri2MixTask(AudioTaskConfig(name="libri2mix"), tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        task.sample_mixtures(2, torch.Generator().manual_seed(0))
    message = str(info.value)
    assert "wav16k/min/metadata/mixture_train-360_mix_clean.csv" in message
    assert "{mix_clean,s1,s2}/<mixture_ID>.wav" in message and str(tmp_path) in message
    with pytest.raises(DatasetNotFoundError, match=r"mixture_test_mix_clean\.csv"):
        task.eval_set()


def test_libri2mix_bad_files_are_named(tmp_path, data_root):
    base = make_libri2mix(tmp_path, data_root)
    csv_path = base / "metadata" / "mixture_train-360_mix_clean.csv"
    victim = base / "train-360" / "s2" / "101-2000-0001_201-3000-0001.wav"
    victim.unlink()
    with pytest.raises(AudioDataError, match=r"train-360_mix_clean\.csv, line 3: source_2_path"):
        _libri_task(tmp_path).sample_mixtures(1, torch.Generator().manual_seed(0))
    sf.write(victim, np.zeros(100), 16_000)  # wrong sample rate
    task = _libri_task(tmp_path)
    with pytest.raises(AudioDataError, match=r"s2/101-2000-0001_201-3000-0001\.wav: sample rate"):
        for seed in range(20):
            task.sample_sources(3, torch.Generator().manual_seed(seed))
    victim.write_bytes(b"not a wav file at all")
    with pytest.raises(AudioDataError, match=r"101-2000-0001_201-3000-0001\.wav: cannot read"):
        for seed in range(20):
            task.sample_sources(3, torch.Generator().manual_seed(seed))
    assert csv_path.is_file()


# --------------------------------------------------------------------------------------------
# fuss
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuss_root(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("fuss")
    make_fuss(root, data_root)
    return root


def test_fuss_sources_padded_to_four_and_mixtures_only_for_training(fuss_root):
    task = FussTask(AudioTaskConfig(name="fuss", eval_mixtures=10, segment_s=1.0), fuss_root)
    assert task.num_sources == 4 and task.sample_shape == (16_000,)
    assert task.sample_mixtures(2, torch.Generator().manual_seed(0)).shape == (2, 16_000)
    assert task.sample_mixit_references(2, torch.Generator().manual_seed(0)).shape == (
        2,
        2,
        16_000,
    )
    data = task.eval_set()
    assert data.sources.shape == (3, 4, 160_000) and data.mixtures.shape == (3, 160_000)
    active = (data.sources.abs().amax(-1) > 0).sum(1).tolist()
    assert active == [1, 2, 3]  # background + 0/1/2 foregrounds; the rest silent slots
    torch.testing.assert_close(data.mixtures, data.sources.sum(1), atol=1e-5, rtol=0)


def test_fuss_scores_and_pooled_summary(fuss_root):
    task = FussTask(AudioTaskConfig(name="fuss", eval_mixtures=10), fuss_root)
    data = task.eval_set()
    scores = task.score(data.sources.flip(1), data.sources, data.mixtures)
    summary = task.summarize(scores)
    metrics = summary["metrics"]
    assert metrics["fuss_1s"] == pytest.approx(80.0, abs=1e-3)  # perfect: the +80 dB bound
    assert summary["counts"]["fuss_msi_n"] == 5 and metrics["equal"] == 1.0
    assert set(task.metrics) <= set(metrics)
    assert set(summary["spread"]) == {"fuss_1s", "fuss_2si", "fuss_3si", "fuss_4si", "fuss_msi"}
    mixture_scores = task.summarize(
        task.score(task.mixture_estimate(data.mixtures), data.sources, data.mixtures)
    )["metrics"]
    assert mixture_scores["fuss_msi"] == pytest.approx(0.0, abs=1e-6)
    assert mixture_scores["over"] == 1.0  # 4 active outputs for 1-3 sources


def test_fuss_list_errors_named(tmp_path, data_root):
    with pytest.raises(DatasetNotFoundError, match=r"fuss_dev/ssdata/train_example_list\.txt"):
        FussTask(AudioTaskConfig(name="fuss"), tmp_path).sample_mixtures(1, torch.Generator())
    folder = make_fuss(tmp_path, data_root, counts=(("train", 2),))
    (folder / "train" / "example00001_sources" / "foreground0_sound.wav").unlink()
    with pytest.raises(AudioDataError, match=r"line 2: file not found: .*foreground0_sound"):
        FussTask(AudioTaskConfig(name="fuss"), tmp_path).sample_mixtures(1, torch.Generator())


# --------------------------------------------------------------------------------------------
# libri_fuss
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libri_fuss_root(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("librifuss")
    make_fuss(root, data_root, counts=(("train", 2), ("eval", 2)))
    make_librispeech(root, data_root, "test-clean", 3)
    make_librispeech(root, data_root, "train-clean-100", 2)
    return root


def test_libri_fuss_eval_snr_range_peak_and_seed(libri_fuss_root):
    cfg = AudioTaskConfig(name="libri_fuss", eval_mixtures=10)
    data = LibriFussTask(cfg, libri_fuss_root).eval_set()
    assert data.sources.shape == (2, 2, 160_000)  # one mixture per FUSS eval background
    speech, back = data.sources[:, 0].double(), data.sources[:, 1].double()
    snr = 10 * torch.log10(speech.pow(2).mean(-1) / back.pow(2).mean(-1))
    assert bool(((snr > -5) & (snr < 15)).all())
    torch.testing.assert_close(data.mixtures.abs().amax(-1), torch.full((2,), 0.9))
    again = LibriFussTask(cfg, libri_fuss_root).eval_set()
    other = LibriFussTask(AudioTaskConfig(name="libri_fuss", seed=9), libri_fuss_root).eval_set()
    assert torch.equal(again.mixtures, data.mixtures)
    assert not torch.equal(other.mixtures, data.mixtures)


def test_libri_fuss_scores_speech_only_and_trains_on_mixtures(libri_fuss_root):
    task = LibriFussTask(AudioTaskConfig(name="libri_fuss", segment_s=1.0), libri_fuss_root)
    assert task.sample_mixtures(2, torch.Generator().manual_seed(0)).shape == (2, 16_000)
    pair = task.sample_sources(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        pair.sum(1), task.sample_mixtures(2, torch.Generator().manual_seed(0))
    )
    data = task.eval_set()
    est = data.sources.clone()
    est[:, 1] += 0.5 * data.sources[:, 0]  # a bad background estimate does not count
    est[:, 0] += 0.1 * data.sources[:, 1]
    scores = task.score(est, data.sources, data.mixtures)
    direct = si_sdr(est[:, 0].numpy(), data.sources[:, 0].numpy())
    np.testing.assert_allclose(scores["si_sdr"], direct, rtol=1e-12)


def test_libri_fuss_missing_librispeech_named(tmp_path, data_root):
    make_fuss(tmp_path, data_root, counts=(("train", 1),))
    task = LibriFussTask(AudioTaskConfig(name="libri_fuss"), tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"LibriSpeech/train-clean-100/<spk>"):
        task.sample_mixtures(1, torch.Generator())
    with pytest.raises(DatasetNotFoundError, match=r"LibriSpeech/test-clean/<spk>"):
        task.eval_set()


# --------------------------------------------------------------------------------------------
# end to end: the mixture reference row through the runner (metrics.json, parquet, workers)
# --------------------------------------------------------------------------------------------


def test_mixture_reference_run_end_to_end(libri_root, tmp_path):
    results = tmp_path / "results"
    argv = ["run", "--methods", "mixture", "--task", "libri2mix", "--preset", "smoke"]
    argv += ["--executor", "debug", "--workers", "1", "--results-dir", str(results)]
    argv += ["--data-root", str(libri_root), "--set", "task.sample_rate=8000", "task.segment_s=1"]
    assert main(argv) == 0
    (run_dir,) = (results / "runs" / "libri2mix" / "mixture").iterdir()
    record = RunRecord(run_dir)
    assert record.metrics_record["schema_version"] == 2
    assert record.metric_values()["si_sdri"] == 0.0 and record.counts["n_mixtures"] == 3
    assert record.metrics_record["settings"]["si_sdr_zero_mean"] is False
    assert record.counts["pesq_failed"] == 0
    scores = pd.read_parquet(run_dir / "scores.parquet")
    assert len(scores) == 3 and {"si_sdr", "pesq", "estoi", "dnsmos"} <= set(scores.columns)
