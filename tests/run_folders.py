"""Run folders written through ``benchmark.store`` at their real addresses, for table tests:
``write_run(results, "mixit", "fuss", metrics={...})`` plans the run as ``run`` would
(``benchmark.runner.plan_runs``), then writes its ``config.json``, ``status.json`` and
``metrics.json`` as a finished (or unfinished) run leaves them. Import with
``from run_folders import write_run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.config import parse_overrides, to_dict
from benchmark.registry import get_method
from benchmark.runner import PlannedRun, plan_runs
from benchmark.store import atomic_write_json, write_status


def write_run(
    results: Path,
    method: str,
    task: str,
    seed: int = 0,
    preset: str = "cpu",
    overrides: tuple[str, ...] = (),
    metrics: dict[str, Any] | None = None,
    state: str = "done",
) -> Path:
    """Write one run folder; returns it. ``metrics`` is written as ``metrics.json`` (with
    ``n_mixtures`` 500 unless given) when ``state`` is ``done``."""
    planned = plan_runs([method], task, [seed], preset, parse_overrides(list(overrides)), results)
    run = next(r for r in planned if r.config.method == method)
    return write_planned(run, metrics, state)


def write_planned(run: PlannedRun, metrics: dict[str, Any] | None, state: str = "done") -> Path:
    """Write the folder of an already planned run (e.g. an ablation grid point)."""
    method = run.config.method
    info = {
        "hash": run.run_hash,
        "sections": list(get_method(method).config_sections),
        "teacher_dir": str(run.teacher.run_dir) if run.teacher else None,
        "config": to_dict(run.config),
    }
    atomic_write_json(run.run_dir / "config.json", info)
    write_status(run.run_dir, state)
    if state == "done":
        atomic_write_json(run.run_dir / "metrics.json", {"n_mixtures": 500, **(metrics or {})})
    return run.run_dir
