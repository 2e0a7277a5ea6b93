"""Results store: one folder per run, addressed by the hash of its resolved config.

Layout under the results directory::

    runs/<task>/<method>/<hash>/
        config.json      resolved RunConfig (+ hash, sections)
        status.json      {"state": pending|running|done|failed|diverged|interrupted, ...}
        metrics.json     mean scores over the evaluation set + counts + timings
        scores.parquet   per-mixture scores
        curve.csv        training curve (step, loss, ...)
        checkpoint.pt    latest training checkpoint (resume point)
        model.pt         final network weights (teachers are loaded from here)
        meta.json        git commit, package versions, device, host, wall times
        log.txt          the run's log

Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a reader never sees a half-written file and a killed writer loses nothing
that was already written.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

__all__ = [
    "FINISHED",
    "CorruptStoreFile",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_parquet",
    "iter_run_dirs",
    "read_json",
    "read_status",
    "run_dir_for",
    "write_status",
]

#: terminal states
FINISHED = ("done", "failed", "diverged")

#: permission bits of every file the store writes: readable by group and others (results folders
#: are shared on clusters), minus what the process umask removes
_FILE_MODE = 0o666


class CorruptStoreFile(ValueError):
    """A file of the results store cannot be parsed (truncated or hand-edited).

    Attributes:
        path: the file.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"corrupt results file {self.path} ({reason}); delete it, or the run folder "
            f"{self.path.parent}, and `run` recomputes what is missing"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_dir_for(results_dir: Path, task: str, method: str, run_hash: str) -> Path:
    """Folder of a run: ``<results>/runs/<task>/<method>/<hash>``."""
    return Path(results_dir) / "runs" / task / method / run_hash


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Atomically write a DataFrame as parquet."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Atomically write a DataFrame as CSV."""
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file, or ``default`` when it does not exist.

    Raises:
        CorruptStoreFile: the file exists but is not valid JSON (the message names it).
    """
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptStoreFile(path, f"not valid JSON: {exc}") from None


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status dict; ``{"state": "absent"}`` when the run was never planned."""
    return read_json(Path(run_dir) / "status.json", {"state": "absent"})


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    """Atomically record the run's state (and extra fields such as ``error``, ``job_id``)."""
    import time

    data = {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_json(Path(run_dir) / "status.json", data)


def iter_run_dirs(results_dir: Path) -> Iterator[Path]:
    """Every run folder (one holding ``config.json``) under ``<results>/runs``."""
    root = Path(results_dir) / "runs"
    if not root.is_dir():
        return
    for config in sorted(root.glob("*/*/*/config.json")):
        yield config.parent
