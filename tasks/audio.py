"""Audio tasks: the common :class:`AudioTask` base and ``fsdd2mix`` (real speech, offline).

Conventions shared by every audio task (``modality = "audio"``):

- Sources have shape ``(T,)``: ``sample_shape = (T,)`` with ``T`` the segment length in samples
  at ``sample_rate`` Hz. Batches are ``(B, T)`` mixtures, ``(B, K, T)`` sources.
- **Sum convention**: a mixture is the plain sum of its sources, ``m = sum_k x^(k)``, the natural
  convention for audio and SURF eq. (1)'s; methods get and return signals in that scale.
- The do-nothing ``mixture`` reference estimates **every source by the mixture itself** (not
  ``m / K``): its SI-SDRi is exactly 0 dB, the reference point of SI-SDRi tables.
- Scores: SI-SDR / SI-SDRi under the PIT permutation and whatever else the task lists, per
  mixture (``tasks/audio_metrics.py``); CPU-bound metrics run in ``self.workers`` processes.

``fsdd2mix`` follows the SC09Mix protocol of Karamatli & Kirbiz 2022 (§IV-A) with the Free
Spoken Digit Dataset in place of Speech Commands: two utterances of spoken digits from different
speakers, each brought to 1 s (8,000 samples at 8 kHz) and standardised to zero mean and unit
variance, then summed. FSDD's own split: takes 0-4 of every speaker and digit are the test set,
takes 5-49 the training set. Training mixtures are drawn on the fly from the training
utterances; the evaluation mixtures from the test utterances with the task seed.

Bringing an utterance to the segment length (FSDD clips are 0.14-2.3 s): a shorter clip is
zero-padded **centred** (equal zeros before and after, the extra one after); a longer one
(0.7 % of FSDD at 1 s) is **centre-cropped**. Standardisation is over the whole 1 s segment
after padding/cropping, so every source has exactly zero mean and unit variance as SC09Mix
requires (padding then holds a tiny constant, minus the clip's DC offset over the segment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch import Tensor

from benchmark.config import ConfigError, TaskConfig, param
from benchmark.registry import register_task
from tasks.audio_metrics import map_items, score_audio_mixture
from tasks.base import DatasetError, DatasetNotFoundError, EvalSet, Task

__all__ = [
    "AudioDataError",
    "AudioTask",
    "AudioTaskConfig",
    "FsddMixTask",
    "fit_length",
    "load_fsdd",
    "read_audio",
    "standardize",
]


class AudioDataError(DatasetError):
    """An audio file is unreadable, truncated, has the wrong sample rate or channel count, or a
    list/CSV line is malformed or points to a missing file; the message names the file (and the
    line)."""


#: what to do about a broken audio file (the dataset's own copy is the only good source)
AUDIO_FIX = "replace it with a good copy from the dataset's source (re-download or re-extract it)"

#: libsndfile's log line for a WAV data chunk that is shorter than its header declares
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _wav_truncation(handle: sf.SoundFile) -> str | None:
    """Why a WAV file is truncated, or None. libsndfile reads a cut WAV file without error (it
    just returns fewer samples); its log (``extra_info``) records the header's data size and
    the size found. Sizes of 0 or about 2**32 (streamed writers that never fill in the header)
    are not truncation."""
    if handle.format not in ("WAV", "WAVEX", "RF64"):
        return None
    match = _WAV_DATA_SIZE.search(handle.extra_info)
    if match is None:
        return None
    declared, found = int(match.group(1)), int(match.group(2))
    if found < declared < 0xFFFF_FF00:
        return f"truncated: its header declares {declared:,} bytes of audio, the file has {found:,}"
    return None


def read_audio(path: Path, sample_rate: int, start: int = 0, frames: int = -1) -> np.ndarray:
    """Read a mono audio file (or a part of it) with soundfile as float32 in [-1, 1].

    Args:
        path: the file (WAV/FLAC/...).
        sample_rate: the rate the file must have (Hz).
        start: first sample to read.
        frames: samples to read (-1: to the end).

    Returns:
        ``(T,)`` float32 array.

    Raises:
        AudioDataError: missing, corrupt/unreadable, truncated (a WAV file shorter than its
            header says, a read that ends early, or ``start`` past the end), multi-channel or
            wrong-rate file; the message names the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDataError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(str(path)) as handle:
            if handle.samplerate != sample_rate:
                raise AudioDataError(
                    f"{path}: sample rate {handle.samplerate} Hz, expected {sample_rate} Hz "
                    "(check task.sample_rate and the dataset folder, e.g. wav8k vs wav16k)"
                )
            truncated = _wav_truncation(handle)
            if truncated:
                raise AudioDataError(f"{path}: cannot read audio ({truncated}); {AUDIO_FIX}")
            total = handle.frames
            if start and start >= total:
                raise AudioDataError(
                    f"{path}: cannot read audio from sample {start:,}: the file has only "
                    f"{total:,} samples (truncated, or shorter than its metadata says); "
                    f"{AUDIO_FIX}"
                )
            if start:
                handle.seek(start)
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
            exact = handle.format != "MPEG"  # MP3 frame counts are estimates
    except AudioDataError:
        raise
    except (RuntimeError, sf.LibsndfileError, OSError) as exc:
        raise AudioDataError(f"{path}: cannot read audio ({exc}); {AUDIO_FIX}") from None
    wanted = total - start if frames < 0 else min(frames, total - start)
    if exact and data.shape[0] < wanted:
        raise AudioDataError(
            f"{path}: cannot read audio (truncated: {data.shape[0]:,} of {wanted:,} samples "
            f"from sample {start:,}); {AUDIO_FIX}"
        )
    if data.shape[1] != 1:
        raise AudioDataError(f"{path}: {data.shape[1]} channels, expected mono audio")
    return data[:, 0]


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Centre-pad with zeros (shorter) or centre-crop (longer) ``(T,)`` audio to ``length``."""
    size = audio.shape[-1]
    if size >= length:
        begin = (size - length) // 2
        return audio[..., begin : begin + length]
    before = (length - size) // 2
    return np.pad(audio, (before, length - size - before))


def standardize(audio: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance over the last axis (SC09Mix); silent input stays zero."""
    audio = audio - audio.mean(axis=-1, keepdims=True)
    std = audio.std(axis=-1, keepdims=True)
    return audio / np.where(std > 0, std, 1.0)


@dataclass
class AudioTaskConfig(TaskConfig):
    """The ``task`` section of the audio tasks: :class:`benchmark.config.TaskConfig` plus the
    settings below (left out of run hashes while at their defaults, so adding them changed no
    existing address).

    Attributes:
        sample_rate: Hz; 0 = the task's native rate (``fsdd2mix`` 8,000; ``libri2mix``,
            ``fuss``, ``libri_fuss`` 16,000).
        segment_s: training segment length in seconds; 0 = the task's default (``fsdd2mix``
            1.0, ``libri2mix`` 3.0, ``fuss`` and ``libri_fuss`` 10.0).
        eval_segment_s: evaluation segment length in seconds; 0 = the task's default
            (full-length ``libri2mix`` test mixtures; the others as ``segment_s``).
        librimix_mode: ``"min"`` or ``"max"`` (LibriMix's ``wav*/{min,max}`` folders).
        train_split: training split; "" = the task's default (``libri2mix`` ``train-360``,
            ``fuss`` ``train``).
        eval_split: evaluation split; "" = the task's default (``libri2mix`` ``test``,
            ``fuss`` ``eval``).
        snr_low_db: lower end of the speech-to-background SNR range of ``libri_fuss`` (dB).
        snr_high_db: upper end of that range (dB); SNRs are uniform in (low, high).
        si_sdr_zero_mean: remove the mean of reference and estimate before SI-SDR (the
            zero-mean variant); False = SURF D.2's formula as written.
    """

    sample_rate: int = param(0, ge=0, omit_at_default=True)
    segment_s: float = param(0.0, ge=0.0, finite=True, omit_at_default=True)
    eval_segment_s: float = param(0.0, ge=0.0, finite=True, omit_at_default=True)
    librimix_mode: str = param("min", choices=("min", "max"), omit_at_default=True)
    train_split: str = param("", omit_at_default=True)
    eval_split: str = param("", omit_at_default=True)
    snr_low_db: float = param(-5.0, finite=True, omit_at_default=True)
    snr_high_db: float = param(15.0, finite=True, omit_at_default=True)
    si_sdr_zero_mean: bool = param(False, omit_at_default=True)

    def validate(self) -> None:
        """The SNR range must not be empty.

        Raises:
            ConfigError: ``snr_low_db >= snr_high_db``.
        """
        if not self.snr_low_db < self.snr_high_db:
            raise ConfigError(
                f"task.snr_low_db must be below task.snr_high_db, got {self.snr_low_db} and "
                f"{self.snr_high_db}"
            )


class AudioTask(Task):
    """Base of the audio tasks (module docstring: shapes, sum convention, reference row).

    Subclasses set ``native_rate``, ``default_segment_s`` and ``metric_families`` and implement
    the sampling methods; scoring is shared.
    """

    modality: ClassVar[str] = "audio"
    config_class: ClassVar[type[TaskConfig]] = AudioTaskConfig
    native_rate: ClassVar[int]
    default_segment_s: ClassVar[float]
    #: metric families of :func:`tasks.audio_metrics.score_audio_mixture` this task reports
    metric_families: ClassVar[tuple[str, ...]] = ("si_sdr",)
    curve_metrics: ClassVar[tuple[str, ...]] = ("si_sdr", "si_sdri")
    #: reference indices averaged into a row (None: all sources)
    scored_sources: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, config, data_root) -> None:
        super().__init__(config, data_root)
        self.sample_rate = int(config.sample_rate or self.native_rate)
        segment_s = config.segment_s or self.default_segment_s
        self.segment = int(round(segment_s * self.sample_rate))
        self._eval: EvalSet | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(T,)``: the training segment length in samples."""
        return (self.segment,)

    def mixture_estimate(self, mixtures: Tensor) -> Tensor:
        """Every source estimated by the mixture itself, ``(N, T) -> (N, K, T)``: the SI-SDRi = 0
        reference row."""
        return mixtures[:, None].expand(-1, self.num_sources, -1).contiguous()

    def score(
        self,
        estimates: Tensor,
        sources: Tensor,
        mixtures: Tensor,
        lengths: Tensor | None = None,
        families: tuple[str, ...] | None = None,
    ) -> pd.DataFrame:
        """Per-mixture audio scores (``tasks/audio_metrics.py``), in ``self.workers`` processes.

        Args:
            estimates: ``(N, K, T)``.
            sources: ``(N, K, T)``.
            mixtures: ``(N, T)``.
            lengths: ``(N,)`` valid samples per item (zero-padded evaluation sets), or None.
            families: metric families to compute (default: the task's ``metric_families``;
                given, the items are scored in this process).

        Returns:
            One row per mixture: ``mixture`` and the task's metric columns (see
            :func:`tasks.audio_metrics.score_audio_mixture`), plus ``perm``.

        Raises:
            ValueError: shapes that do not match ``(N, K, T)`` / ``(N, T)``.
        """
        if estimates.shape != sources.shape or estimates.dim() != 3:
            raise ValueError(
                f"expected matching (N, K, T) tensors, got {tuple(estimates.shape)} and "
                f"{tuple(sources.shape)}"
            )
        if mixtures.shape != (sources.shape[0], sources.shape[2]):
            raise ValueError(f"expected (N, T) mixtures, got {tuple(mixtures.shape)}")
        est = estimates.detach().to("cpu", torch.float64).numpy()
        ref = sources.detach().to("cpu", torch.float64).numpy()
        mix = mixtures.detach().to("cpu", torch.float64).numpy()
        items = []
        for n in range(est.shape[0]):
            end = int(lengths[n]) if lengths is not None else est.shape[-1]
            items.append((est[n, :, :end], ref[n, :, :end], mix[n, :end]))
        rows = map_items(
            score_audio_mixture,
            items,
            self.workers if families is None else 1,
            sample_rate=self.sample_rate,
            families=self.metric_families if families is None else families,
            zero_mean=self.config.si_sdr_zero_mean,
            scored=self.scored_sources,
        )
        frame = pd.DataFrame(rows)
        frame.insert(0, "mixture", np.arange(len(rows)))
        return frame

    def curve_scores(
        self, estimates: Tensor, sources: Tensor, mixtures: Tensor, lengths: Tensor | None = None
    ) -> dict[str, float]:
        """SI-SDR and SI-SDRi (dB) only, in this process: a learning-curve point costs no
        PESQ, ESTOI or DNSMOS (see :meth:`tasks.base.Task.curve_scores`)."""
        scores = self.score(estimates, sources, mixtures, lengths, families=("si_sdr",))
        return {m: float(scores[m].mean()) for m in self.curve_metrics}

    def summarize(self, scores: pd.DataFrame) -> dict[str, dict[str, Any]]:
        """The SI-SDR variant and sample rate used (``settings``) and, where PESQ/ESTOI are
        scored, the number of sources and mixtures they failed on (``counts``; NaN items are
        left out of the means)."""
        counts: dict[str, Any] = {}
        for metric in ("pesq", "estoi"):
            if f"{metric}_failed" in scores:
                counts[f"{metric}_failed"] = int(scores[f"{metric}_failed"].sum())
                counts[f"{metric}_failed_items"] = int((scores[f"{metric}_failed"] > 0).sum())
        settings = {
            "si_sdr_zero_mean": bool(self.config.si_sdr_zero_mean),
            "sample_rate": self.sample_rate,
        }
        return {"counts": counts, "settings": settings}


# --------------------------------------------------------------------------------------------
# fsdd2mix
# --------------------------------------------------------------------------------------------

_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
_FSDD_HOW = (
    "Get the Free Spoken Digit Dataset (https://github.com/Jakobovski/free-spoken-digit-dataset) "
    "and place its recordings as <data-root>/fsdd/recordings/{digit}_{speaker}_{index}.wav "
    "(mono, 8 kHz). The data root comes from --data-root, else $BENCHMARK_DATA_ROOT."
)


@lru_cache(maxsize=4)
def load_fsdd(data_root: str, segment: int) -> dict[str, Any]:
    """Read every FSDD recording, fit it to ``segment`` samples and standardise it.

    Args:
        data_root: the data root holding ``fsdd/recordings/``.
        segment: samples per utterance (8,000 = 1 s at 8 kHz).

    Returns:
        ``{"train": (audio, speaker), "test": (audio, speaker), "speakers": [names]}`` with
        ``audio`` a ``(N, segment)`` float32 tensor and ``speaker`` an ``(N,)`` int64 tensor of
        indices into ``speakers``; test = takes 0-4, train = takes 5-49 (FSDD's split).

    Raises:
        DatasetNotFoundError: no recordings folder (the message gives the expected layout).
        AudioDataError: a corrupt or non-8 kHz file (named).
    """
    folder = Path(data_root).expanduser() / "fsdd" / "recordings"
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    parsed = [(f, _FSDD_NAME.match(f.name)) for f in files]
    parsed = [(f, m) for f, m in parsed if m]
    if not parsed:
        raise DatasetNotFoundError(
            f"fsdd2mix: no FSDD recordings found in {folder} (expected files "
            f"{{digit}}_{{speaker}}_{{index}}.wav). {_FSDD_HOW}"
        )
    speakers = sorted({m.group(2) for _f, m in parsed})
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for path, match in parsed:
        split = "test" if int(match.group(3)) < 5 else "train"
        audio = standardize(fit_length(read_audio(path, 8000).astype(np.float64), segment))
        splits[split][0].append(audio.astype(np.float32))
        splits[split][1].append(speakers.index(match.group(2)))
    out: dict[str, Any] = {"speakers": speakers}
    for split, (audio, spk) in splits.items():
        if len(set(spk)) < 2:
            raise DatasetNotFoundError(
                f"fsdd2mix: the {split} split in {folder} has utterances of fewer than two "
                f"speakers; two-speaker mixtures need at least two. {_FSDD_HOW}"
            )
        out[split] = (torch.from_numpy(np.stack(audio)), torch.tensor(spk, dtype=torch.int64))
    return out


class _SpeakerPool:
    """Utterances grouped by speaker, to draw rows of utterances from distinct speakers."""

    def __init__(self, audio: Tensor, speaker: Tensor) -> None:
        self.audio = audio
        self.num_speakers = int(speaker.max()) + 1
        groups = [torch.nonzero(speaker == s).flatten() for s in range(self.num_speakers)]
        self.counts = torch.tensor([len(g) for g in groups])
        present = self.counts > 0
        self.present = torch.nonzero(present).flatten()
        width = int(self.counts.max())
        self.table = torch.zeros(self.num_speakers, width, dtype=torch.int64)
        for s, g in enumerate(groups):
            self.table[s, : len(g)] = g

    def to(self, device: torch.device) -> _SpeakerPool:
        self.audio = self.audio.to(device)
        return self

    def draw(self, rows: int, cols: int, generator: torch.Generator) -> Tensor:
        """``(rows, cols)`` utterance indices, the speakers of a row all different: a random
        set of ``cols`` speakers per row (uniform), then an utterance of each uniformly."""
        if cols > len(self.present):
            raise ValueError(
                f"need {cols} distinct speakers per row, the pool has {len(self.present)}"
            )
        device = generator.device
        keys = torch.rand(rows, len(self.present), generator=generator, device=device)
        spk = self.present.to(device)[keys.argsort(dim=1)[:, :cols]]
        u = torch.rand(rows, cols, generator=generator, device=device)
        counts = self.counts.to(device)[spk]
        pick = (u * counts).long().clamp_max(counts - 1)
        return self.table.to(device)[spk, pick]

    def gather(self, idx: Tensor) -> Tensor:
        return self.audio[idx.to(self.audio.device)]


@register_task
class FsddMixTask(AudioTask):
    """Two-speaker mixtures of 1 s FSDD spoken digits at 8 kHz (SC09Mix protocol with FSDD;
    module docstring). Metrics: SI-SDR(i) (MixPIT/MixCycle Table I reports SI-SNRi) and
    narrow-band PESQ. ESTOI is not reported: it needs 384 ms of non-silent speech and a third
    of FSDD's digits are shorter (pystoi cannot score them)."""

    name = "fsdd2mix"
    display_name = "FSDD2Mix (SC09Mix protocol, 8 kHz)"
    native_rate = 8000
    default_segment_s = 1.0
    metric_families = ("si_sdr", "pesq")
    metrics: ClassVar[dict[str, str]] = {"si_sdri": "max", "si_sdr": "max", "pesq": "max"}

    def __init__(self, config, data_root) -> None:
        super().__init__(config, data_root)
        if self.sample_rate != self.native_rate:
            raise ValueError(
                f"fsdd2mix is 8 kHz audio: task.sample_rate must be 0 or 8000, got "
                f"{config.sample_rate}"
            )
        if config.eval_segment_s and config.eval_segment_s != (config.segment_s or 1.0):
            raise ValueError(
                "fsdd2mix evaluates on the training segment length: leave task.eval_segment_s "
                "at 0 or equal to task.segment_s"
            )
        data = load_fsdd(str(self.data_root), self.segment)
        self.speakers = data["speakers"]
        self.train = _SpeakerPool(*data["train"])
        self.test = _SpeakerPool(*data["test"])
        if self.num_sources > len(self.train.present):
            raise ValueError(
                f"fsdd2mix: K={self.num_sources} distinct speakers per mixture, FSDD has "
                f"{len(self.train.present)}"
            )

    def to(self, device: torch.device) -> FsddMixTask:
        self.device = torch.device(device)
        self.train.to(self.device)
        return self

    def sample_sources(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, K, T)`` standardised training utterances of K different speakers."""
        return self.train.gather(self.train.draw(batch_size, self.num_sources, generator))

    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, T)`` training mixtures ``m = sum_k x^(k)``."""
        return self.sample_sources(batch_size, generator).sum(dim=1)

    def sample_mixit_references(
        self, batch_size: int, generator: torch.Generator, single_source_prob: float = 0.5
    ) -> Tensor:
        """``(B, 2, T)`` reference mixtures: each holds one utterance with probability
        ``single_source_prob``, else K; all utterances of a row are of different speakers."""
        k = self.num_sources
        idx = self.train.draw(batch_size, 2 * k, generator)
        audio = self.train.gather(idx).reshape(batch_size, 2, k, self.segment)
        single = torch.rand(batch_size, 2, generator=generator, device=generator.device)
        keep = torch.ones(batch_size, 2, k, device=audio.device)
        keep[..., 1:] = (single >= single_source_prob).to(audio.device, keep.dtype)[..., None]
        return (audio * keep[..., None]).sum(dim=2)

    def eval_set(self) -> EvalSet:
        """``config.eval_mixtures`` test-split mixtures ``(N, T)`` and sources ``(N, K, T)``,
        drawn with ``config.seed`` (independent of method seeds)."""
        if self._eval is None:
            gen = torch.Generator().manual_seed(self.config.seed)
            idx = self.test.draw(self.config.eval_mixtures, self.num_sources, gen)
            sources = self.test.gather(idx).to(self.device)
            self._eval = EvalSet(mixtures=sources.sum(dim=1), sources=sources)
        return self._eval
