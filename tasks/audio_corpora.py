"""Audio tasks on the real corpora: ``libri2mix``, ``fuss`` and ``libri_fuss``.

All three follow the datasets' own on-disk layouts under the data root, index their files
(metadata CSV, list files, folder scans) and read audio lazily with soundfile, so multi-GB
corpora are usable: a training batch reads only its B segments; only the evaluation set is
held in memory. Conventions (sum convention, ``(T,)`` samples, the mixture reference row,
scoring) are those of :class:`tasks.audio.AudioTask`.

Layouts (``<root>`` is the data root):

- ``libri2mix`` (Cosentino et al. 2020): ``<root>/Libri2Mix/wav{8k,16k}/{min,max}/<split>/
  {mix_clean,s1,s2}/<mixture_ID>.wav`` and ``<root>/Libri2Mix/wav{8k,16k}/{min,max}/metadata/
  mixture_<split>_mix_clean.csv`` (columns ``mixture_ID,mixture_path,source_1_path,
  source_2_path,length``). A CSV path is used where it exists (absolute, or relative to the
  ``wav*/{min,max}`` folder); otherwise the layout path of its ``mixture_ID``. SURF §5.2:
  16 kHz, training on ``train-360`` mixtures only, evaluation on the 3,000 ``test`` mixtures.
- ``fuss`` (Wisdom et al. 2021): ``<root>/fuss_dev/ssdata/{train,validation,eval}/
  exampleNNNNN.wav`` with sources in ``exampleNNNNN_sources/{background0_sound.wav,
  foregroundN_sound.wav}`` and the list files ``<root>/fuss_dev/ssdata/{split}_example_list.txt``
  (one example per line, tab-separated: mixture path, then its source paths, relative to
  ``ssdata``). 10 s at 16 kHz, 1-4 sources, padded to 4 with silent sources.
- ``libri_fuss`` (SURF §5.2, Table 3): LibriSpeech ``test-clean`` utterances
  (``<root>/LibriSpeech/test-clean/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``) mixed with
  the background source of each FUSS ``eval`` example (examples without a background are
  skipped; the utterance centre-padded to 10 s, or a 10 s excerpt at a seeded random offset
  when longer) at an SNR uniform in (``task.snr_low_db``, ``task.snr_high_db``) = (-5, 15) dB,
  then renormalised so that the mixture peak is 0.9 (in (-1, 1)); the same gain is applied to
  both sources so that the mixture stays their sum. Sources: (speech, background); fixed by the
  task seed. Training mixtures (the paper trains on AudioSet, which is not available here) are
  made on the fly with the same recipe from LibriSpeech ``task.train_split`` (default
  ``train-clean-100``, same folder layout) and FUSS ``train`` backgrounds.

Errors: a missing corpus raises :class:`DatasetNotFoundError` naming the expected layout and
the folder searched; a wrong sample rate, corrupt file or a CSV/list line pointing to a missing
file raises :class:`tasks.audio.AudioDataError` naming the file (and the line).
"""

from __future__ import annotations

import csv
import math
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from benchmark.registry import register_task
from tasks.audio import AudioDataError, AudioTask, fit_length, read_audio
from tasks.audio_metrics import map_items
from tasks.base import DatasetNotFoundError, EvalSet
from tasks.fuss_metrics import fuss_row, fuss_summary

__all__ = ["FussTask", "Libri2MixTask", "LibriFussTask", "read_segment"]

#: metric columns of the speech tasks (SURF Tables 3 and 4), all "higher is better"
SPEECH_METRICS: dict[str, str] = {
    "si_sdr": "max",
    "si_sdri": "max",
    "estoi": "max",
    "pesq": "max",
    "dnsmos": "max",
}

_DATA_ROOT_HINT = "The data root comes from --data-root, else $BENCHMARK_DATA_ROOT."


def read_segment(path: Path, sample_rate: int, start: int, length: int) -> np.ndarray:
    """``length`` samples of ``path`` from ``start`` (zero-padded past the end), float32.

    Raises:
        AudioDataError: see :func:`tasks.audio.read_audio`.
    """
    audio = read_audio(path, sample_rate, start=start, frames=length)
    if audio.shape[0] < length:
        audio = np.pad(audio, (0, length - audio.shape[0]))
    return audio


def _draw_offsets(lengths: Tensor, segment: int, generator: torch.Generator) -> list[int]:
    """Uniform segment starts in ``[0, length - segment]`` (0 for shorter files)."""
    u = torch.rand(len(lengths), generator=generator, device=generator.device).cpu().double()
    room = (lengths.double() - segment + 1).clamp_min(1)
    return (u * room).floor().long().tolist()


def _rows(count: int, batch: int, generator: torch.Generator) -> list[int]:
    return torch.randint(count, (batch,), generator=generator, device=generator.device).tolist()


def _distinct_pairs(count: int, batch: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``batch`` pairs of distinct indices in ``range(count)``."""
    first = torch.randint(count, (batch,), generator=generator, device=generator.device)
    shift = torch.randint(1, count, (batch,), generator=generator, device=generator.device)
    second = (first + shift) % count
    return list(zip(first.tolist(), second.tolist(), strict=True))


def _eval_rows(count: int, wanted: int, seed: int) -> list[int]:
    """All rows in order when ``wanted >= count``, else a sorted subset drawn with ``seed``."""
    if wanted >= count:
        return list(range(count))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=gen)[:wanted].tolist())


def _stack_padded(items: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Zero-pad ``(..., T_i)`` arrays to the longest; return the stack and the lengths."""
    longest = max(item.shape[-1] for item in items)
    out = np.zeros((len(items), *items[0].shape[:-1], longest), dtype=np.float32)
    for n, item in enumerate(items):
        out[n, ..., : item.shape[-1]] = item
    lengths = torch.tensor([item.shape[-1] for item in items], dtype=torch.int64)
    return torch.from_numpy(out), lengths


# --------------------------------------------------------------------------------------------
# libri2mix
# --------------------------------------------------------------------------------------------

_LIBRIMIX_COLUMNS = ("mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length")


def _librimix_records(
    reader: csv.DictReader, csv_path: Path, base: Path, split: str, fix: str
) -> list[dict[str, Any]]:
    """The rows of a LibriMix metadata CSV as resolved paths and lengths (see
    :func:`_librimix_index`)."""
    missing = set(_LIBRIMIX_COLUMNS) - set(reader.fieldnames or [])
    if missing:
        raise AudioDataError(
            f"{csv_path}: missing columns {sorted(missing)}; expected {list(_LIBRIMIX_COLUMNS)}"
        )
    records = []
    for row in reader:
        line = reader.line_num
        empty = [c for c in _LIBRIMIX_COLUMNS if not (row.get(c) or "").strip()]
        if empty:
            raise AudioDataError(
                f"{csv_path}, line {line}: no value for {', '.join(empty)} (a cut or "
                f"malformed line; expected {len(_LIBRIMIX_COLUMNS)} comma-separated fields "
                f"{', '.join(_LIBRIMIX_COLUMNS)}); {fix}"
            )
        record: dict[str, Any] = {}
        for column, folder, key in (
            ("mixture_path", "mix_clean", "mixture"),
            ("source_1_path", "s1", "s1"),
            ("source_2_path", "s2", "s2"),
        ):
            layout = base / split / folder / f"{row['mixture_ID']}.wav"
            listed = Path(row[column])
            listed = listed if listed.is_absolute() else base / listed
            if layout.is_file():
                record[key] = layout
            elif listed.is_file():
                record[key] = listed
            else:
                raise AudioDataError(
                    f"{csv_path}, line {line}: {column} file not found: {row[column]} "
                    f"(also looked for {layout})"
                )
        try:
            record["length"] = int(float(row["length"]))
        except ValueError:
            raise AudioDataError(
                f"{csv_path}, line {line}: length {row['length']!r} is not a number; {fix}"
            ) from None
        records.append(record)
    return records


def _librimix_index(base: Path, split: str) -> pd.DataFrame:
    """Index one Libri2Mix split from its metadata CSV: ``mixture``, ``s1``, ``s2`` (resolved
    paths) and ``length`` (samples), one row per mixture.

    Raises:
        DatasetNotFoundError: no metadata CSV.
        AudioDataError: a malformed CSV or a line whose file exists neither at the CSV path nor
            at the layout path (the message names the CSV line and both paths).
    """
    csv_path = base / "metadata" / f"mixture_{split}_mix_clean.csv"
    if not csv_path.is_file():
        raise DatasetNotFoundError(
            f"libri2mix: metadata file {csv_path} not found. Expected the LibriMix layout "
            "<root>/Libri2Mix/wav{8k,16k}/{min,max}/<split>/{mix_clean,s1,s2}/<mixture_ID>.wav "
            "with <root>/Libri2Mix/wav{8k,16k}/{min,max}/metadata/mixture_<split>_mix_clean.csv "
            "(generate it with the LibriMix scripts, https://github.com/JorisCos/LibriMix). "
            f"Splits: train-360, train-100, dev, test. {_DATA_ROOT_HINT}"
        )
    fix = "regenerate the metadata with the LibriMix scripts (https://github.com/JorisCos/LibriMix)"
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            records = _librimix_records(csv.DictReader(handle), csv_path, base, split, fix)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AudioDataError(f"{csv_path}: not a readable CSV file ({exc}); {fix}") from None
    if not records:
        raise AudioDataError(f"{csv_path}: no mixtures listed")
    return pd.DataFrame(records)


@register_task
class Libri2MixTask(AudioTask):
    """Libri2Mix (module docstring): unsupervised methods see ``mix_clean`` mixtures of the
    training split only; sources ``s1``, ``s2`` for the evaluation set and the supervised
    references. Training draws a random ``task.segment_s`` (default 3 s) segment of a random
    mixture; evaluation uses full-length test mixtures (zero-padded to the longest, scored on
    their true length) unless ``task.eval_segment_s`` crops them to their first seconds.
    Memory of the full-length set: about N x 3 x longest x 4 bytes (bound it with
    ``task.eval_segment_s`` on small machines)."""

    name = "libri2mix"
    display_name = "Libri2Mix (2 Source Mixtures)"
    native_rate = 16_000
    default_segment_s = 3.0
    metric_families = ("si_sdr", "estoi", "pesq", "dnsmos")
    metrics: ClassVar[dict[str, str]] = SPEECH_METRICS

    def __init__(self, config, data_root) -> None:
        super().__init__(config, data_root)
        if self.sample_rate not in (8000, 16000):
            raise ValueError(
                f"libri2mix exists at 8000 and 16000 Hz (wav8k, wav16k): task.sample_rate must "
                f"be one of them, got {self.sample_rate}"
            )
        if self.num_sources != 2:
            raise ValueError(
                f"libri2mix has K = 2 sources, got task.num_sources={self.num_sources}"
            )
        self.base = (
            self.data_root / "Libri2Mix" / f"wav{self.sample_rate // 1000}k" / config.librimix_mode
        )
        self.train_split = config.train_split or "train-360"
        self.eval_split = config.eval_split or "test"

    @cached_property
    def train_index(self) -> pd.DataFrame:
        """The training split's index (built on first use: evaluation needs only its split)."""
        return _librimix_index(self.base, self.train_split)

    def check_data(self, train: bool = True) -> None:
        """Index the evaluation split (and the training split): metadata CSVs and the
        existence of every file they list; no audio is read."""
        _librimix_index(self.base, self.eval_split)
        if train:
            self.train_index  # noqa: B018 - builds (and caches) the index

    @cached_property
    def _lengths(self) -> Tensor:
        return torch.tensor(self.train_index["length"].to_numpy())

    def _read_rows(self, rows: list[int], offsets: list[int], keys: tuple[str, ...]) -> Tensor:
        out = np.stack(
            [
                np.stack(
                    [
                        read_segment(self.train_index.at[r, k], self.sample_rate, o, self.segment)
                        for k in keys
                    ]
                )
                for r, o in zip(rows, offsets, strict=True)
            ]
        )
        return torch.from_numpy(out).to(self.device)

    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, T)`` random segments of random training mixtures (``mix_clean``)."""
        rows = _rows(len(self.train_index), batch_size, generator)
        offsets = _draw_offsets(self._lengths[rows], self.segment, generator)
        return self._read_rows(rows, offsets, ("mixture",))[:, 0]

    def sample_mixit_references(
        self, batch_size: int, generator: torch.Generator, single_source_prob: float = 0.5
    ) -> Tensor:
        """``(B, 2, T)`` two different training mixtures per row (no single sources exist for
        unsupervised training, so ``single_source_prob`` is unused)."""
        pairs = _distinct_pairs(len(self.train_index), batch_size, generator)
        rows = [r for pair in pairs for r in pair]
        offsets = _draw_offsets(self._lengths[rows], self.segment, generator)
        return self._read_rows(rows, offsets, ("mixture",)).reshape(batch_size, 2, self.segment)

    def sample_sources(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, 2, T)`` aligned ``s1``, ``s2`` segments (supervised references only)."""
        rows = _rows(len(self.train_index), batch_size, generator)
        offsets = _draw_offsets(self._lengths[rows], self.segment, generator)
        return self._read_rows(rows, offsets, ("s1", "s2"))

    def eval_set(self) -> EvalSet:
        """``task.eval_mixtures`` mixtures of the evaluation split (all 3,000 of ``test`` when
        at least that many; else a subset drawn with the task seed), with their sources."""
        if self._eval is None:
            index = _librimix_index(self.base, self.eval_split)
            rows = _eval_rows(len(index), self.config.eval_mixtures, self.config.seed)
            crop = int(round(self.config.eval_segment_s * self.sample_rate))
            items = []
            for r in rows:
                signals = [
                    read_audio(index.at[r, k], self.sample_rate) for k in ("mixture", "s1", "s2")
                ]
                size = min(len(s) for s in signals)
                if crop:
                    size = min(size, crop)
                items.append(np.stack([s[:size] for s in signals]))
            stacked, lengths = _stack_padded(items)
            self._eval = EvalSet(
                mixtures=stacked[:, 0].contiguous(),
                sources=stacked[:, 1:].contiguous(),
                lengths=None if bool((lengths == stacked.shape[-1]).all()) else lengths,
            )
        return self._eval


# --------------------------------------------------------------------------------------------
# fuss
# --------------------------------------------------------------------------------------------

FUSS_RATE = 16_000
FUSS_SLOTS = 4


def _fuss_dir(root: Path) -> Path:
    return root / "fuss_dev" / "ssdata"


def _fuss_index(root: Path, split: str) -> list[tuple[Path, list[Path]]]:
    """``[(mixture path, [source paths])]`` of one FUSS split from its list file.

    Raises:
        DatasetNotFoundError: no list file.
        AudioDataError: a line naming a missing file, or with more than 4 sources.
    """
    folder = _fuss_dir(root)
    listing = folder / f"{split}_example_list.txt"
    if not listing.is_file():
        raise DatasetNotFoundError(
            f"FUSS: list file {listing} not found. Expected the FUSS layout "
            "<root>/fuss_dev/ssdata/{train,validation,eval}/exampleNNNNN.wav with sources in "
            "exampleNNNNN_sources/{background0_sound.wav,foregroundN_sound.wav} and the list files "
            "<root>/fuss_dev/ssdata/{train,validation,eval}_example_list.txt (download FUSS_ssdata "
            f"from https://zenodo.org/record/3694384). {_DATA_ROOT_HINT}"
        )
    fix = "re-extract FUSS_ssdata (https://zenodo.org/record/3694384)"
    try:
        text = listing.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AudioDataError(f"{listing}: not a text file ({exc}); {fix}") from None
    examples = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        paths = []
        for name in fields:
            if not name.strip():
                raise AudioDataError(
                    f"{listing}, line {line_no}: empty field (expected tab-separated paths: "
                    f"the mixture, then its sources); {fix}"
                )
            path = Path(name) if Path(name).is_absolute() else folder / name
            if not path.is_file():
                raise AudioDataError(f"{listing}, line {line_no}: file not found: {name}")
            paths.append(path)
        if not 2 <= len(paths) <= FUSS_SLOTS + 1:
            raise AudioDataError(
                f"{listing}, line {line_no}: expected a mixture and 1-4 sources, got "
                f"{len(paths)} paths"
            )
        examples.append((paths[0], paths[1:]))
    if not examples:
        raise AudioDataError(f"{listing}: no examples listed")
    return examples


@register_task
class FussTask(AudioTask):
    """FUSS (module docstring): 10 s at 16 kHz, 1-4 sources padded with silence to K = 4
    slots (``task.num_sources`` is not used: K is always 4). Unsupervised methods train on
    ``train`` mixtures only; evaluation on the ``eval`` split (1,000 examples) with the FUSS
    metrics (``tasks/fuss_metrics.py``): the table numbers in ``metrics.json`` are the pooled
    values of :func:`tasks.fuss_metrics.fuss_summary`, the per-mixture rows in the parquet."""

    name = "fuss"
    display_name = "FUSS (1-4 Source Mixtures)"
    native_rate = FUSS_RATE
    default_segment_s = 10.0
    metrics: ClassVar[dict[str, str]] = {
        "fuss_1s": "max",
        "fuss_2si": "max",
        "fuss_3si": "max",
        "fuss_4si": "max",
        "fuss_msi": "max",
        "under": "min",
        "equal": "max",
        "over": "min",
    }

    def __init__(self, config, data_root) -> None:
        super().__init__(config, data_root)
        if self.sample_rate != FUSS_RATE:
            raise ValueError("FUSS is 16 kHz: task.sample_rate must be 0 or 16000")
        self.train_split = config.train_split or "train"
        self.eval_split = config.eval_split or "eval"
        self._full = FUSS_RATE * 10

    @cached_property
    def train_examples(self) -> list[tuple[Path, list[Path]]]:
        """The training split's examples (indexed on first use)."""
        return _fuss_index(self.data_root, self.train_split)

    def check_data(self, train: bool = True) -> None:
        """Index the evaluation split (and the training split) from their list files, checking
        that every listed file exists; no audio is read."""
        _fuss_index(self.data_root, self.eval_split)
        if train:
            self.train_examples  # noqa: B018 - builds (and caches) the index

    @property
    def num_sources(self) -> int:
        """K = 4 reference slots (FUSS's maximum number of sources)."""
        return FUSS_SLOTS

    def _offsets(self, count: int, generator: torch.Generator) -> list[int]:
        return _draw_offsets(torch.full((count,), self._full), self.segment, generator)

    def _read_mixtures(self, rows: list[int], offsets: list[int]) -> Tensor:
        audio = [
            read_segment(self.train_examples[r][0], FUSS_RATE, o, self.segment)
            for r, o in zip(rows, offsets, strict=True)
        ]
        return torch.from_numpy(np.stack(audio)).to(self.device)

    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, T)`` training mixtures (segments of ``task.segment_s``, default the full 10 s)."""
        rows = _rows(len(self.train_examples), batch_size, generator)
        return self._read_mixtures(rows, self._offsets(batch_size, generator))

    def sample_mixit_references(
        self, batch_size: int, generator: torch.Generator, single_source_prob: float = 0.5
    ) -> Tensor:
        """``(B, 2, T)`` two different training mixtures (the FUSS MixIT recipe: mixtures of
        two FUSS mixtures; ``single_source_prob`` is unused)."""
        pairs = _distinct_pairs(len(self.train_examples), batch_size, generator)
        rows = [r for pair in pairs for r in pair]
        mixtures = self._read_mixtures(rows, self._offsets(len(rows), generator))
        return mixtures.reshape(batch_size, 2, self.segment)

    def _sources(self, paths: list[Path], offset: int, length: int) -> np.ndarray:
        out = np.zeros((FUSS_SLOTS, length), dtype=np.float32)
        for slot, path in enumerate(paths):
            out[slot] = read_segment(path, FUSS_RATE, offset, length)
        return out

    def sample_sources(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, 4, T)`` training sources, padded with silent slots (supervised only)."""
        rows = _rows(len(self.train_examples), batch_size, generator)
        offsets = self._offsets(batch_size, generator)
        audio = [
            self._sources(self.train_examples[r][1], o, self.segment)
            for r, o in zip(rows, offsets, strict=True)
        ]
        return torch.from_numpy(np.stack(audio)).to(self.device)

    def eval_set(self) -> EvalSet:
        """``task.eval_mixtures`` examples of the ``eval`` split (all when at least that many,
        else a subset drawn with the task seed), 10 s (or ``task.eval_segment_s``), sources
        padded to 4 slots; mixtures are the files on disk."""
        if self._eval is None:
            examples = _fuss_index(self.data_root, self.eval_split)
            rows = _eval_rows(len(examples), self.config.eval_mixtures, self.config.seed)
            length = int(round((self.config.eval_segment_s or 10.0) * FUSS_RATE))
            mixtures = np.stack([read_segment(examples[r][0], FUSS_RATE, 0, length) for r in rows])
            sources = np.stack([self._sources(examples[r][1], 0, length) for r in rows])
            self._eval = EvalSet(
                mixtures=torch.from_numpy(mixtures), sources=torch.from_numpy(sources)
            )
        return self._eval

    def score(
        self, estimates: Tensor, sources: Tensor, mixtures: Tensor, lengths: Tensor | None = None
    ) -> pd.DataFrame:
        """Per-example FUSS rows (:func:`tasks.fuss_metrics.fuss_row`), ``(N, 4, T)`` inputs;
        the improvement baseline is the sum of the references (Wisdom et al. 2021)."""
        if estimates.shape != sources.shape or estimates.dim() != 3:
            raise ValueError(
                f"expected matching (N, 4, T) tensors, got {tuple(estimates.shape)} and "
                f"{tuple(sources.shape)}"
            )
        est = estimates.detach().to("cpu", torch.float64).numpy()
        ref = sources.detach().to("cpu", torch.float64).numpy()
        items = [(est[n], ref[n], ref[n].sum(0)) for n in range(est.shape[0])]
        frame = pd.DataFrame(map_items(fuss_row, items, self.workers))
        frame.insert(0, "mixture", np.arange(len(frame)))
        return frame

    def curve_scores(
        self, estimates: Tensor, sources: Tensor, mixtures: Tensor, lengths: Tensor | None = None
    ) -> dict[str, float]:
        """The pooled FUSS numbers of the curve's mixtures: MSi and 1S (dB), NaN when none of
        them has that many sources (see :meth:`tasks.base.Task.curve_scores`)."""
        metrics = self.summarize(self.score(estimates, sources, mixtures))["metrics"]
        return {m: float(metrics[m]) for m in ("fuss_msi", "fuss_1s")}

    def summarize(self, scores: pd.DataFrame) -> dict[str, dict[str, Any]]:
        """The pooled FUSS numbers (:func:`tasks.fuss_metrics.fuss_summary`): they replace the
        per-mixture means in ``metrics.json`` (``metrics``), with their std (``spread``) and
        number of pooled sources and skipped examples (``counts``)."""
        pooled = fuss_summary(scores)
        metrics, spread, counts = {}, {}, {"fuss_skipped": pooled.pop("fuss_skipped")}
        for key, value in pooled.items():
            if key.endswith("_std"):
                spread[key[: -len("_std")]] = value
            elif key.endswith("_n"):
                counts[key] = value
            else:
                metrics[key] = value
        return {
            "metrics": metrics,
            "spread": spread,
            "counts": counts,
            "settings": {"sample_rate": self.sample_rate},
        }


# --------------------------------------------------------------------------------------------
# libri_fuss
# --------------------------------------------------------------------------------------------

LIBRI_FUSS_PEAK = 0.9


def _librispeech_files(root: Path, split: str) -> list[Path]:
    folder = root / "LibriSpeech" / split
    files = sorted(folder.glob("*/*/*-*-*.flac")) if folder.is_dir() else []
    if not files:
        raise DatasetNotFoundError(
            f"libri_fuss: no LibriSpeech utterances found in {folder}. Expected "
            f"<root>/LibriSpeech/{split}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac (16 kHz; "
            f"https://www.openslr.org/12). {_DATA_ROOT_HINT}"
        )
    return files


def _backgrounds(root: Path, split: str) -> list[Path]:
    found = [
        path
        for _mix, sources in _fuss_index(root, split)
        for path in sources
        if path.name.startswith("background")
    ]
    if not found:
        raise DatasetNotFoundError(
            f"libri_fuss: no background sources (background0_sound.wav) in the FUSS {split} "
            f"list {_fuss_dir(root) / f'{split}_example_list.txt'}"
        )
    return found


def mix_at_snr(
    speech: np.ndarray, background: np.ndarray, snr_db: float, peak: float = LIBRI_FUSS_PEAK
) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``background`` to ``snr_db`` below ``speech`` (power over the segment), then scale
    both so that their sum peaks at ``peak``. Returns the two ``(T,)`` sources (float64);
    the mixture is their sum. A silent background is left silent."""
    speech = np.asarray(speech, dtype=np.float64)
    background = np.asarray(background, dtype=np.float64)
    p_speech = float(np.mean(speech**2))
    p_back = float(np.mean(background**2))
    if p_back > 0:
        background = background * math.sqrt(p_speech / (p_back * 10 ** (snr_db / 10)))
    top = float(np.abs(speech + background).max())
    gain = peak / top if top > 0 else 1.0
    return speech * gain, background * gain


@register_task
class LibriFussTask(AudioTask):
    """LibriSpeech test-clean + FUSS eval backgrounds (SURF's enhancement set; module
    docstring): K = 2 sources (speech, background), 10 s at 16 kHz. The permutation is chosen
    by SI-SDR over both sources; every metric is then reported for the **speech** source (an
    enhancement score; PESQ, ESTOI and DNSMOS of a background are meaningless)."""

    name = "libri_fuss"
    display_name = "LibriSpeech + FUSS (Speech Enhancement)"
    native_rate = 16_000
    default_segment_s = 10.0
    metric_families = ("si_sdr", "estoi", "pesq", "dnsmos")
    scored_sources = (0,)
    metrics: ClassVar[dict[str, str]] = SPEECH_METRICS

    def __init__(self, config, data_root) -> None:
        super().__init__(config, data_root)
        if self.sample_rate != 16_000:
            raise ValueError("libri_fuss is 16 kHz: task.sample_rate must be 0 or 16000")
        if self.num_sources != 2:
            raise ValueError(
                f"libri_fuss has K = 2 sources (speech, background), got "
                f"task.num_sources={self.num_sources}"
            )
        self.train_split = config.train_split or "train-clean-100"

    @cached_property
    def train_speech(self) -> list[Path]:
        """Training utterances (LibriSpeech ``task.train_split``; indexed on first use)."""
        return _librispeech_files(self.data_root, self.train_split)

    @cached_property
    def train_backgrounds(self) -> list[Path]:
        """Training backgrounds (FUSS ``train``; indexed on first use)."""
        return _backgrounds(self.data_root, "train")

    def check_data(self, train: bool = True) -> None:
        """List the LibriSpeech utterances and index the FUSS backgrounds of the evaluation
        (and training) sets; no audio is read."""
        _librispeech_files(self.data_root, "test-clean")
        _backgrounds(self.data_root, self.config.eval_split or "eval")
        if train:
            self.train_speech  # noqa: B018 - lists (and caches) the files
            self.train_backgrounds  # noqa: B018

    def _make(
        self, speech: Path, background: Path, snr_db: float, offset: int, length: int
    ) -> np.ndarray:
        """``(2, length)`` (speech, background): the utterance centre-fit to the segment
        (cropped at ``offset`` when longer), the background's first ``length`` samples."""
        utterance = read_audio(speech, 16_000)
        if len(utterance) > length:
            utterance = utterance[offset : offset + length]
        utterance = fit_length(utterance, length)
        back = read_segment(background, 16_000, 0, length)
        return np.stack(mix_at_snr(utterance, back, snr_db)).astype(np.float32)

    def _draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        device = generator.device
        s_idx = _rows(len(self.train_speech), batch_size, generator)
        b_idx = _rows(len(self.train_backgrounds), batch_size, generator)
        low, high = self.config.snr_low_db, self.config.snr_high_db
        snrs = low + (high - low) * torch.rand(batch_size, generator=generator, device=device)
        u = torch.rand(batch_size, generator=generator, device=device).tolist()
        out = []
        for n in range(batch_size):
            path = self.train_speech[s_idx[n]]
            frames = _frames(path)
            offset = int(u[n] * max(frames - self.segment + 1, 1))
            out.append(
                self._make(
                    path, self.train_backgrounds[b_idx[n]], snrs[n].item(), offset, self.segment
                )
            )
        return torch.from_numpy(np.stack(out)).to(self.device)

    def sample_sources(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, 2, T)`` (speech, background) training pairs (supervised references only)."""
        return self._draw(batch_size, generator)

    def sample_mixtures(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(B, T)`` training mixtures ``speech + background``."""
        return self._draw(batch_size, generator).sum(1)

    def sample_mixit_references(
        self, batch_size: int, generator: torch.Generator, single_source_prob: float = 0.5
    ) -> Tensor:
        """``(B, 2, T)`` two independent training mixtures (``single_source_prob`` unused)."""
        return self._draw(2 * batch_size, generator).sum(1).reshape(batch_size, 2, -1)

    def eval_set(self) -> EvalSet:
        """One mixture per FUSS ``eval`` background (up to ``task.eval_mixtures``, in list
        order): a test-clean utterance drawn without replacement (with replacement if there are
        fewer utterances) and an SNR, all from the task seed."""
        if self._eval is None:
            speech = _librispeech_files(self.data_root, "test-clean")
            backgrounds = _backgrounds(self.data_root, self.config.eval_split or "eval")
            count = min(len(backgrounds), self.config.eval_mixtures)
            gen = torch.Generator().manual_seed(self.config.seed)
            if len(speech) >= count:
                picks = torch.randperm(len(speech), generator=gen)[:count].tolist()
            else:
                picks = torch.randint(len(speech), (count,), generator=gen).tolist()
            low, high = self.config.snr_low_db, self.config.snr_high_db
            snrs = (low + (high - low) * torch.rand(count, generator=gen)).tolist()
            u = torch.rand(count, generator=gen).tolist()
            length = int(round((self.config.eval_segment_s or 10.0) * 16_000))
            items = []
            for n in range(count):
                frames = _frames(speech[picks[n]])
                offset = int(u[n] * max(frames - length + 1, 1))
                items.append(self._make(speech[picks[n]], backgrounds[n], snrs[n], offset, length))
            sources = torch.from_numpy(np.stack(items))
            self._eval = EvalSet(mixtures=sources.sum(1), sources=sources)
        return self._eval


def _frames(path: Path) -> int:
    import soundfile as sf

    try:
        return int(sf.info(str(path)).frames)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioDataError(f"{path}: cannot read audio ({exc})") from None
