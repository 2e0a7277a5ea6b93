"""Audio metrics against direct transcriptions / direct library calls, FUSS metrics on
hand-built cases, and the parallel evaluator against the serial one."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from pesq import pesq
from pystoi import stoi
from speechmos import dnsmos
from torchaudio.functional import resample

from tasks.audio import AudioTaskConfig, FsddMixTask, load_fsdd
from tasks.audio_metrics import (
    dnsmos_ovrl,
    estoi,
    map_items,
    pesq_score,
    pit_si_sdr,
    score_audio_mixture,
    si_sdr,
)
from tasks.fuss_metrics import fuss_example_scores, fuss_row, fuss_si_snr, fuss_summary


def d2_si_sdr(x: np.ndarray, x_hat: np.ndarray) -> float:
    """SURF Appendix D.2, transcribed literally: alpha = x_hat^T x / ||x||^2,
    SI-SNR = 10 log10(||alpha x||^2 / ||alpha x - x_hat||^2)."""
    alpha = np.dot(x_hat, x) / np.dot(x, x)
    return 10 * np.log10(np.sum((alpha * x) ** 2) / np.sum((alpha * x - x_hat) ** 2))


@pytest.fixture(scope="module")
def speech(data_root):
    """Real speech: four 1 s FSDD test utterances of different speakers, 8 kHz, float64."""
    test, speaker = load_fsdd(str(data_root), 8000)["test"]
    picks = [int(torch.nonzero(speaker == s)[3]) for s in range(4)]
    audio = test[picks].double().numpy()
    return 0.5 * audio / np.abs(audio).max()  # peak 0.5: within [-1, 1] after resampling


def test_si_sdr_matches_d2_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 800)) + 0.3  # a DC offset: the variants differ
    x_hat = 0.7 * x + 0.4 * rng.standard_normal((5, 800))
    ours = si_sdr(x_hat, x)
    direct = [d2_si_sdr(x[i], x_hat[i]) for i in range(5)]
    np.testing.assert_allclose(ours, direct, rtol=1e-12)
    centred = [d2_si_sdr(x[i] - x[i].mean(), x_hat[i] - x_hat[i].mean()) for i in range(5)]
    np.testing.assert_allclose(si_sdr(x_hat, x, zero_mean=True), centred, rtol=1e-12)
    assert not np.allclose(ours, centred)
    # scale invariance and the perfect-estimate / silent-reference ends
    np.testing.assert_allclose(si_sdr(3.0 * x_hat, x), ours, rtol=1e-10)
    assert si_sdr(x[0], x[0]) == np.inf
    assert np.isnan(si_sdr(np.ones(10), np.zeros(10)))  # silent reference


def test_pit_picks_permutation_and_si_sdri(speech):
    sources = speech[:2]
    mixture = sources.sum(0)
    estimates = np.stack([sources[1] + 0.1 * sources[0], sources[0] + 0.05 * sources[1]])
    out = pit_si_sdr(estimates, sources, mixture)
    assert out["perm"] == (1, 0) and list(out["order"]) == [1, 0]
    expected = [d2_si_sdr(sources[0], estimates[1]), d2_si_sdr(sources[1], estimates[0])]
    np.testing.assert_allclose(out["si_sdr"], expected, rtol=1e-12)
    baseline = [d2_si_sdr(sources[j], mixture) for j in range(2)]
    np.testing.assert_allclose(out["si_sdri"], np.subtract(expected, baseline), rtol=1e-12)
    same = pit_si_sdr(np.stack([mixture, mixture]), sources, mixture)
    np.testing.assert_array_equal(same["si_sdri"], [0.0, 0.0])


def test_pesq_equals_direct_call_nb_and_wb(speech):
    ref = speech[0]
    deg = ref + 0.05 * speech[1]
    assert pesq_score(deg, ref, 8000) == pesq(8000, ref, deg, "nb")
    ref16 = resample(torch.from_numpy(ref), 8000, 16000).numpy()
    deg16 = resample(torch.from_numpy(deg), 8000, 16000).numpy()
    assert pesq_score(deg16, ref16, 16000) == pesq(16000, ref16, deg16, "wb")
    with pytest.raises(ValueError, match="8000 or 16000"):
        pesq_score(deg, ref, 22050)


def test_pesq_failure_is_nan_and_counted(speech):
    assert np.isnan(pesq_score(np.zeros(8000), np.zeros(8000), 8000))
    refs = np.stack([speech[0], np.zeros(8000)])
    row = score_audio_mixture(refs.copy(), refs, refs.sum(0), 8000, ("si_sdr", "pesq"))
    assert row["pesq_failed"] == 1 and np.isnan(row["pesq"])  # the item is kept, as NaN


def test_estoi_equals_direct_call(speech):
    ref, deg = speech[0], speech[0] + 0.3 * speech[1]
    assert estoi(deg, ref, 8000) == stoi(ref, deg, 8000, extended=True)
    assert 0.0 < estoi(deg, ref, 8000) < 1.0
    # too little speech for ESTOI: NaN instead of pystoi's 1e-5 placeholder
    short = np.zeros(8000)
    short[:1000] = speech[0][3500:4500]
    assert np.isnan(estoi(short, short, 8000))


def test_dnsmos_equals_direct_speechmos_call(speech):
    """Real speech clip of 9.2 s (one DNSMOS window, so the test is quick)."""
    clip8 = np.tile(speech[:4].reshape(-1), 3)[:73600]  # 9.2 s at 8 kHz
    clip16 = resample(torch.from_numpy(clip8), 8000, 16000).numpy()
    direct = dnsmos.run(clip16, sr=16000)["ovrl_mos"]
    assert 1.0 < direct < 5.0
    assert dnsmos_ovrl(clip16, 16000) == direct
    # 8 kHz input: resampled with torchaudio.functional.resample, then the same call
    assert dnsmos_ovrl(clip8, 8000) == direct
    # an estimate exceeding [-1, 1] is peak-normalised (speechmos refuses it otherwise)
    loud = 3.0 * clip16 / np.abs(clip16).max()
    assert dnsmos_ovrl(loud, 16000) == dnsmos.run(loud / 3.0, sr=16000)["ovrl_mos"]


def test_task_score_with_workers_equals_serial(data_root, monkeypatch):
    from tasks import audio_metrics

    monkeypatch.setattr(audio_metrics, "PARALLEL_MIN_SECONDS_WARM", 0.0)  # use the workers
    monkeypatch.setattr(audio_metrics, "PARALLEL_MIN_SECONDS_COLD", 0.0)
    task = FsddMixTask(AudioTaskConfig(name="fsdd2mix", eval_mixtures=6), data_root)
    data = task.eval_set()
    est = data.sources.flip(1) + 0.3 * torch.randn(
        data.sources.shape, generator=torch.Generator().manual_seed(0)
    )
    serial = task.score(est, data.sources, data.mixtures)
    task.workers = 2
    pd.testing.assert_frame_equal(task.score(est, data.sources, data.mixtures), serial)
    assert (serial["perm"] == "1,0").all()


# ------------------------------------------------------------------------------------------
# FUSS metrics (Wisdom et al. 2021 evaluate_lib) on hand-built cases
# ------------------------------------------------------------------------------------------

T = 1600


@pytest.fixture
def refs():
    """Two active noise sources (unit power) in 4 slots, the last two silent."""
    rng = np.random.default_rng(3)
    out = np.zeros((4, T))
    out[:2] = rng.standard_normal((2, T))
    return out


def test_fuss_si_snr_bounds_and_formula():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(T)
    bound = 10 * np.log10((1 + 1e-8) / 1e-8)
    assert fuss_si_snr(x, x) == pytest.approx(bound)  # perfect estimate hits the +80 dB bound
    assert fuss_si_snr(np.zeros(T), x) == pytest.approx(-bound)  # silent estimate
    assert fuss_si_snr(x, np.zeros(T)) == pytest.approx(-bound)  # silent reference
    y = x + 0.5 * rng.standard_normal(T)  # far from the seam: equals SI-SDR (no mean removal)
    assert fuss_si_snr(y, x) == pytest.approx(d2_si_sdr(x, y), abs=1e-6)


def test_fuss_perfect_estimates_permuted(refs):
    out = fuss_example_scores(refs[[1, 0, 3, 2]], refs)
    assert out["perm"] == (1, 0, 3, 2) or out["perm"] == (1, 0, 2, 3)
    np.testing.assert_allclose(out["si_snr"][:2], 80.0, atol=1e-6)
    np.testing.assert_allclose(out["si_snr"][2:], -80.0, atol=1e-6)  # silent reference slots
    assert out["active_refs"].tolist() == [True, True, False, False]
    assert out["active_seps"].tolist() == [True, True, False, False]
    assert (out["num_active_refs"], out["num_active_seps"], out["num_active_pairs"]) == (2, 2, 2)
    assert out["equal"] and not out["under"] and not out["over"]
    # improvement against the sum of the references
    mix = refs.sum(0)
    np.testing.assert_allclose(out["si_snri"], out["si_snr"] - fuss_si_snr(mix, refs))


def test_fuss_silent_estimate_is_inactive_and_under_separated(refs):
    est = refs.copy()
    est[1] = 0.0  # one active source not estimated
    out = fuss_example_scores(est, refs)
    assert out["active_seps"].tolist() == [True, False, False, False]
    assert out["si_snr"][1] == pytest.approx(-80.0, abs=1e-6)
    assert out["num_active_pairs"] == 1 and out["under"] and not out["equal"]
    row = fuss_row(est, refs, refs.sum(0))
    # only active pairs are pooled: the silent estimate does not enter 2Si
    assert row["fuss_2si"] == pytest.approx(out["si_snri"][0])


def test_fuss_over_separation_by_extra_noisy_output(refs):
    rng = np.random.default_rng(5)
    est = refs.copy()
    est[2] = 0.2 * rng.standard_normal(T)  # power 0.04 > 0.01 x quietest active ref
    est[3] = 0.05 * rng.standard_normal(T)  # power 0.0025 < 0.01 x ~1: inactive
    out = fuss_example_scores(est, refs)
    assert out["num_active_seps"] == 3 and out["num_active_refs"] == 2
    assert out["over"] and not out["equal"]
    assert out["active_pairs"].tolist() == [True, True, False, False]


def test_fuss_under_separation_by_merging_two_sources(refs):
    refs3 = refs.copy()
    refs3[2] = np.random.default_rng(6).standard_normal(T)
    est = np.zeros((4, T))
    est[0] = refs3[0] + refs3[1]  # two sources merged into one output
    est[1] = refs3[2]
    out = fuss_example_scores(est, refs3)
    assert out["num_active_refs"] == 3 and out["num_active_seps"] == 2 and out["under"]
    # the merged output goes to one of the merged sources, at about 0 dB SI-SNR
    assert out["perm"][1] == 2  # estimate 1 is aligned to reference slot 2
    merged_slot = out["perm"][0]
    assert merged_slot in (0, 1)
    assert abs(out["si_snr"][merged_slot]) < 1.0
    assert out["si_snr"][2] == pytest.approx(80.0, abs=1e-6)


def test_fuss_summary_pools_by_source_count(refs):
    rng = np.random.default_rng(7)
    single = np.zeros((4, T))
    single[0] = rng.standard_normal(T)
    noisy = single.copy()
    noisy[0] += 0.1 * rng.standard_normal(T)
    four = rng.standard_normal((4, T))
    four_est = four + 0.3 * rng.standard_normal((4, T))
    crosstalk = refs.copy()
    crosstalk[:2] += 0.5 * refs[[1, 0]]
    rows = pd.DataFrame(
        [
            fuss_row(noisy, single, single.sum(0)),
            fuss_row(crosstalk, refs, refs.sum(0)),
            fuss_row(four_est, four, four.sum(0)),
            fuss_row(np.zeros((4, T)), np.zeros((4, T)), np.zeros(T)),  # skipped
        ]
    )
    summary = fuss_summary(rows)
    assert summary["fuss_1s"] == pytest.approx(fuss_si_snr(noisy[0], single[0]))
    two = fuss_example_scores(crosstalk, refs)
    four_out = fuss_example_scores(four_est, four)
    assert summary["fuss_2si"] == pytest.approx(two["si_snri"][:2].mean())
    assert summary["fuss_4si"] == pytest.approx(four_out["si_snri"].mean())
    assert np.isnan(summary["fuss_3si"]) and summary["fuss_3si_n"] == 0
    pooled = np.concatenate([two["si_snri"][:2], four_out["si_snri"]])  # per source: 2 + 4
    assert summary["fuss_msi"] == pytest.approx(pooled.mean()) and summary["fuss_msi_n"] == 6
    assert summary["fuss_skipped"] == 1
    assert (summary["under"], summary["equal"], summary["over"]) == (0.0, 1.0, 0.0)


def test_fuss_permutation_search_is_exhaustive():
    rng = np.random.default_rng(8)
    refs = rng.standard_normal((4, 400))
    est = refs[[2, 3, 0, 1]] + 0.8 * rng.standard_normal((4, 400))
    out = fuss_example_scores(est, refs)
    pair = fuss_si_snr(est[None], refs[:, None])
    totals = {p: pair[np.arange(4), list(p)].sum() for p in itertools.permutations(range(4))}
    slot_to_estimate = max(totals, key=totals.get)  # slot i gets estimate p[i]
    # out["perm"]: estimate k is aligned to slot perm[k], the inverse
    assert all(out["perm"][slot_to_estimate[i]] == i for i in range(4))


def _speech_items(speech, count: int) -> list[tuple]:
    rng = np.random.default_rng(9)
    items = []
    for n in range(count):
        refs = speech[[n % 4, (n + 1) % 4]]
        est = refs[::-1] + 0.2 * rng.standard_normal(refs.shape) * (n + 1) / count
        items.append((est, refs, refs.sum(0)))
    return items


def test_worker_pool_results_equal_serial_and_the_pool_is_reused(speech, monkeypatch):
    from tasks import audio_metrics

    # as many items as the threshold wants: every call goes to the workers here
    monkeypatch.setattr(audio_metrics, "PARALLEL_MIN_SECONDS_WARM", 0.0)
    monkeypatch.setattr(audio_metrics, "PARALLEL_MIN_SECONDS_COLD", 0.0)
    items = _speech_items(speech, 6)
    kwargs = {"sample_rate": 8000, "families": ("si_sdr", "pesq", "estoi")}
    serial = pd.DataFrame(map_items(score_audio_mixture, items, 1, **kwargs))
    parallel = pd.DataFrame(map_items(score_audio_mixture, items, 2, **kwargs))
    pool = audio_metrics._POOLS[2]
    again = pd.DataFrame(map_items(score_audio_mixture, items, 2, **kwargs))
    assert audio_metrics._POOLS[2] is pool  # one pool for every call of this process
    assert serial["estoi"].notna().sum() >= 3
    for frame in (parallel, again):
        # SI-SDR(i), PESQ, failure counts and permutations: exactly; ESTOI (pystoi's float64
        # sums depend on memory alignment, so its last bit can differ between processes)
        exact = frame.drop(columns=["estoi"])
        assert exact.equals(serial.drop(columns=["estoi"]))
        np.testing.assert_allclose(frame["estoi"], serial["estoi"], rtol=1e-12, atol=0)
    fuss_items = [
        (np.vstack([e, np.zeros((2, 8000))]), np.vstack([r, np.zeros((2, 8000))]), m)
        for e, r, m in items
    ]
    assert pd.DataFrame(map_items(fuss_row, fuss_items, 2)).equals(
        pd.DataFrame(map_items(fuss_row, fuss_items, 1))
    )


def test_few_cheap_items_are_scored_without_starting_workers(speech):
    from tasks import audio_metrics

    items = _speech_items(speech, 5)
    before = set(audio_metrics._POOLS)
    rows = map_items(score_audio_mixture, items, 7, sample_rate=8000)  # SI-SDR: microseconds
    assert 7 not in audio_metrics._POOLS and set(audio_metrics._POOLS) == before
    assert rows == [score_audio_mixture(*item, sample_rate=8000) for item in items]
