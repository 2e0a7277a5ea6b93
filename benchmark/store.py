"""Results store: one folder per run, addressed by the hash of its resolved config.

Layout under the results directory::

    runs/<task>/<method>/<hash>/
        config.json      resolved RunConfig (+ hash, sections, teacher folder, plug-in modules)
        status.json      {"state": pending|running|done|failed|diverged|preempted|interrupted,
                         ...}
        metrics.json     schema'd record (METRICS_SCHEMA_VERSION): metrics, spread, counts,
                         timings, settings, perceptual, provenance (git commit, versions, device)
        scores.parquet   per-mixture scores
        curve.csv        training curve (step, loss, ...)
        checkpoint.pt    latest training checkpoint (resume point)
        model.pt         final network weights (teachers are loaded from here)
        log.txt          the run's log

:class:`RunRecord` gives typed access to one run folder; every reader (tables, status, figures,
ablations, the perceptual stage, the job that loads a teacher) goes through it.

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
    "METRICS_SCHEMA_VERSION",
    "CorruptStoreFile",
    "RunRecord",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_parquet",
    "iter_records",
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

#: version of the ``metrics.json`` layout (1: a flat dict, before the run record; 2: sections)
METRICS_SCHEMA_VERSION = 2
#: the sections of a version-2 ``metrics.json``
METRICS_SECTIONS = (
    "metrics",  # metric name -> mean over the evaluation set (None: not computed)
    "spread",  # metric name -> std over mixtures (or pooled items)
    "counts",  # n_mixtures, failed/skipped items, pooled-item counts
    "timings",  # train_time_s, eval_time_s, perceptual_time_s
    "training",  # final_loss
    "settings",  # metric settings in force (SI-SDR variant, sample rate)
    "perceptual",  # the perceptual stage's record (benchmark.perceptual_eval)
    "provenance",  # git commit, code version, package versions, device, host, job id
)

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


def _split_v1(flat: dict[str, Any]) -> dict[str, Any]:
    """A version-1 (flat) ``metrics.json`` in the version-2 sections."""
    out: dict[str, Any] = {name: {} for name in METRICS_SECTIONS}
    out["schema_version"] = 1
    for key, value in flat.items():
        if key == "perceptual":
            out["perceptual"] = value
        elif key.endswith("_time_s"):
            out["timings"][key] = value
        elif key == "final_loss":
            out["training"][key] = value
        elif key.endswith("_std_over_mixtures"):
            out["spread"][key[: -len("_std_over_mixtures")]] = value
        elif key.endswith("_std"):
            out["spread"][key[: -len("_std")]] = value
        elif key in ("n_mixtures", "fuss_skipped") or key.endswith(("_n", "_failed", "_items")):
            out["counts"][key] = value
        elif isinstance(value, (bool, str)) or key == "sample_rate":
            out["settings"][key] = value
        else:
            out["metrics"][key] = value
    return out


class RunRecord:
    """Typed access to one run folder (``runs/<task>/<method>/<hash>``).

    Reads lazily and caches; a corrupt JSON file raises :class:`CorruptStoreFile` naming it.
    Writing stays with the runner (``config.json``, ``status.json``) and the job (the rest).

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir)
        self._info: dict[str, Any] | None = None
        self._config: Any = None
        self._metrics: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunRecord({str(self.path)!r})"

    # -- identity and config -------------------------------------------------------------
    @property
    def task(self) -> str:
        """Task name (from the folder layout)."""
        return self.path.parent.parent.name

    @property
    def method(self) -> str:
        """Method name (from the folder layout)."""
        return self.path.parent.name

    @property
    def run_hash(self) -> str:
        """The run's address (the folder name)."""
        return self.path.name

    @property
    def info(self) -> dict[str, Any]:
        """``config.json`` as stored: ``hash``, ``sections``, ``teacher_dir``, ``plugins`` and
        ``config``.

        Raises:
            FileNotFoundError: the run was never planned (no ``config.json``).
            CorruptStoreFile: the file cannot be parsed.
        """
        if self._info is None:
            data = read_json(self.path / "config.json")
            if data is None:
                raise FileNotFoundError(f"no config.json in {self.path}: not a planned run")
            if not isinstance(data, dict) or "config" not in data:
                raise CorruptStoreFile(self.path / "config.json", "no 'config' entry")
            self._info = data
        return self._info

    @property
    def raw_config(self) -> dict[str, Any]:
        """The stored config as plain data (no plug-in needed to read it)."""
        return self.info["config"]

    @property
    def config(self) -> Any:
        """The stored :class:`benchmark.config.RunConfig` (imports the run's plug-in modules).

        Raises:
            benchmark.registry.UnknownName: its method or task is not registered here.
        """
        if self._config is None:
            from benchmark.config import from_dict
            from benchmark.registry import load_plugins

            load_plugins(self.info.get("plugins") or [])
            self._config = from_dict(self.raw_config)
        return self._config

    @property
    def seed(self) -> int:
        return int(self.raw_config.get("seed", 0))

    @property
    def preset(self) -> str:
        return str(self.raw_config.get("preset", ""))

    @property
    def variant(self) -> str:
        """The ``--set`` overrides that define this run, joined by spaces (``""``: none)."""
        return " ".join(self.raw_config.get("overrides") or [])

    @property
    def teacher(self) -> RunRecord | None:
        """The run this run starts from (e.g. its MixIT teacher), or None."""
        teacher_dir = self.info.get("teacher_dir")
        return RunRecord(teacher_dir) if teacher_dir else None

    # -- state ---------------------------------------------------------------------------
    @property
    def status(self) -> dict[str, Any]:
        """``status.json`` (``{"state": "absent"}`` when never planned); read afresh each time."""
        return read_status(self.path)

    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def checkpoint_path(self) -> Path:
        """The latest training checkpoint (may not exist)."""
        return self.path / "checkpoint.pt"

    @property
    def model_path(self) -> Path:
        """The final weights (exist once training finished)."""
        return self.path / "model.pt"

    @property
    def scores_path(self) -> Path:
        """Per-mixture scores (exist once evaluated)."""
        return self.path / "scores.parquet"

    def is_done(self) -> bool:
        """Finished: state ``done`` and final weights (or nothing to train) present."""
        return self.state == "done"

    def teacher_ready(self) -> tuple[bool, str]:
        """The one check that this run's teacher can be used: ``(ready, reason)``.

        Ready when the run has no teacher, or its teacher is ``done`` with ``model.pt``; else
        the reason names the teacher folder and its state.
        """
        teacher = self.teacher
        if teacher is None:
            return True, ""
        state = teacher.state
        if state != "done":
            return False, f"teacher run {teacher.path} did not finish ({state})"
        if not teacher.model_path.is_file():
            return False, f"teacher run {teacher.path} has no final weights (model.pt)"
        return True, ""

    # -- results -------------------------------------------------------------------------
    @property
    def metrics_record(self) -> dict[str, Any] | None:
        """``metrics.json`` in version-2 sections (a version-1 file is read into them), or
        None before evaluation."""
        if self._metrics is None:
            data = read_json(self.path / "metrics.json")
            if data is None:
                return None
            if not isinstance(data, dict):
                raise CorruptStoreFile(self.path / "metrics.json", "not a JSON object")
            if "schema_version" not in data:
                data = _split_v1(data)
            elif data["schema_version"] > METRICS_SCHEMA_VERSION:
                raise CorruptStoreFile(
                    self.path / "metrics.json",
                    f"schema version {data['schema_version']} is newer than this code's "
                    f"{METRICS_SCHEMA_VERSION}: update the benchmark to read it",
                )
            for name in METRICS_SECTIONS:
                data.setdefault(name, {})
            self._metrics = data
        return self._metrics

    def metric_values(self) -> dict[str, float]:
        """Metric name -> mean over the evaluation set, for the metrics that were computed
        (finite numbers; a metric recorded as None was not computed and is left out)."""
        record = self.metrics_record or {}
        out = {}
        for key, value in (record.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
        return out

    @property
    def counts(self) -> dict[str, Any]:
        return (self.metrics_record or {}).get("counts", {})

    @property
    def timings(self) -> dict[str, Any]:
        return (self.metrics_record or {}).get("timings", {})

    @property
    def perceptual(self) -> dict[str, Any]:
        """The perceptual stage's record (empty when it did not run)."""
        return (self.metrics_record or {}).get("perceptual") or {}

    @property
    def provenance(self) -> dict[str, Any]:
        """Git commit, code version, package versions, device, host, job id and wall time of
        the evaluation that wrote ``metrics.json`` (``meta.json`` of older runs)."""
        record = self.metrics_record or {}
        if record.get("provenance"):
            return record["provenance"]
        return read_json(self.path / "meta.json", {}) or {}

    def scores(self) -> pd.DataFrame | None:
        """The per-mixture scores (``scores.parquet``), or None before evaluation.

        Raises:
            CorruptStoreFile: the file cannot be read.
        """
        if not self.scores_path.is_file():
            return None
        try:
            return pd.read_parquet(self.scores_path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise CorruptStoreFile(self.scores_path, f"unreadable parquet: {exc}") from None

    def curve(self) -> pd.DataFrame | None:
        """The training curve (``curve.csv``), or None before the first record."""
        path = self.path / "curve.csv"
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001
            raise CorruptStoreFile(path, f"unreadable CSV: {exc}") from None


def iter_records(results_dir: Path) -> Iterator[RunRecord]:
    """A :class:`RunRecord` for every run folder under ``<results>/runs``."""
    for run_dir in iter_run_dirs(results_dir):
        yield RunRecord(run_dir)


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
