"""``status`` and ``run --dry-run``: what the results store holds and what a run would do.

``python -m benchmark status`` lists every run under the results folder with its state
(``pending``, ``running``, ``done``, ``failed``, ``diverged``, ``preempted``, ``interrupted``),
the scheduler job id, the scheduler's own state while the job is queued (``squeue``), and the
last line of its error. A ``running`` run whose job is gone (no lock held, not in the queue) is
shown as ``stale``: a killed job; the next ``run`` resumes it from its checkpoint.

A run folder with a corrupt store file (truncated or hand-edited JSON, any file that ``run``
checks: :func:`benchmark.checks.check_store_files`) is listed as ``corrupt``
and named with the file below the table; the other runs are listed as usual. ``run --dry-run``
shows such runs as ``corrupt`` too (``run`` itself refuses to start while they are:
:func:`benchmark.checks.preflight`).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.preempt import run_is_locked
from benchmark.store import RunRecord, iter_run_records, read_object, read_status

__all__ = ["plan_actions", "render_dry_run", "render_status", "status_rows"]

ACTIVE = ("pending", "running", "preempted")


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _resume_note(status: dict, cfg: dict, run_dir: Path) -> str:
    """The note of a ``preempted`` run no job will pick up: what ``run`` will do with it."""
    if not (run_dir / "checkpoint.pt").is_file():
        return "not queued: `run` resubmits it (no checkpoint: it starts over)"
    step, total = status.get("step"), cfg.get("train", {}).get("steps")
    at = f" at step {step}" + (f"/{total}" if total else "") if step is not None else ""
    return f"not queued: `run` resubmits it and it resumes from its checkpoint{at}"


def status_rows(results_dir: Path) -> list[dict[str, str]]:
    """One dict per run: task, method, seed, preset, hash, state, job_id, queue, error, note; a
    run folder with a corrupt store file has state ``corrupt`` and its message in ``detail``.

    ``queue`` is the SLURM state from ``squeue`` for queued jobs (``"gone"`` for a SLURM job
    of a pending/running/preempted run that left the queue, ``""`` otherwise). ``note`` is set
    for a ``preempted`` run that no job will resume (not queued, not executing): the next
    ``run`` resubmits it.
    """
    from benchmark.checks import check_store_files
    from benchmark.slurm import JOB_FILE, queue_states

    def read_row(run_dir: Path) -> dict[str, str]:
        check_store_files(run_dir)  # the files `run` refuses to start over (checks.preflight)
        cfg = RunRecord(run_dir).raw_config
        status = read_status(run_dir)
        job = read_object(run_dir / JOB_FILE, {})
        return {
            "task": run_dir.parent.parent.name,
            "method": run_dir.parent.name,
            "seed": str(cfg.get("seed", "")),
            "preset": str(cfg.get("preset", "")),
            "hash": run_dir.name,
            "state": status["state"],
            "job_id": str(job.get("job_id") or status.get("job_id") or ""),
            "scheduler": str(job.get("scheduler", "")),
            "queue": "",
            "error": _last_line(status.get("traceback") or status.get("error")),
            "note": _resume_note(status, cfg, run_dir) if status["state"] == "preempted" else "",
            "run_dir": str(run_dir),
        }

    rows = []
    for run_dir, row, error in iter_run_records(results_dir, read_row):
        if error is not None:  # listed by its folder; the message names the file
            row = dict.fromkeys(("seed", "preset", "job_id", "scheduler", "queue", "note"), "")
            row.update(task=run_dir.parent.parent.name, method=run_dir.parent.name)
            row.update(hash=run_dir.name, state="corrupt", run_dir=str(run_dir))
            row.update(error=f"corrupt {error.path.name} (see below)", detail=str(error))
        rows.append(row)
    slurm_ids = [r["job_id"] for r in rows if r["scheduler"] == "slurm" and r["state"] in ACTIVE]
    queue = queue_states(slurm_ids) if slurm_ids else {}
    for row in rows:
        if row["scheduler"] == "slurm" and row["state"] in ACTIVE and queue is not None:
            row["queue"] = queue.get(row["job_id"], "gone")
        # no job will pick the run up: not queued, and no process holds its lock
        idle = (
            row["state"] in ("running", "preempted")
            and row["queue"] in ("", "gone")
            and not run_is_locked(Path(row["run_dir"]))
        )
        if idle and row["state"] == "running":
            row["state"] = "stale"
        if not idle:
            row["note"] = ""  # a queued (requeued) or executing job resumes it
    return rows


def render_status(results_dir: Path) -> str:
    """The ``status`` table (plain text, one line per run; the last column is the run's note or
    the last line of its error), a count per state, what ``run`` does with the runs no job will
    resume, and the run folders skipped for a corrupt file."""
    rows = status_rows(results_dir)
    if not rows:
        return f"no runs under {Path(results_dir) / 'runs'}"
    header = ("task", "method", "seed", "preset", "hash", "state", "job_id", "queue", "error/note")
    table = [header] + [tuple(r[h] for h in header[:-1]) + (r["note"] or r["error"],) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join(cells + [row[-1][:160]]).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    idle = sum(bool(r["note"]) for r in rows)
    if idle:
        what = (
            "it; it resumes from its checkpoint"
            if idle == 1
            else "them; they resume from their checkpoints"
        )
        lines.append(
            f"{idle} preempted, not queued: `python -m benchmark run` with the same arguments "
            f"resubmits {what}"
        )
    corrupt = [r for r in rows if r["state"] == "corrupt"]
    lines += [f"skipped corrupt run folder {r['run_dir']}: {r['detail']}" for r in corrupt]
    return "\n".join(lines)


def plan_actions(runs: list, retry_failed: bool = False) -> list[tuple[object, str]]:
    """What ``run`` would do with each planned run, without touching the results store.

    Mirrors :func:`benchmark.runner.prepare_runs`: ``skip (done)``, ``skip (failed: use
    --retry-failed)``, ``skip (running elsewhere)`` or ``submit`` (``resume`` when a training
    checkpoint exists), or ``refuse (corrupt file)`` for a run folder with a corrupt store file
    (:func:`benchmark.checks.find_corrupt_runs`).
    """
    from benchmark.checks import find_corrupt_runs
    from benchmark.slurm import JOB_FILE, queue_states

    out = []
    queued = {}
    corrupt = find_corrupt_runs(runs)
    for run in runs:
        if run.run_dir in corrupt:
            continue
        job = read_object(run.run_dir / JOB_FILE, {})
        if job.get("scheduler") == "slurm" and run.state in ACTIVE:
            queued[run.run_dir] = str(job["job_id"])
    live = (queue_states(list(queued.values())) or {}) if queued else {}
    for run in runs:
        if run.run_dir in corrupt:
            out.append((run, "refuse (corrupt file)"))
            continue
        state = run.state
        if state == "done":
            action = "skip (done)"
        elif state in ("failed", "diverged") and not retry_failed:
            action = f"skip ({state}: use --retry-failed)"
        elif run_is_locked(run.run_dir) or queued.get(run.run_dir) in live:
            action = "skip (running elsewhere)"
        elif (run.run_dir / "checkpoint.pt").is_file():
            action = "resume"
        else:
            action = "submit"
        out.append((run, action))
    return out


def render_dry_run(runs: list, retry_failed: bool, executor: str, max_array_size: int) -> str:
    """The ``--dry-run`` report: the expanded grid (method x task x seed x overrides), the state
    of every run, and the jobs (and SLURM arrays) that would be submitted."""
    from benchmark.checks import find_corrupt_runs, safe_state

    actions = plan_actions(runs, retry_failed)
    corrupt = find_corrupt_runs(runs)
    lines = ["expanded grid (teachers and the mixture reference included):"]
    header = ("stage", "method", "task", "seed", "overrides", "hash", "state", "action")
    table = [header]
    for run, action in actions:
        cfg = run.config
        table.append(
            (
                str(run.stage),
                cfg.method + ("" if run.requested else " (teacher)"),
                cfg.task.name,
                str(cfg.seed),
                " ".join(cfg.overrides) or "-",
                run.run_hash,
                "corrupt" if run.run_dir in corrupt else safe_state(run),
                action,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    todo = [(run, a) for run, a in actions if a in ("submit", "resume")]
    done = sum(a == "skip (done)" for _, a in actions)
    lines.append("")
    lines.append(f"{len(actions)} runs: {done} done, {len(todo)} would be submitted")
    for stage in sorted({run.stage for run, _ in todo}):
        n = sum(run.stage == stage for run, _ in todo)
        if executor == "slurm":
            arrays = -(-n // max_array_size)
            after = " after their teachers (afterany)" if stage > 0 else ""
            lines.append(
                f"  stage {stage}: {n} jobs as {arrays} SLURM job array(s) of <= "
                f"{max_array_size}{after}"
            )
        else:
            lines.append(f"  stage {stage}: {n} {executor} jobs")
    for run_dir, error in corrupt.items():
        lines.append(f"skipped corrupt run folder {run_dir}: {error}")
    if corrupt:
        lines.append("the command itself refuses to start until these files are deleted.")
    lines.append("dry run: nothing was submitted or written.")
    return "\n".join(lines)
