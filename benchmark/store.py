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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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
    "iter_run_records",
    "read_json",
    "read_object",
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
        reason: what is wrong with it.
        fix: what to delete so that ``run`` recomputes it.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        if self.path.name == "metrics.json":  # a done run is skipped even without its metrics
            self.fix = (
                "delete it and the status.json beside it, and `run` resumes the run from its "
                "checkpoint and evaluates it again"
            )
        else:
            self.fix = (
                f"delete it, or the run folder {self.path.parent}, and `run` recomputes what "
                "is missing"
            )
        super().__init__(f"corrupt results file {self.path} ({reason}); {self.fix}")

    def __reduce__(self):  # picklable (jobs send exceptions back to the parent)
        return type(self), (self.path, self.reason)


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


def read_object(path: Path, default: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Read a store file that holds a JSON object (``config.json``, ``status.json``,
    ``metrics.json``, ``job.json``, ``progress.json``), or ``default`` when it does not exist.

    Raises:
        CorruptStoreFile: not valid JSON, or valid JSON that is not an object (the message
            names the file).
    """
    data = read_json(path, default)
    if data is not default and not isinstance(data, dict):
        raise CorruptStoreFile(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status dict; ``{"state": "absent"}`` when the run was never planned.

    Raises:
        CorruptStoreFile: ``status.json`` is not a JSON object with a ``state`` string.
    """
    path = Path(run_dir) / "status.json"
    status = read_object(path, {"state": "absent"})
    if not isinstance(status.get("state"), str):
        raise CorruptStoreFile(path, "no 'state' field")
    return status


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    """Atomically record the run's state (and extra fields such as ``error``, ``job_id``)."""
    import time

    data = {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_json(Path(run_dir) / "status.json", data)


def iter_run_dirs(results_dir: Path) -> Iterator[Path]:
    """Every run folder (one holding ``config.json``) under ``<results>/runs``.

    The folders are only listed, not read: a reader of their files meets a corrupt one as
    :class:`CorruptStoreFile`; :func:`iter_run_records` turns that into a per-run error so that
    a listing goes on with the other runs.
    """
    root = Path(results_dir) / "runs"
    if not root.is_dir():
        return
    for config in sorted(root.glob("*/*/*/config.json")):
        yield config.parent


_T = TypeVar("_T")


def iter_run_records(
    results_dir: Path, read: Callable[[Path], _T]
) -> Iterator[tuple[Path, _T | None, CorruptStoreFile | None]]:
    """``read`` applied to every run folder of :func:`iter_run_dirs`, one corrupt file costing
    only its own run: yields ``(run_dir, read(run_dir), None)``, or ``(run_dir, None, error)``
    when ``read`` raised :class:`CorruptStoreFile` (any other exception propagates). The pattern
    of every command that lists the store (``status``, tables, figures)::

        for run_dir, row, error in iter_run_records(results_dir, read_row):
            if error is not None:
                print(f"skipped corrupt run folder {run_dir}: {error}")
                continue
            rows.append(row)
    """
    for run_dir in iter_run_dirs(results_dir):
        try:
            value = read(run_dir)
        except CorruptStoreFile as error:
            yield run_dir, None, error
        else:
            yield run_dir, value, None
