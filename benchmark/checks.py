"""Up-front checks: what a user can get wrong is found before any job starts or any file is
written, and reported as one message naming the path or setting and the fix (the command line
prints ``error: <message>`` and exits 2; see :func:`benchmark.cli.main`).

- Output folders and files (``--results-dir`` of ``run``/``ablate``, ``figure --out``):
  :func:`check_output_dir` and :func:`check_output_file` find a path that lies under a regular
  file, a read-only file system, or a folder the user may not write to (``os.access``, so the
  answer is the operating system's for this user: root may write anywhere that is not
  read-only). Nothing is created.
- A results folder to read (``status``, ``table``, ``figure``): :func:`check_results_dir`.
- The results store of the planned runs: :func:`find_corrupt_runs` parses every JSON file of
  every planned run folder; ``run``/``ablate`` refuse to start while any is corrupt (the message
  lists every file and the fix: delete it, ``run`` recomputes what is missing), ``--dry-run``
  shows those runs as ``corrupt`` and goes on.
- Datasets: :func:`check_task_data` builds each distinct task of the plan once in the parent
  and calls :meth:`tasks.base.Task.check_data`, so that a missing or corrupt dataset is one
  message, not one failed job per run.

:func:`preflight` runs them in that order for ``run`` and ``ablate``.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

from benchmark.store import CorruptStoreFile, read_object, read_status

__all__ = [
    "NOT_A_DIRECTORY",
    "PERMISSION_DENIED",
    "READ_ONLY",
    "STORE_JSON_FILES",
    "CorruptRunsError",
    "PathError",
    "check_output_dir",
    "check_output_file",
    "check_results_dir",
    "check_task_data",
    "check_store_files",
    "find_corrupt_runs",
    "preflight",
    "safe_state",
]

#: :attr:`PathError.problem` values
NOT_A_DIRECTORY = "not a directory"
READ_ONLY = "read-only file system"
PERMISSION_DENIED = "permission denied"
DOES_NOT_EXIST = "does not exist"

#: the JSON files of a run folder (``benchmark.store`` layout, ``job.json`` of
#: ``benchmark.slurm``, ``progress.json`` of a running job)
STORE_JSON_FILES = ("config.json", "status.json", "metrics.json", "progress.json", "job.json")


class PathError(ValueError):
    """A folder or file named on the command line cannot be used.

    Attributes:
        path: the path given.
        problem: one of ``NOT_A_DIRECTORY``, ``READ_ONLY``, ``PERMISSION_DENIED``,
            ``DOES_NOT_EXIST``.
    """

    def __init__(self, message: str, path: Path, problem: str) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self):
        return type(self), (self.args[0], self.path, self.problem)


class CorruptRunsError(ValueError):
    """Run folders that a command would use hold corrupt store files (all listed).

    Attributes:
        errors: ``{run_dir: CorruptStoreFile}``.
    """

    def __init__(self, errors: dict[Path, CorruptStoreFile]) -> None:
        self.errors = dict(errors)
        lines = [f"  {e.path}: {e.reason}; {e.fix}" for e in self.errors.values()]
        super().__init__(
            f"{len(lines)} run folder(s) of this grid hold a corrupt results file; nothing was "
            "run. Fix each, then run the same command again:\n" + "\n".join(lines)
        )

    def __reduce__(self):
        return type(self), (self.errors,)


def _user() -> str:
    """The name of the real user (not $USER: a process may have changed its uid)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _unwritable(path: Path) -> tuple[str, Path] | None:
    """Why a folder cannot be created or written at ``path``: ``(problem, culprit)`` with the
    culprit the existing path component at fault, or None when it can."""
    current = Path(path).expanduser().absolute()
    while True:
        try:
            info = current.stat()
            break
        except (FileNotFoundError, NotADirectoryError):
            if current.parent == current:
                return DOES_NOT_EXIST, current
            current = current.parent
        except PermissionError:
            return PERMISSION_DENIED, current.parent
    if not stat.S_ISDIR(info.st_mode):
        return NOT_A_DIRECTORY, current
    if os.statvfs(current).f_flag & os.ST_RDONLY:
        return READ_ONLY, current
    if not os.access(current, os.W_OK | os.X_OK):
        return PERMISSION_DENIED, current
    return None


def _path_error(setting: str, path: Path, problem: str, culprit: Path, fix: str) -> PathError:
    path = Path(path)
    if problem == NOT_A_DIRECTORY:
        here = culprit == path.expanduser().absolute()
        why = f"not a directory ({'it' if here else culprit} is a file, not a folder)"
    elif problem == READ_ONLY:
        why = f"read-only file system ({culprit} is on a file system mounted read-only)"
    elif problem == PERMISSION_DENIED:
        why = f"permission denied (user {_user()} may not write in {culprit})"
    else:
        why = f"{culprit} does not exist"
    return PathError(f"{setting} {path}: cannot write there: {why}. {fix}", path, problem)


def check_output_dir(path: Path, setting: str, fix: str | None = None) -> None:
    """Check that a folder exists and is writable, or can be created; nothing is written.

    Args:
        path: the folder.
        setting: how the user named it (``--results-dir``, ``--out``), for the message.
        fix: what to do instead (default: pass a folder you can write to).

    Raises:
        PathError: the path or a parent is a regular file, is on a read-only file system, or
            the user may not write there; the message names the path, why and the fix.
    """
    problem = _unwritable(path)
    if problem is not None:
        fix = fix or f"Pass a {setting} folder that you can write to."
        raise _path_error(setting, path, *problem, fix)


def check_output_file(path: Path, setting: str, fix: str | None = None) -> None:
    """Check that a file can be written at ``path`` (it is not a folder, and its folder exists
    and is writable or can be created); nothing is written.

    Raises:
        PathError: as :func:`check_output_dir`, or ``path`` is an existing folder.
    """
    path = Path(path)
    fix = fix or f"Pass a {setting} file path in a folder that you can write to."
    if path.expanduser().is_dir():
        raise PathError(
            f"{setting} {path}: cannot write there: it is a folder, not a file. {fix}",
            path,
            NOT_A_DIRECTORY,
        )
    problem = _unwritable(path.expanduser().absolute().parent)
    if problem is not None:
        raise _path_error(setting, path, *problem, fix)


def check_results_dir(path: Path, setting: str = "--results-dir") -> None:
    """Check that a results folder to *read* (``status``, ``table``, ``figure``) exists.

    Raises:
        PathError: it does not exist, or it is a file.
    """
    path = Path(path)
    if path.expanduser().is_dir():
        return
    if path.expanduser().exists():
        raise PathError(
            f"{setting} {path}: not a directory (it is a file); pass the folder that holds "
            "your results.",
            path,
            NOT_A_DIRECTORY,
        )
    raise PathError(
        f"{setting} {path}: the results folder does not exist. Pass the folder that holds "
        "your results (--results-dir, default $BENCHMARK_RESULTS_DIR or ./results), or make "
        "some first with `python -m benchmark run`.",
        path,
        DOES_NOT_EXIST,
    )


def check_store_files(run_dir: Path) -> None:
    """Parse every store file (:data:`STORE_JSON_FILES`) of one run folder. A file that does
    not exist is fine (a run not started yet).

    Raises:
        CorruptStoreFile: the first file that is not valid JSON of the expected shape (named).
    """
    run_dir = Path(run_dir)
    for name in STORE_JSON_FILES:
        data = read_object(run_dir / name)
        if name == "config.json" and data is not None:
            if not isinstance(data.get("config"), dict):
                raise CorruptStoreFile(run_dir / name, "no 'config' object")
    read_status(run_dir)  # a 'state' string


def find_corrupt_runs(runs: list) -> dict[Path, CorruptStoreFile]:
    """:func:`check_store_files` of the planned runs' folders.

    Args:
        runs: :class:`benchmark.runner.PlannedRun` (anything with ``run_dir``).

    Returns:
        ``{run_dir: first corrupt file's error}``; empty when all parse.
    """
    corrupt: dict[Path, CorruptStoreFile] = {}
    for run in runs:
        try:
            check_store_files(run.run_dir)
        except CorruptStoreFile as exc:
            corrupt[Path(run.run_dir)] = exc
    return corrupt


def safe_state(run) -> str:
    """``run.state``, or ``"corrupt"`` when its ``status.json`` is corrupt (listings)."""
    try:
        return run.state
    except CorruptStoreFile:
        return "corrupt"


def check_task_data(runs: list, data_root: Path) -> None:
    """Build each distinct task of ``runs`` once and check its data
    (:meth:`tasks.base.Task.check_data`; image tasks and ``fsdd2mix`` load their arrays, a
    few seconds; the audio corpora index their CSV/list files and folders).

    The training split is checked when a run other than the ``mixture`` reference needs it.

    Raises:
        tasks.base.DatasetNotFoundError: a dataset is missing (places searched, how to get it).
        tasks.base.DatasetError: a dataset file is corrupt (named, with the fix).
        ValueError: task settings the task rejects (e.g. a sample rate it does not have).
    """
    from benchmark.config import to_dict
    from benchmark.registry import get_task

    tasks: dict[str, tuple[object, bool]] = {}
    for run in runs:
        key = json.dumps(to_dict(run.config.task), sort_keys=True)
        train = run.config.method != "mixture"
        previous = tasks.get(key, (None, False))[1]
        tasks[key] = (run.config.task, previous or train)
    for task_config, train in tasks.values():
        task = get_task(task_config.name)(task_config, Path(data_root))
        task.check_data(train=train)


def _would_run(run, retry_failed: bool) -> bool:
    state = run.state
    if state == "done":
        return False
    return retry_failed or state not in ("failed", "diverged")


def preflight(
    runs: list, results_dir: Path, data_root: Path, retry_failed: bool, dry_run: bool
) -> list[str]:
    """The checks of ``run`` and ``ablate`` before anything is written or submitted: the
    results folder (:func:`check_output_dir`), the planned runs' store files
    (:func:`find_corrupt_runs`) and the data of the runs that would execute
    (:func:`check_task_data`; done runs, and failed ones without ``--retry-failed``, need none).

    With ``dry_run`` nothing stops the report: problems come back as warning lines (corrupt
    runs are shown by the dry-run table itself), except a results path under a regular file,
    which cannot even be read.

    Returns:
        Warning lines (dry run only).

    Raises:
        PathError, CorruptRunsError, tasks.base.DatasetError, ValueError: see above.
    """
    warnings: list[str] = []
    try:
        check_output_dir(results_dir, "--results-dir")
    except PathError as exc:
        if not dry_run or exc.problem == NOT_A_DIRECTORY:
            raise
        warnings.append(str(exc))
    corrupt = find_corrupt_runs(runs)
    if corrupt and not dry_run:
        raise CorruptRunsError(corrupt)
    need = [r for r in runs if r.run_dir not in corrupt and _would_run(r, retry_failed)]
    if need:
        try:
            check_task_data(need, data_root)
        except ValueError as exc:  # DatasetError, DatasetNotFoundError, task settings
            if not dry_run:
                raise
            warnings.append(f"`run` would stop here: {exc}")
    return warnings
