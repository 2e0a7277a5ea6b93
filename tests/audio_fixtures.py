"""Small audio corpora in the real on-disk layouts, built from real FSDD speech, for tests:
``make_libri2mix`` (LibriMix folders + metadata CSVs), ``make_fuss`` (FUSS ssdata folders + list
files), ``make_librispeech`` (LibriSpeech FLAC folders). Import with ``from audio_fixtures
import make_fuss`` from a test module (pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
from torchaudio.functional import resample

from tasks.audio import load_fsdd

__all__ = ["make_fuss", "make_libri2mix", "make_librispeech"]


def _speech(data_root: Path, seconds: float, rate: int, seed: int) -> np.ndarray:
    """Real speech: FSDD training utterances back to back, ``seconds`` long, peak 0.3."""
    audio = load_fsdd(str(data_root), 8000)["train"][0]
    rng = np.random.default_rng(seed)
    need = int(seconds * 8000) // 8000 + 1
    clip = audio[rng.choice(len(audio), need, replace=False)].reshape(-1).double()
    if rate != 8000:
        clip = resample(clip, 8000, rate)
    clip = clip[: int(seconds * rate)].numpy()
    return 0.3 * clip / np.abs(clip).max()


def make_libri2mix(root: Path, data_root: Path, rate: int = 8000) -> Path:
    """``<root>/Libri2Mix/wav8k/min/{train-360,test}`` with metadata CSVs. The train CSV lists
    absolute paths of another machine (resolved through the layout); the test CSV relative
    paths; lengths differ so that full-length evaluation pads."""
    base = root / "Libri2Mix" / f"wav{rate // 1000}k" / "min"
    for split, count, seconds in (("train-360", 3, [2.0, 2.5, 3.0]), ("test", 3, [9.2, 9.6, 9.4])):
        (base / "metadata").mkdir(parents=True, exist_ok=True)
        rows = []
        for n in range(count):
            mix_id = f"{100 + n}-2000-000{n}_{200 + n}-3000-000{n}"
            s1 = _speech(data_root, seconds[n], rate, seed=10 * n + len(split))
            s2 = _speech(data_root, seconds[n], rate, seed=10 * n + len(split) + 1)
            paths = {}
            for folder, audio in (("mix_clean", s1 + s2), ("s1", s1), ("s2", s2)):
                path = base / split / folder / f"{mix_id}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, audio, rate, subtype="FLOAT")
                paths[folder] = (
                    f"/elsewhere/LibriMix/{split}/{folder}/{mix_id}.wav"
                    if split != "test"
                    else f"{split}/{folder}/{mix_id}.wav"
                )
            rows.append([mix_id, paths["mix_clean"], paths["s1"], paths["s2"], len(s1)])
        with open(base / "metadata" / f"mixture_{split}_mix_clean.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]
            )
            writer.writerows(rows)
    return base


def make_fuss(root: Path, data_root: Path, counts=(("train", 3), ("eval", 3))) -> Path:
    """``<root>/fuss_dev/ssdata/{train,eval}`` with 1-3 sources per example and list files."""
    folder = root / "fuss_dev" / "ssdata"
    rng = np.random.default_rng(0)
    for split, count in counts:
        lines = []
        for n in range(count):
            name = f"example{n:05d}"
            src_dir = folder / split / f"{name}_sources"
            src_dir.mkdir(parents=True, exist_ok=True)
            sources = [0.05 * rng.standard_normal(160_000)]  # background
            names = ["background0_sound.wav"]
            for k in range(n % 3):  # 0, 1, 2 foreground sources
                sources.append(_speech(data_root, 10.0, 16_000, seed=100 * n + k))
                names.append(f"foreground{k}_sound.wav")
            for src, src_name in zip(sources, names, strict=True):
                sf.write(src_dir / src_name, src, 16_000, subtype="FLOAT")
            sf.write(folder / split / f"{name}.wav", np.sum(sources, 0), 16_000, subtype="FLOAT")
            lines.append(
                "\t".join([f"{split}/{name}.wav"] + [f"{split}/{name}_sources/{s}" for s in names])
            )
        (folder / f"{split}_example_list.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_librispeech(root: Path, data_root: Path, split: str, count: int) -> None:
    for n in range(count):
        spk, chapter = 1000 + n % 2, 20 + n
        path = root / "LibriSpeech" / split / str(spk) / str(chapter)
        path.mkdir(parents=True, exist_ok=True)
        audio = _speech(data_root, 6.0 + 3 * (n % 3), 16_000, seed=500 + n)
        sf.write(path / f"{spk}-{chapter}-{n:04d}.flac", audio, 16_000)
