"""``fsdd2mix`` on the real FSDD recordings (SC09Mix protocol) and the audio task interface."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from benchmark.config import (
    ConfigError,
    config_hash,
    identity_dict,
    parse_overrides,
    resolve_config,
)
from benchmark.registry import get_task
from tasks.audio import (
    AudioDataError,
    AudioTaskConfig,
    FsddMixTask,
    fit_length,
    load_fsdd,
    standardize,
)
from tasks.base import DatasetNotFoundError


@pytest.fixture(scope="module")
def fsdd(data_root):
    return FsddMixTask(AudioTaskConfig(name="fsdd2mix", eval_mixtures=24), data_root)


def test_registered_as_audio_task(fsdd):
    assert get_task("fsdd2mix") is FsddMixTask
    assert fsdd.modality == "audio" and fsdd.sample_rate == 8000
    assert fsdd.sample_shape == (8000,)
    assert get_task("mnist").modality == "image"


def test_official_split_and_standardised_utterances(data_root):
    data = load_fsdd(str(data_root), 8000)
    assert data["speakers"] == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    train, train_spk = data["train"]
    test, test_spk = data["test"]
    # 6 speakers x 10 digits: takes 5-49 train, takes 0-4 test
    assert train.shape == (2700, 8000) and test.shape == (300, 8000)
    assert torch.bincount(test_spk).tolist() == [50] * 6
    audio = torch.cat([train, test]).double()
    torch.testing.assert_close(
        audio.mean(-1), torch.zeros(3000, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        audio.std(-1, unbiased=False), torch.ones(3000, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_test_utterance_matches_file_padded_and_standardised(data_root):
    """Test-split utterance = take < 5; the stored signal is the file centre-padded to 1 s,
    then standardised."""
    path = data_root / "fsdd" / "recordings" / "3_theo_2.wav"
    raw, rate = sf.read(path, dtype="float32")
    assert rate == 8000 and len(raw) < 8000
    expected = standardize(fit_length(raw.astype(np.float64), 8000))
    data = load_fsdd(str(data_root), 8000)
    test = data["test"][0].numpy()
    hits = np.nonzero(np.abs(test - expected[None]).max(-1) < 1e-5)[0]
    assert len(hits) == 1


def test_fit_length_centre_pads_and_crops():
    x = np.arange(1, 6, dtype=float)
    np.testing.assert_array_equal(fit_length(x, 8), [0, 1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(fit_length(x, 3), [2, 3, 4])


def test_mixtures_are_sums_of_two_speakers(fsdd):
    sources = fsdd.sample_sources(64, torch.Generator().manual_seed(0))
    mixtures = fsdd.sample_mixtures(64, torch.Generator().manual_seed(0))
    assert sources.shape == (64, 2, 8000) and mixtures.shape == (64, 8000)
    torch.testing.assert_close(mixtures, sources.sum(1))
    idx = fsdd.train.draw(2000, 2, torch.Generator().manual_seed(1))
    spk = torch.from_numpy(fsdd_speakers(fsdd))[idx]
    assert bool((spk[:, 0] != spk[:, 1]).all())
    assert len(torch.unique(idx)) > 1500  # the whole training pool is used


def fsdd_speakers(task):
    """Speaker index of every training utterance (inverse of the speaker table)."""
    spk = np.empty(len(task.train.audio), dtype=np.int64)
    for s in range(task.train.num_speakers):
        spk[task.train.table[s, : task.train.counts[s]].numpy()] = s
    return spk


def test_mixit_references_hold_one_or_two_distinct_speakers(fsdd):
    refs = fsdd.sample_mixit_references(3000, torch.Generator().manual_seed(2))
    assert refs.shape == (3000, 2, 8000)
    # a single standardised utterance has unit power; two independent ones about 2
    power = refs.pow(2).mean(-1)
    single = (power - 1).abs() < 1e-3
    assert float(single.float().mean()) == pytest.approx(0.5, abs=0.03)
    idx = fsdd.train.draw(500, 4, torch.Generator().manual_seed(3))
    spk = torch.from_numpy(fsdd_speakers(fsdd))[idx]
    assert bool((spk.sort(1).values.diff(dim=1) != 0).all())


def test_eval_set_from_test_split_fixed_by_task_seed(fsdd, data_root):
    a = fsdd.eval_set()
    b = FsddMixTask(AudioTaskConfig(name="fsdd2mix", eval_mixtures=24), data_root).eval_set()
    c = FsddMixTask(
        AudioTaskConfig(name="fsdd2mix", eval_mixtures=24, seed=5), data_root
    ).eval_set()
    assert a.sources.shape == (24, 2, 8000) and a.mixtures.shape == (24, 8000)
    assert torch.equal(a.mixtures, b.mixtures) and not torch.equal(a.mixtures, c.mixtures)
    torch.testing.assert_close(a.mixtures, a.sources.sum(1))
    test = load_fsdd(str(data_root), 8000)["test"][0]
    # every evaluation source is a test-split utterance
    flat = a.sources.reshape(-1, 8000)
    assert bool(
        (
            torch.cdist(flat, test, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
            < 1e-3
        ).all()
    )


def test_mixture_reference_scores_zero_si_sdri(fsdd):
    data = fsdd.eval_set()
    scores = fsdd.score(fsdd.mixture_estimate(data.mixtures), data.sources, data.mixtures)
    assert list(scores.columns[:3]) == ["mixture", "si_sdr", "si_sdri"]
    assert len(scores) == 24 and (scores["si_sdri"] == 0).all()
    assert set(fsdd.metrics) <= set(scores.columns)
    info = fsdd.summarize(scores)
    assert info["settings"] == {"si_sdr_zero_mean": False, "sample_rate": 8000}
    assert info["counts"]["pesq_failed"] == int(scores["pesq_failed"].sum())


def test_missing_fsdd_names_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"fsdd/recordings.*\{digit\}_\{speaker\}"):
        load_fsdd(str(tmp_path), 8000)


def test_wrong_rate_and_corrupt_file_named(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for take in (0, 7):
        for spk in ("ann", "bob"):
            sf.write(rec / f"1_{spk}_{take}.wav", np.zeros(4000) + 0.1, 8000)
    sf.write(rec / "2_ann_9.wav", np.zeros(4000), 16000)
    with pytest.raises(AudioDataError, match=r"2_ann_9\.wav: sample rate 16000 Hz, expected 8000"):
        load_fsdd(str(tmp_path), 8000)
    (rec / "2_ann_9.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(AudioDataError, match=r"2_ann_9\.wav: cannot read audio"):
        load_fsdd(str(tmp_path), 8000)


def test_audio_config_fields_leave_image_hashes_alone():
    """Audio task fields belong to the audio tasks' section (``AudioTaskConfig``): image runs do
    not have them (a --set of one is refused), and on audio runs they are part of the identity
    only when changed from their defaults."""
    cfg = resolve_config("mixit", "mnist", 0, "smoke")
    sections = ("task", "train", "net", "mixit", "eval")
    assert set(identity_dict(cfg, sections)["task"]) == {
        "name",
        "num_sources",
        "seed",
        "eval_mixtures",
    }
    with pytest.raises(ConfigError, match=r"task\.si_sdr_zero_mean"):
        resolve_config("mixit", "mnist", 0, "smoke", parse_overrides(["task.si_sdr_zero_mean=1"]))
    audio = resolve_config("mixit", "fsdd2mix", 0, "smoke")
    base = config_hash(audio)
    assert set(identity_dict(audio)["task"]) == {"name", "num_sources", "seed", "eval_mixtures"}
    audio.task.si_sdr_zero_mean = True
    assert config_hash(audio) != base
    assert identity_dict(audio)["task"]["si_sdr_zero_mean"] is True
