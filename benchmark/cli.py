"""Command line: ``python -m benchmark list | run | status | table | ablate | figure | demo``.

Run ``python -m benchmark <command> --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmark.config import PRESETS, ConfigError, parse_overrides
from benchmark.registry import PluginError, load_plugins
from benchmark.submit import add_execution_arguments

__all__ = ["main"]


def default_data_root() -> Path:
    """``$BENCHMARK_DATA_ROOT``, else ``$XDG_CACHE_HOME/surf-benchmark/data`` (``~/.cache``)."""
    if os.environ.get("BENCHMARK_DATA_ROOT"):
        return Path(os.environ["BENCHMARK_DATA_ROOT"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "surf-benchmark" / "data"


def default_results_dir() -> Path:
    """``$BENCHMARK_RESULTS_DIR``, else ``results/``."""
    return Path(os.environ.get("BENCHMARK_RESULTS_DIR", "results")).expanduser()


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--seeds takes integers like 0,1,2: {text!r}") from exc


def resolve_preset(args: argparse.Namespace) -> str | None:
    """The preset of ``run``/``ablate`` when ``--preset`` is not given: ``paper`` where jobs get
    a GPU (CUDA here with ``--device auto``/``cuda``, or SLURM jobs with ``--slurm-gpus``),
    else ``cpu``, so that a newcomer's first command finishes on a laptop. Sets
    ``args.preset`` and returns the note for the start-up line (None when it was given)."""
    if args.preset is not None:
        return None
    if args.executor == "slurm":
        gpus = bool(getattr(args, "slurm_gpus_per_job", None))
        args.preset = "paper" if gpus else "cpu"
        return "default for SLURM jobs " + ("with GPUs" if gpus else "without --slurm-gpus")
    if args.device.startswith("cuda"):
        args.preset = "paper"
        return "default with --device cuda"
    if args.device == "auto":
        import torch

        if torch.cuda.is_available():
            args.preset = "paper"
            return "default on this CUDA machine"
    args.preset = "cpu"
    return "default without CUDA; --preset paper for the paper's scale"


def _cmd_list(args: argparse.Namespace) -> int:
    from benchmark.registry import METHODS, TASKS, method_names, task_names

    print("methods:")
    for name in method_names():
        cls = METHODS.get(name)
        tags = ["unsupervised" if cls.unsupervised else "supervised"]
        if cls.generative:
            tags.append("generative")
        if cls.teacher_method:
            tags.append(f"starts from {cls.teacher_method}")
        print(f"  {name:<16} {cls.display_name:<28} ({', '.join(tags)})")
        print(f"  {'':<16} from {METHODS.origin(name)}")
    print("tasks:")
    for name in task_names():
        cls = TASKS.get(name)
        print(f"  {name:<16} {cls.display_name:<44} ({cls.modality}; from {TASKS.origin(name)})")
    print("presets:")
    for name, description in PRESETS.items():
        print(f"  {name:<16} {description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from benchmark.checks import preflight
    from benchmark.registry import method_names
    from benchmark.runner import held_elsewhere, plan_runs, prepare_runs
    from benchmark.status import render_dry_run
    from benchmark.submit import cluster_options_from_args, execute_and_report

    methods = _csv_list(args.methods)
    if methods == ["all"]:
        methods = method_names()
    overrides = parse_overrides(args.set or [])
    preset_note = resolve_preset(args)
    runs = plan_runs(methods, args.task, args.seeds, args.preset, overrides, args.results_dir)
    cluster = cluster_options_from_args(args)
    # results folder, the runs' store files and the datasets, before anything is written
    warnings = preflight(
        runs, args.results_dir, args.data_root, args.retry_failed, dry_run=args.dry_run
    )
    if args.dry_run:
        size = cluster.max_array_size if cluster else 0
        print(render_dry_run(runs, args.retry_failed, args.executor, size))
        print_warnings(warnings)
        return 0
    todo = prepare_runs(runs, retry_failed=args.retry_failed, weights_dir=args.weights_dir)
    device = args.device
    has_cuda = torch.cuda.is_available()
    device_label = device if device != "auto" else ("cuda" if has_cuda else "cpu")
    if args.preset == "paper" and device_label == "cpu" and todo:
        print(
            "WARNING: preset 'paper' trains ~16M-parameter NCSN++ networks for 200k-400k "
            "iterations at batch 256; without CUDA this takes weeks. For a real run on a CPU "
            "use --preset cpu (or --preset smoke to check the pipeline).",
            file=sys.stderr,
        )
    skipped = {r.state for r in runs if r not in todo}
    steps = ", ".join(
        f"{r.config.method}={r.config.train.steps}" for r in runs if r.config.method != "mixture"
    )
    preset = args.preset + (f" ({preset_note})" if preset_note else "")
    print(
        f"benchmark run: task={args.task} preset={preset} device={device_label} "
        f"executor={args.executor} | {len(runs)} runs ({len(runs) - len(todo)} finished, "
        f"{len(todo)} to run) | steps: {steps} | results: {args.results_dir}",
        flush=True,
    )
    failed_skipped = [r for r in runs if r not in todo and r.state in ("failed", "diverged")]
    for run in failed_skipped:
        print(f"  skipped {run.state} run {run.label} ({run.run_dir}); use --retry-failed")
    elsewhere = held_elsewhere(runs, todo)
    for run in elsewhere:
        print(f"  skipped {run.label}: being run by another process (it holds {run.run_dir})")
    del skipped
    if not todo:
        if elsewhere:
            print(
                f"nothing to do here: {len(elsewhere)} run(s) are being run by another process; "
                f"`python -m benchmark status --results-dir {args.results_dir}` shows them."
            )
        else:
            print("nothing to do: every run is finished. `python -m benchmark table` shows them.")
        return 0
    return execute_and_report(todo, args, cluster, f"python -m benchmark table --task {args.task}")


def print_warnings(warnings: list[str]) -> None:
    """Print ``warning: <line>`` on stderr for each (dry runs: what the real command would
    refuse)."""
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)


def _cmd_status(args: argparse.Namespace) -> int:
    from benchmark.checks import check_results_dir
    from benchmark.status import render_status

    check_results_dir(args.results_dir)
    print(render_status(args.results_dir))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from benchmark.checks import check_results_dir
    from benchmark.tables import render

    check_results_dir(args.results_dir)

    methods = _csv_list(args.methods) if args.methods else None
    overrides = parse_overrides(args.set or [])
    text, notes = render(
        args.results_dir,
        args.task,
        args.format,
        args.preset,
        args.which,
        methods,
        overrides,
        ci=args.ci,
        compare=args.compare,
    )
    print(text)
    if args.format == "csv":  # md, latex and html carry these notes under the tables
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.demo import build_site

    tasks = [t for item in args.task or [] for t in _csv_list(item)] or None
    out = args.out or args.results_dir / "demo"
    index, pages, notes = build_site(
        args.results_dir,
        out,
        tasks=tasks,
        preset=args.preset,
        mixtures=args.mixtures,
        data_root=args.data_root,
        seconds=args.seconds,
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for page in pages:
        audio = f", {page.audio_seconds:.1f} s audio excerpts" if page.audio_seconds else ""
        table = "" if page.table_format == "html" else f", table as {page.table_format}"
        print(
            f"wrote {page.path} ({page.size_bytes / 1e6:.2f} MB with {page.assets.name}/: "
            f"{page.mixtures} mixtures, {len(page.methods)} methods{audio}{table})"
        )
        for note in page.notes:
            print(f"  note: {note}")
    print(f"wrote {index}; open it in a browser (file://{Path(index).resolve()})")
    return 0


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every command that executes runs (``run``, ``ablate``): executor, folders,
    device, metric weights, workers and retries, then the execution options of
    :func:`benchmark.submit.add_execution_arguments` (dry run, waiting, GPU slots, SLURM)."""
    parser.add_argument(
        "--executor",
        default="local",
        choices=["local", "debug", "slurm"],
        help="submitit executor: local subprocess jobs, in-process debug, or SLURM job arrays",
    )
    parser.add_argument("--results-dir", type=Path, default=default_results_dir())
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=Path(os.environ["BENCHMARK_WEIGHTS_DIR"])
        if os.environ.get("BENCHMARK_WEIGHTS_DIR")
        else None,
        help="extra folder with the LPIPS/FID/IS weights files (the torch hub cache "
        "$TORCH_HOME/hub/checkpoints is always searched; default $BENCHMARK_WEIGHTS_DIR)",
    )
    parser.add_argument(
        "--max-parallel", type=int, default=1, help="local jobs running at once (default 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes per run for CPU-bound metrics (PESQ, ESTOI, DNSMOS, FUSS); "
        "a runtime option, not part of run hashes (default 1)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="also re-run runs that failed or diverged"
    )
    add_execution_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m benchmark``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Benchmark harness for unsupervised single-channel source separation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="registered methods, tasks and presets")
    p_list.set_defaults(func=_cmd_list)

    p_run = sub.add_parser("run", help="train and evaluate methods on a task")
    p_run.add_argument(
        "--methods", required=True, help="comma-separated method names, or 'all' (see `list`)"
    )
    p_run.add_argument("--task", required=True, help="task name (see `list`)")
    p_run.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="scale of the run (default: paper where jobs get a GPU, else cpu; see `list`)",
    )
    p_run.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds")
    p_run.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config fields, e.g. train.steps=500 surf.ema_decay=0.99; "
        "prefix with METHOD: to target one method (mixit:train.steps=3000)",
    )
    add_job_arguments(p_run)
    p_run.set_defaults(func=_cmd_run)

    p_status = sub.add_parser("status", help="state of every run in the results folder")
    p_status.add_argument("--results-dir", type=Path, default=default_results_dir())
    p_status.set_defaults(func=_cmd_status)

    p_table = sub.add_parser("table", help="paper-style results table")
    p_table.add_argument("--task", default=None, help="only this task")
    p_table.add_argument("--preset", default=None, help="only this preset")
    p_table.add_argument("--format", default="md", choices=["md", "latex", "csv", "html"])
    p_table.add_argument(
        "--which",
        default="table1",
        choices=["table1", "table2", "table9"],
        help="SURF Table 1 (PSNR, LPIPS, SSIM, FID), Table 2 (Inception Score, FID) or "
        "Table 9 (SURF ablations, see `ablate`)",
    )
    p_table.add_argument("--results-dir", type=Path, default=default_results_dir())
    p_table.add_argument("--methods", default=None, help="table9: SURF variants")
    p_table.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="table9: run overrides")
    p_table.add_argument(
        "--ci",
        action="store_true",
        help="cells as mean [low, high]: 95%% interval (one seed: BCa bootstrap over the "
        "evaluation mixtures; several seeds: t-interval over seeds)",
    )
    p_table.add_argument(
        "--compare",
        default=None,
        metavar="METHOD",
        help="add each row's difference to METHOD on the same mixtures and seeds, with its 95%% "
        "interval; bold where it excludes 0 (table1, table2)",
    )
    p_table.set_defaults(func=_cmd_table)

    p_demo = sub.add_parser(
        "demo", help="static demo site: tables, samples to see and hear, curves, provenance"
    )
    p_demo.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="T",
        help="only this task (repeat, or a comma list; default: every task with finished runs)",
    )
    p_demo.add_argument("--preset", default=None, help="only this preset (default: one page each)")
    p_demo.add_argument(
        "--mixtures",
        type=int,
        default=8,
        help="rows of the sample grid: the first N evaluation mixtures (default 8; at most the "
        "runs' eval.demo_mixtures)",
    )
    p_demo.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="longest audio excerpt in seconds (default 3; shortened to keep a page's audio "
        "within a few MB)",
    )
    p_demo.add_argument(
        "--out", type=Path, default=None, help="site folder (default <results-dir>/demo)"
    )
    p_demo.add_argument("--results-dir", type=Path, default=default_results_dir())
    p_demo.add_argument(
        "--data-root",
        type=Path,
        default=default_data_root(),
        help="only to rebuild the mixtures and targets of a page whose runs stored none",
    )
    p_demo.set_defaults(func=_cmd_demo)

    from benchmark.cli_ablate import add_ablate_parser, add_figure_parser

    add_ablate_parser(sub, _seeds, add_job_arguments)
    add_figure_parser(sub, default_results_dir, default_data_root)
    for command in sub.choices.values():
        command.add_argument(
            "--plugins",
            type=_csv_list,
            default=[],
            metavar="MODULE[,MODULE]",
            help="import these modules (which register methods/tasks) besides the built-in "
            "plug-ins and the installed entry points; also $BENCHMARK_PLUGINS",
        )
    return parser


#: what a user can cause (bad names, settings, paths, datasets, results files): printed as
#: ``error: <message>``, exit code 2. Among them, :class:`benchmark.config.ConfigError`,
#: :class:`tasks.base.DatasetError` (and ``DatasetNotFoundError``), the path and store errors of
#: :mod:`benchmark.checks` and :class:`benchmark.store.CorruptStoreFile` (all ``ValueError``).
USER_ERRORS = (KeyError, ConfigError, FileNotFoundError, ValueError, PluginError)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code.

    Errors a user can cause (:data:`USER_ERRORS`, and an ``OSError`` about a named file such as
    a folder that cannot be written) print ``error: <message>`` once on stderr and return 2,
    without a traceback. Anything else is a bug and propagates with its traceback.

    A ``run``/``ablate`` stopped by SIGINT (Ctrl-C), SIGTERM or SIGHUP prints one line saying
    what was checkpointed (:class:`benchmark.runner.Stopped`) and exits with ``128 + signal``
    (130, 143, 129); a Ctrl-C outside the execution of runs (planning, waiting for SLURM) prints
    one line and exits 130. No traceback in either case.
    """
    from benchmark.runner import Stopped

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_plugins(args.plugins)
        return args.func(args)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted (Ctrl-C); nothing is lost (submitted SLURM jobs keep running): the "
            "same command resumes where it stopped",
            file=sys.stderr,
            flush=True,
        )
        return 130
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug or a system fault
            raise
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        print(
            f"error: {where}: {exc.strerror or exc}; check the path and its permissions",
            file=sys.stderr,
        )
        return 2
