"""Execution plumbing shared by the commands that run grids (``run``, and later ``ablate``).

- :func:`add_execution_arguments` adds ``--dry-run``, ``--wait``, ``--gpus``,
  ``--cluster-config`` and the ``--slurm-*`` options to a sub-command's parser;
- :func:`cluster_options_from_args` merges the YAML file and the flags (flags win);
- :func:`execute_todo` runs prepared runs locally (:func:`benchmark.runner.execute_plan`) or
  submits them to SLURM (:func:`benchmark.slurm.submit_runs`; blocking only with ``--wait``);
- :func:`execute_and_report` does that and prints the final counts, what failed (error, log
  file, the ``status`` command) and the ``table`` command when a run finished, returning the
  command's exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.slurm import ClusterOptions, load_cluster_options

__all__ = [
    "add_execution_arguments",
    "cluster_options_from_args",
    "execute_and_report",
    "execute_todo",
    "submit_runs",
]

# --slurm-<flag> -> ClusterOptions field
_SLURM_FLAGS = {
    "partition": ("partition", str, "SLURM partition"),
    "account": ("account", str, "SLURM account"),
    "qos": ("qos", str, "SLURM quality of service"),
    "gpus": ("gpus_per_job", int, "GPUs per job (default 0)"),
    "cpus": ("cpus_per_job", int, "CPUs per job (default 1)"),
    "mem-gb": ("mem_gb", float, "memory per job in GB (default: the partition's)"),
    "time": ("time_min", int, "time limit per job in minutes (default 1440)"),
    "array-parallelism": ("array_parallelism", int, "array tasks running at once (256)"),
    "max-array-size": ("max_array_size", int, "most tasks per job array (1000)"),
}


def _sbatch_flag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise argparse.ArgumentTypeError(f"--slurm-sbatch takes FLAG=VALUE, got {text!r}")
    return key, (value if sep else True)


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the execution options (dry run, waiting, GPU slots, SLURM resources) to ``parser``."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expanded grid, which runs are done and what would be submitted; "
        "submit and write nothing",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="with --executor slurm: block until every submitted job is finished",
    )
    parser.add_argument(
        "--gpus",
        default=None,
        help="local executor: GPU indices to give one each to concurrent jobs, e.g. 0,1,2,3 "
        "(default: every visible GPU when there are several)",
    )
    group = parser.add_argument_group("SLURM (--executor slurm)")
    group.add_argument(
        "--cluster-config",
        type=Path,
        default=None,
        help="YAML file of cluster options (keys: see README 'SLURM'); flags override it",
    )
    for flag, (dest, kind, text) in _SLURM_FLAGS.items():
        group.add_argument(f"--slurm-{flag}", dest=f"slurm_{dest}", type=kind, help=text)
    group.add_argument(
        "--slurm-sbatch",
        dest="slurm_sbatch",
        type=_sbatch_flag,
        action="append",
        metavar="FLAG=VALUE",
        help="extra sbatch flag, repeatable, e.g. --slurm-sbatch constraint=a100",
    )


def cluster_options_from_args(args: argparse.Namespace) -> ClusterOptions | None:
    """The :class:`ClusterOptions` of ``--executor slurm`` (None for other executors).

    Raises:
        ValueError: SLURM options given with another executor, unknown YAML keys, bad values.
        FileNotFoundError: the ``--cluster-config`` file does not exist.
    """
    given = {dest: getattr(args, f"slurm_{dest}") for dest, _, _ in _SLURM_FLAGS.values()}
    given["sbatch"] = dict(args.slurm_sbatch) if args.slurm_sbatch else None
    if args.executor != "slurm":
        if args.cluster_config or any(v is not None for v in given.values()):
            raise ValueError("--cluster-config and --slurm-* options need --executor slurm")
        return None
    return load_cluster_options(args.cluster_config, **given)


def _gpu_slots(args: argparse.Namespace) -> list[int] | None:
    from benchmark.slots import default_gpu_slots

    if args.gpus:
        try:
            return [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError as exc:
            raise ValueError(f"--gpus takes GPU indices like 0,1,2,3, got {args.gpus!r}") from exc
    return default_gpu_slots(args.device)


def submit_runs(
    todo: list,
    options: ClusterOptions,
    data_root,
    results_dir,
    device="auto",
    weights_dir=None,
    workers: int = 1,
):
    """Submit prepared runs to SLURM (see :func:`benchmark.slurm.submit_runs`)."""
    from benchmark import slurm

    return slurm.submit_runs(
        todo, options, Path(data_root), Path(results_dir), device, weights_dir, workers
    )


def execute_todo(
    todo: list, args: argparse.Namespace, cluster: ClusterOptions | None
) -> dict[str, int] | None:
    """Run or submit the prepared runs ``todo`` as ``args`` says.

    Returns:
        Count of final states (local executors, or SLURM with ``--wait``); None when SLURM jobs
        were submitted without waiting.
    """
    from benchmark.runner import execute_plan
    from benchmark.status import plan_actions

    if args.executor != "slurm":
        return execute_plan(
            todo,
            args.executor,
            args.data_root,
            args.results_dir,
            args.device,
            args.max_parallel,
            weights_dir=args.weights_dir,
            gpu_slots=_gpu_slots(args),
            workers=args.workers,
        )
    from benchmark.slurm import options_summary, wait_for_runs

    assert cluster is not None
    busy = {run.run_dir for run, action in plan_actions(todo) if action.startswith("skip")}
    for run in todo:
        if run.run_dir in busy:
            print(f"  skipped {run.label}: its job is still queued or running")
    todo = [run for run in todo if run.run_dir not in busy]
    if not todo:
        return None
    submitted = submit_runs(
        todo,
        cluster,
        args.data_root,
        args.results_dir,
        args.device,
        args.weights_dir,
        args.workers,
    )
    arrays = sorted({job_id.split("_")[0] for job_id in submitted.values()})
    print(
        f"submitted {len(submitted)} SLURM jobs in {len(arrays)} job(s)/array(s) "
        f"{', '.join(arrays)} ({options_summary(cluster)})",
        flush=True,
    )
    if not args.wait:
        print(
            f"not waiting: `python -m benchmark status --results-dir {args.results_dir}` shows "
            "their progress",
            flush=True,
        )
        return None
    return wait_for_runs(submitted)


def _closing_lines(
    todo: list, counts: dict[str, int], table_command: str, results_dir: Path
) -> list[str]:
    """What ``run``/``ablate`` print at the end: the counts, what did not finish and where to
    look, and the ``table`` command only when a run (other than the ``mixture`` reference)
    ended ``done``."""
    from benchmark.runner import HELD_ELSEWHERE
    from benchmark.store import FINISHED, read_status

    ended = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s in FINISHED) or "none"
    stopped = ", ".join(
        f"{n} {s}" for s, n in sorted(counts.items()) if s not in (*FINISHED, HELD_ELSEWHERE)
    )
    if stopped:
        ended += (
            f"; not finished: {stopped} (run the same command again: it resumes them from "
            "their checkpoints)"
        )
    lines = [f"finished: {ended}."]
    status_command = f"python -m benchmark status --results-dir {results_dir}"
    states = {run.run_dir: read_status(run.run_dir) for run in todo}
    bad = [r for r in todo if states[r.run_dir]["state"] in ("failed", "diverged")]
    for run in bad[:5]:
        status = states[run.run_dir]
        error = (status.get("error") or "").strip().splitlines()
        lines.append(
            f"  {run.label} {status['state']}: {error[-1] if error else '?'} "
            f"(log: {run.run_dir / 'log.txt'})"
        )
    if len(bad) > 5:
        lines.append(f"  ... and {len(bad) - 5} more")
    resumable = bool(stopped)
    if counts.get(HELD_ELSEWHERE):
        lines.append(
            f"{counts[HELD_ELSEWHERE]} run(s) are being run by another process: "
            f"`{status_command}` shows their progress."
        )
    useful = any(
        states[r.run_dir]["state"] == "done" and r.config.method != "mixture" for r in todo
    )
    if bad:
        lines.append(
            f"`{status_command}` lists every run's state and error; `--retry-failed` re-runs "
            "failed runs."
        )
    if useful:
        lines.append(f"`{table_command}` shows the results.")
    elif not bad and not resumable and not counts.get(HELD_ELSEWHERE):
        lines.append(f"`{table_command}` shows the results.")  # e.g. only a re-evaluation
    return lines


def execute_and_report(
    todo: list, args: argparse.Namespace, cluster: ClusterOptions | None, table_command: str
) -> int:
    """:func:`execute_todo`, then print ``finished: <n> <state>, ...``, the runs that failed
    (error and log file), and ``table_command`` when there is something new to show.

    Runs that stopped before finishing (``preempted``/``interrupted`` and no longer queued) are
    listed as ``not finished``: the same command resubmits them and they resume from their
    checkpoints.

    Returns:
        The exit code of ``run``/``ablate``: 0 when every run ended ``done`` (or is being run
        by another process) or SLURM jobs were submitted without ``--wait``; 1 otherwise (a
        run failed, diverged or was interrupted).

    Raises:
        benchmark.runner.Stopped: a local run was stopped by SIGINT/SIGTERM/SIGHUP (the CLI
            prints its message and exits with ``128 + signal``).
    """
    from benchmark.runner import HELD_ELSEWHERE

    counts = execute_todo(todo, args, cluster)
    if counts is None:  # submitted to SLURM, not waiting
        return 0
    for line in _closing_lines(todo, counts, table_command, args.results_dir):
        print(line)
    return 0 if set(counts) <= {"done", HELD_ELSEWHERE} else 1
