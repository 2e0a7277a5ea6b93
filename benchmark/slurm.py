"""SLURM execution through submitit: cluster options, job arrays, teacher dependencies, waiting.

``python -m benchmark run --executor slurm`` plans the grid as usual, then :func:`submit_runs`
submits the runs to do through ``submitit.AutoExecutor(cluster="slurm")``:

- runs are grouped by stage (MixIT teachers and stand-alone methods first, the methods that
  start from a teacher next); every group shares one set of resources and goes out as one job
  array (``executor.batch()``), split into arrays of at most ``max_array_size`` tasks, at most
  ``array_parallelism`` of them running at once;
- teacher dependencies use SLURM's ``--dependency=afterany:<teacher job ids>`` (the array tasks
  of the teachers submitted in this invocation, and teacher jobs of an earlier invocation still
  in the queue). ``afterany`` rather than ``afterok``: a failed teacher must not leave dependent
  jobs pending forever. The job itself checks that its teacher is ``done`` and otherwise fails
  at once with "teacher run ... did not finish" (a cheap job, recorded like any failure);
- each job is a :class:`benchmark.preempt.RunJob` (submitit ``Checkpointable``): a time limit or
  preemption requeues it and it resumes from its checkpoint on disk;
- ``run`` returns once everything is submitted; ``--wait`` polls the results store and
  ``squeue`` until every submitted run is finished, or stopped resumably (``preempted``) with
  its job gone from the queue: such a run is not failed; ``run`` (the same command) resubmits
  it and it resumes from its checkpoint.

The results store is the source of truth for a run's state (``status.json``); ``squeue`` adds
the scheduler's view while a job is queued (no SLURM accounting/``sacct`` is needed).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmark.store import FINISHED, atomic_write_json, read_json, read_status, write_status

__all__ = [
    "JOB_FILE",
    "RESUMABLE",
    "ClusterOptions",
    "load_cluster_options",
    "make_slurm_executor",
    "queue_states",
    "submit_runs",
    "wait_for_runs",
]


#: per run: the scheduler and job id of its latest submission (``status.json`` is the job's own)
JOB_FILE = "job.json"


@dataclass
class ClusterOptions:
    """Resources and limits of SLURM jobs (one set for every job of an invocation).

    Attributes:
        partition: ``--partition`` (None: the cluster's default partition).
        account: ``--account``.
        qos: ``--qos``.
        gpus_per_job: GPUs per job (``--gpus-per-node``); 0 for CPU jobs.
        cpus_per_job: CPUs per job (``--cpus-per-task``).
        mem_gb: memory per job in GB (``--mem``); None: the partition's default.
        time_min: time limit per job in minutes (``--time``). A job that reaches it is
            checkpointed and requeued (up to ``max_requeues`` times).
        array_parallelism: array tasks running at once (``--array=0-N%P``).
        max_array_size: most tasks per job array; larger groups are split (keep it at most the
            cluster's ``MaxArraySize`` - 1).
        signal_delay_s: seconds before the time limit at which the job is told to checkpoint.
        max_requeues: how many times a job may be requeued after reaching its time limit.
        job_name: ``--job-name``.
        sbatch: extra ``sbatch`` flags, e.g. ``{"constraint": "a100", "exclusive": true}``
            (submitit's ``slurm_additional_parameters``; keys without leading dashes).
        setup: shell lines run in the batch script before the job (``module load ...``).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem_gb: float | None = None
    time_min: int = 24 * 60
    array_parallelism: int = 256
    max_array_size: int = 1000
    signal_delay_s: int = 120
    max_requeues: int = 20
    job_name: str = "surf-benchmark"
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raises ValueError with the offending option when a value is out of range."""
        for name in ("cpus_per_job", "time_min", "array_parallelism", "max_array_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"cluster option {name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_job < 0 or self.signal_delay_s < 0 or self.max_requeues < 0:
            raise ValueError(
                "cluster options gpus_per_job, signal_delay_s, max_requeues must be >= 0"
            )
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"cluster option mem_gb must be > 0, got {self.mem_gb}")
        if not isinstance(self.sbatch, dict):
            raise ValueError("cluster option sbatch must be a mapping of sbatch flag -> value")


def _field_names() -> list[str]:
    return [f.name for f in fields(ClusterOptions)]


def load_cluster_options(path: Path | None = None, **cli: Any) -> ClusterOptions:
    """Cluster options: defaults, then the YAML file ``path``, then command-line values.

    Args:
        path: YAML mapping of :class:`ClusterOptions` fields (or None).
        **cli: command-line values; None means "not given" and keeps the file's value.
            ``sbatch`` entries are merged into the file's (the command line wins per flag).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown keys (the message lists the valid ones) or bad values.
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cluster config {path} not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"cluster config {path} must be a YAML mapping of option: value")
        unknown = sorted(set(data) - set(_field_names()))
        if unknown:
            raise ValueError(
                f"unknown cluster option(s) {unknown} in {path}; valid options: "
                f"{', '.join(_field_names())}"
            )
        values.update(data)
    unknown = sorted(set(cli) - set(_field_names()))
    if unknown:
        raise ValueError(f"unknown cluster option(s) {unknown}; valid: {', '.join(_field_names())}")
    for key, value in cli.items():
        if value is None:
            continue
        if key == "sbatch":
            values["sbatch"] = {**values.get("sbatch", {}), **value}
        else:
            values[key] = value
    options = ClusterOptions(**values)
    options.validate()
    return options


def make_slurm_executor(
    options: ClusterOptions, results_dir: Path, dependency: list[str] | None = None
):
    """A ``submitit.AutoExecutor(cluster="slurm")`` with ``options`` applied.

    Raises:
        RuntimeError: no ``sbatch``/``srun`` on this machine.
    """
    import submitit

    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise RuntimeError(
            "--executor slurm needs the SLURM client commands (sbatch, srun, squeue) on PATH; "
            "run on a cluster login node, or use --executor local"
        )
    executor = submitit.AutoExecutor(
        folder=Path(results_dir).resolve() / "submitit" / "%j",
        cluster="slurm",
        slurm_max_num_timeout=options.max_requeues,
    )
    sbatch = dict(options.sbatch)
    if dependency:
        sbatch["dependency"] = "afterany:" + ":".join(dependency)
    params: dict[str, Any] = {
        "name": options.job_name,
        "timeout_min": int(options.time_min),
        "cpus_per_task": int(options.cpus_per_job),
        "slurm_array_parallelism": int(options.array_parallelism),
        "slurm_signal_delay_s": int(options.signal_delay_s),
    }
    if options.gpus_per_job:
        params["gpus_per_node"] = int(options.gpus_per_job)
    if options.mem_gb is not None:
        params["mem_gb"] = options.mem_gb
    for key in ("partition", "account", "qos"):
        if getattr(options, key):
            params[f"slurm_{key}"] = getattr(options, key)
    if sbatch:
        params["slurm_additional_parameters"] = sbatch
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    executor.update_parameters(**params)
    return executor


def queue_states(job_ids: list[str] | None = None) -> dict[str, str] | None:
    """Scheduler states of queued jobs by id (array tasks as ``ARRAY_TASK``), from ``squeue``.

    Returns:
        ``{job_id: state}`` (``PENDING``, ``RUNNING``, ``COMPLETING``, ...) of the jobs still in
        the queue, or None when ``squeue`` is not available or fails.
    """
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T"]
    if job_ids:
        cmd += ["-j", ",".join(sorted({j.split("_")[0] for j in job_ids}))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        # squeue -j with ids that left the queue fails ("Invalid job id"): nothing queued
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state
    return states


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def submit_runs(
    todo: list,
    options: ClusterOptions,
    data_root: Path,
    results_dir: Path,
    device: str = "auto",
    weights_dir: Path | str | None = None,
    workers: int = 1,
) -> dict[Path, str]:
    """Submit planned runs (:class:`benchmark.runner.PlannedRun`, prepared) as SLURM job arrays.

    Runs of one stage share resources and go into one array (split at ``max_array_size``);
    runs with a teacher wait for it through ``--dependency=afterany:...``. Each run's job id
    (``ARRAY_TASK``) is recorded in ``run_dir/job.json``; its status stays ``pending`` (written
    by :func:`benchmark.runner.prepare_runs`) until the job starts.

    Returns:
        ``{run_dir: job_id}`` of the submitted runs.
    """
    from benchmark.preempt import RunJob

    submitted: dict[Path, str] = {}
    queued_teachers: dict[Path, str] = {}
    for run in todo:
        teacher = run.teacher
        if teacher is not None and teacher.run_dir not in queued_teachers:
            state = read_status(teacher.run_dir)["state"]
            job = read_json(teacher.run_dir / JOB_FILE, {})
            if state in ("pending", "running", "preempted") and job.get("scheduler") == "slurm":
                queued_teachers[teacher.run_dir] = str(job["job_id"])
    if queued_teachers:  # teachers of an earlier invocation: wait only for those still queued
        live = queue_states(list(queued_teachers.values())) or {}
        queued_teachers = {d: j for d, j in queued_teachers.items() if j in live}
    for stage in sorted({r.stage for r in todo}):
        group = [r for r in todo if r.stage == stage]
        for chunk in _chunks(group, options.max_array_size):
            deps = sorted(
                {
                    submitted.get(r.teacher.run_dir) or queued_teachers.get(r.teacher.run_dir)
                    for r in chunk
                    if r.teacher is not None
                }
                - {None}
            )
            executor = make_slurm_executor(options, results_dir, deps)
            with executor.batch():
                wdir = str(weights_dir) if weights_dir else None
                jobs = [
                    executor.submit(RunJob(), str(r.run_dir), str(data_root), device, wdir, workers)
                    for r in chunk
                ]
            for run, job in zip(chunk, jobs, strict=True):
                run.job = job
                submitted[run.run_dir] = str(job.job_id)
                atomic_write_json(
                    run.run_dir / JOB_FILE,
                    {"scheduler": "slurm", "job_id": str(job.job_id), "submitted": time.time()},
                )
    return submitted


#: states a job records when it stops cleanly before finishing (a stop signal, Ctrl-C): the run
#: can resume from its checkpoint, so a job that leaves the queue in this state did not fail
RESUMABLE = ("preempted", "interrupted")


def wait_for_runs(
    submitted: dict[Path, str], poll_s: float = 2.0, grace_polls: int = 3
) -> dict[str, int]:
    """Block until every submitted run is finished (``done``/``failed``/``diverged``) or its job
    has left the queue.

    A job that left the queue without recording a final state is handled after
    ``grace_polls`` polls:

    - the run is ``preempted`` or ``interrupted`` (the job checkpointed and stopped, but was not
      requeued, or its requeued job never restarted: ``scancel``, SLURM refusing to start it,
      ``max_requeues`` reached): the state is kept and a line says that ``run`` (the same
      command) resubmits it; it resumes from its checkpoint;
    - otherwise (``pending``/``running``: the job died without recording a status, e.g.
      killed by the scheduler for memory or a lost node) the run is marked ``interrupted``,
      like a local job killed with SIGKILL: ``run`` resubmits it and it resumes from its last
      checkpoint (``failed`` is kept for runs whose own code raised).

    Returns:
        Count of the runs' states at the end, e.g. ``{"done": 4}`` or
        ``{"done": 3, "preempted": 1}``.
    """
    missing: dict[Path, int] = {}
    pending = dict(submitted)
    while pending:
        queue = queue_states(list(pending.values()))
        for run_dir, job_id in list(pending.items()):
            status = read_status(run_dir)
            state = status["state"]
            label = "/".join(Path(run_dir).parts[-3:-1])
            if state in FINISHED:
                del pending[run_dir]
                error = status.get("error", "")
                print(f"  {state:<8} {label:<24} job {job_id}  {error}", flush=True)
                continue
            if queue is not None and job_id not in queue:
                missing[run_dir] = missing.get(run_dir, 0) + 1
                if missing[run_dir] <= grace_polls:
                    continue
                del pending[run_dir]
                if state in RESUMABLE:
                    step = status.get("step")
                    at = f" at step {step}" if step is not None else ""
                    print(
                        f"  {state:<8} {label:<24} job {job_id} left the queue without being "
                        f"requeued; not failed: `run` (the same command) resubmits it and it "
                        f"resumes from its checkpoint{at}",
                        flush=True,
                    )
                    continue
                error = (
                    f"SLURM job {job_id} ended without recording a status (last state {state}: "
                    "killed for memory or time, or its node was lost); see its submitit log; "
                    "`run` (the same command) resubmits it"
                )
                write_status(run_dir, "interrupted", job_id=job_id, error=error)
                print(f"  {'interrupted':<8} {label:<24} job {job_id}  {error}", flush=True)
            else:
                missing.pop(run_dir, None)
        if pending:
            time.sleep(poll_s)
    counts: dict[str, int] = {}
    for run_dir in submitted:
        state = read_status(run_dir)["state"]
        counts[state] = counts.get(state, 0) + 1
    return counts


def options_summary(options: ClusterOptions) -> str:
    """One line describing the non-default cluster options (for the start-up line)."""
    default = ClusterOptions()
    changed = {k: v for k, v in dataclasses.asdict(options).items() if getattr(default, k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
