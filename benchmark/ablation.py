"""SURF ablations (SURF Appendix E.1, Table 9): EMA decay alpha, batch size B, hybrid teacher beta.

A study is one config field swept over the paper's grid, for the SURF variants only:

- ``ema``: ``surf.ema_decay`` alpha in {0, 0.9, 0.99, 0.999, 0.9999} (Algorithm 1 line 16);
- ``batch``: ``train.batch_size`` B in {1, 4, 16, 64, 256} (mixtures per SURF iteration);
- ``beta``: ``surf.beta`` in {0.1, 0.5, 1.0, the proposed linear schedule} (App. D.3).

Decisions (the paper states only the grids and "impact of ... on CIFAR-10"):

- The sweep changes the SURF run alone: every override is prefixed with the method
  (``surf_sr:train.batch_size=4``), so the frozen MixIT teacher is the main table's and is
  trained once. Table 9 is an ablation "for SURF", and its B = 256 row equals the proposed row,
  i.e. the teacher does not change with B.
- Batch size: iterations and learning rate stay at the preset's values (the paper says nothing
  about rescaling them, and its B = 256 row is the main-table run).
- A grid value equal to what the preset already resolves to (alpha = 0.999, B = 256, linear beta
  at ``paper``; alpha = 0.9 and linear beta at ``smoke``) adds no override at all, so that point
  *is* the main-table run: same resolved config, same hash, same folder, never recomputed.

Runs are planned, prepared and executed by :mod:`benchmark.runner`; this module only expands
the grid and reads the results back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.config import ConfigError, resolve_config, to_dict
from benchmark.tables.layouts import DEFAULT_METHODS, DEFAULT_TASK, STUDIES, Study

if TYPE_CHECKING:  # heavy imports (torch, pandas) stay out of `python -m benchmark --help`
    import pandas as pd

    from benchmark.runner import PlannedRun

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_TASK",
    "STUDIES",
    "AblationPoint",
    "Study",
    "ablation_results",
    "check_methods",
    "parse_studies",
    "plan_ablation",
    "point_overrides",
    "stored_presets",
]


def parse_studies(text: str) -> list[Study]:
    """``ema``, ``batch``, ``beta``, a comma-separated list of them, or ``all``.

    Raises:
        KeyError: an unknown study (the message lists the valid ones).
    """
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(STUDIES.values())
    for name in names:
        if name not in STUDIES:
            raise KeyError(f"unknown study {name!r}; valid studies: {', '.join(STUDIES)}, all")
    if not names:
        raise KeyError(f"--study needs a study name: {', '.join(STUDIES)} or all")
    return [STUDIES[n] for n in names]


@dataclass
class AblationPoint:
    """One cell of an ablation: a grid value for one method and seed.

    Attributes:
        study: the study's name.
        value: grid value (``--set`` string).
        method: ``surf_sr`` or ``surf_rm``.
        seed: method seed.
        run: the planned run (shared with every other study or table that resolves the same
            config).
        shared: True when the value is the preset's own, i.e. this is the main-table run.
    """

    study: str
    value: str
    method: str
    seed: int
    run: PlannedRun
    shared: bool


def _identity(cfg) -> dict:
    data = to_dict(cfg)
    data.pop("overrides")
    return data


def point_overrides(
    study: Study,
    value: str,
    method: str,
    task: str,
    seed: int,
    preset: str,
    overrides: list[tuple[str | None, str, str]],
) -> list[tuple[str | None, str, str]]:
    """The override a grid point adds to ``overrides``: ``[(method, key, value)]``, or ``[]``
    when the preset (with ``overrides``) already resolves the field to that value.

    Raises:
        benchmark.config.ConfigError: a value the config refuses.
    """
    base = resolve_config(method, task, seed, preset, overrides)
    extra = [(method, study.key, value)]
    varied = resolve_config(method, task, seed, preset, [*overrides, *extra])
    return [] if _identity(varied) == _identity(base) else extra


def plan_ablation(
    studies: list[Study],
    methods: list[str],
    task: str,
    seeds: list[int],
    preset: str,
    overrides: list[tuple[str | None, str, str]],
    results_dir: Path,
) -> tuple[list[AblationPoint], list[PlannedRun]]:
    """Expand studies x values x methods x seeds into runs (nothing is written).

    Returns:
        ``(points, runs)``: every grid cell, and the distinct runs they need (MixIT teachers and
        the ``mixture`` reference included), each once, in stage order for
        :func:`benchmark.runner.prepare_runs` / :func:`benchmark.runner.execute_plan`.

    Raises:
        KeyError: unknown method or task. benchmark.config.ConfigError: bad override.
    """
    from benchmark.runner import plan_runs

    runs: dict[Path, PlannedRun] = {}
    points: list[AblationPoint] = []
    for study in studies:
        for value in study.values:
            for method in methods:
                for seed in seeds:
                    extra = point_overrides(study, value, method, task, seed, preset, overrides)
                    planned = plan_runs(
                        [method], task, [seed], preset, [*overrides, *extra], results_dir
                    )
                    for run in planned:
                        runs.setdefault(run.run_dir, run)
                    target = next(
                        r for r in planned if r.config.method == method and r.config.seed == seed
                    )
                    points.append(
                        AblationPoint(
                            study.name, value, method, seed, runs[target.run_dir], not extra
                        )
                    )
    ordered = sorted(runs.values(), key=lambda r: (r.stage, r.config.method, r.config.seed))
    return points, ordered


def _stored(results_dir: Path, task: str, methods: list[str]) -> list:
    """The run records of ``methods`` on ``task`` (corrupt folders are left to ``status``)."""
    from benchmark.store import CorruptStoreFile, iter_records

    out = []
    for record in iter_records(results_dir):
        if record.task == task and record.method in methods:
            try:
                _ = record.raw_config  # read once: a corrupt folder is skipped here
            except (CorruptStoreFile, FileNotFoundError):
                continue
            out.append(record)
    return out


def _stored_seeds(results_dir: Path, task: str, preset: str, methods: list[str]) -> list[int]:
    return sorted({r.seed for r in _stored(results_dir, task, methods) if r.preset == preset})


def _stored_presets(results_dir: Path, task: str, methods: list[str]) -> list[str]:
    return sorted({r.preset for r in _stored(results_dir, task, methods) if r.preset})


def ablation_results(
    results_dir: Path,
    studies: list[Study],
    methods: list[str],
    task: str,
    preset: str,
    overrides: list[tuple[str | None, str, str]] | None = None,
    seeds: list[int] | None = None,
) -> pd.DataFrame:
    """Scores of every grid point found in the results store.

    The grid is planned again (seeds: those stored for the task, preset and methods, unless
    given) and each point's run folder is read, so a point shared with the main table counts in
    every study it belongs to.

    Returns:
        Long format, one row per (study, value, method, seed, metric) of a finished run, with
        columns ``study, value, label, method, seed, shared, state, metric, score, n_mixtures,
        run_dir``; plus one
        row with ``metric = None`` per unfinished point (``state`` column), so that callers can
        list them. Empty when nothing was stored.
    """
    import pandas as pd

    from benchmark.store import RunRecord, read_status

    overrides = overrides or []
    seeds = seeds if seeds is not None else _stored_seeds(results_dir, task, preset, methods)
    columns = [
        "study",
        "value",
        "label",
        "method",
        "seed",
        "shared",
        "state",
        "metric",
        "score",
        "n_mixtures",
        "run_dir",
    ]
    if not seeds:
        return pd.DataFrame(columns=columns)
    points, _ = plan_ablation(studies, methods, task, seeds, preset, overrides, results_dir)
    rows = []
    for point in points:
        study = STUDIES[point.study]
        key = {
            "study": point.study,
            "value": point.value,
            "label": study.label(point.value),
            "method": point.method,
            "seed": point.seed,
            "shared": point.shared,
            "run_dir": str(point.run.run_dir),
        }
        state = read_status(point.run.run_dir)["state"]
        if state != "done":
            rows.append({**key, "state": state, "metric": None, "score": float("nan")})
            continue
        record = RunRecord(point.run.run_dir)
        for metric, value in record.metric_values().items():  # computed metrics only
            rows.append(
                {
                    **key,
                    "state": state,
                    "metric": metric,
                    "score": value,
                    "n_mixtures": record.counts.get("n_mixtures"),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def stored_presets(results_dir: Path, task: str, methods: list[str]) -> list[str]:
    """Presets with at least one stored run of ``methods`` on ``task``."""
    return _stored_presets(results_dir, task, methods)


def check_methods(methods: list[str], studies: list[Study]) -> None:
    """Every study must sweep a setting the methods' runs have: ``train.batch_size`` applies to
    every method, ``surf.*`` to the methods with a ``surf`` section (the SURF variants, FLOSS,
    or a plug-in that reads it).

    Raises:
        benchmark.config.ConfigError: a study whose section a method's runs do not have.
    """
    from benchmark.registry import get_method

    shared = ("task", "train", "eval")
    for method in methods:
        cls = get_method(method)
        sections = {*shared, *cls.config_sections, *getattr(cls, "config_schema", {})}
        for study in studies:
            section = study.key.split(".")[0]
            if section not in sections:
                usable = [s.name for s in STUDIES.values() if s.key.split(".")[0] in sections]
                raise ConfigError(
                    f"study {study.name!r} sweeps {study.key}, but {method!r} runs have no "
                    f"{section!r} section (SURF Table 9 ablates --methods "
                    f"{','.join(DEFAULT_METHODS)}); studies that apply to {method!r}: "
                    f"{', '.join(usable) or 'none'}"
                )
