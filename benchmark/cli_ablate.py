"""``python -m benchmark ablate`` and ``python -m benchmark figure`` (registered by
:func:`benchmark.cli.build_parser`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.config import PRESETS, parse_overrides
from benchmark.tables.layouts import DEFAULT_TASK, FIGURE2_TASK

__all__ = ["add_ablate_parser", "add_figure_parser"]


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _cmd_ablate(args: argparse.Namespace) -> int:
    from benchmark.ablation import STUDIES, check_methods, parse_studies, plan_ablation
    from benchmark.checks import preflight, safe_state
    from benchmark.cli import print_warnings, resolve_preset
    from benchmark.runner import prepare_runs
    from benchmark.status import render_dry_run
    from benchmark.submit import cluster_options_from_args, execute_and_report

    studies = parse_studies(args.study)
    methods = _csv_list(args.methods)
    check_methods(methods, studies)
    overrides = parse_overrides(args.set or [])
    preset_note = resolve_preset(args)
    cluster = cluster_options_from_args(args)
    points, runs = plan_ablation(
        studies, methods, args.task, args.seeds, args.preset, overrides, args.results_dir
    )
    # results folder, the runs' store files and the datasets, before anything is written
    warnings = preflight(
        runs, args.results_dir, args.data_root, args.retry_failed, dry_run=args.dry_run
    )
    n_shared = sum(p.shared for p in points)
    print(
        f"benchmark ablate: studies={','.join(s.name for s in studies)} task={args.task} "
        f"preset={args.preset}{f' ({preset_note})' if preset_note else ''} "
        f"methods={','.join(methods)} seeds={args.seeds} "
        f"executor={args.executor} | {len(points)} grid points, {len(runs)} distinct runs "
        f"(teachers and the mixture reference included), {n_shared} point(s) at the preset's "
        "own value = main-table runs",
        flush=True,
    )
    if args.dry_run:
        for p in points:
            tag = " (main-table run)" if p.shared else ""
            print(
                f"  {p.study:<6} {STUDIES[p.study].label(p.value):<18} {p.method:<8} "
                f"seed {p.seed}  {safe_state(p.run):<8} {p.run.run_dir}{tag}"
            )
        size = cluster.max_array_size if cluster else 0
        print(render_dry_run(runs, args.retry_failed, args.executor, size))
        print_warnings(warnings)
        return 0
    todo = prepare_runs(runs, retry_failed=args.retry_failed, weights_dir=args.weights_dir)
    print(f"  {len(runs) - len(todo)} finished or skipped, {len(todo)} to run", flush=True)
    if not todo:
        print("nothing to do. `python -m benchmark table --which table9` shows the results.")
        return 0
    return execute_and_report(
        todo, args, cluster, f"python -m benchmark table --which table9 --task {args.task}"
    )


def add_ablate_parser(sub, seeds_type, add_job_arguments) -> None:
    """The ``ablate`` subcommand (SURF Table 9 grids through the ordinary runner)."""
    from benchmark.ablation import DEFAULT_METHODS, DEFAULT_TASK

    p = sub.add_parser(
        "ablate",
        help="SURF Table 9 ablations: EMA alpha, batch size B, hybrid teacher beta",
        description="Expand a SURF Table 9 study to its grid and run it with the ordinary "
        "runner; grid points equal to the preset's values are the main-table runs (reused).",
    )
    p.add_argument(
        "--study",
        required=True,
        help="ema (surf.ema_decay in 0,0.9,0.99,0.999,0.9999), batch (train.batch_size in "
        "1,4,16,64,256), beta (surf.beta in 0.1,0.5,1.0,linear), a comma list, or all",
    )
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="SURF variants")
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task (default {DEFAULT_TASK})")
    p.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="default: paper where jobs get a GPU, else cpu (as `run`)",
    )
    p.add_argument("--seeds", type=seeds_type, default=[0], help="comma-separated seeds")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra config overrides")
    # executor, folders, device, --weights-dir, --workers, --retry-failed, --dry-run, --wait,
    # --gpus and the SLURM options, exactly as for `run`
    add_job_arguments(p)
    p.set_defaults(func=_cmd_ablate)


def _cmd_figure(args: argparse.Namespace) -> int:
    from benchmark.checks import check_output_dir, check_output_file, check_results_dir
    from benchmark.figures import ablation_figures, separation_figure

    methods = _csv_list(args.methods) if args.methods else None
    check_results_dir(args.results_dir)
    # the output path, before any run is loaded or any figure drawn
    setting = "--out" if args.out else "the figure folder (default <results-dir>/figures)"
    fix = "Pass --out with a path that you can write to."
    if args.which == "curves":
        from benchmark.figures import curves_figure

        task = args.task or FIGURE2_TASK
        out = args.out or args.results_dir / "figures" / f"curves_{task}_{args.preset or 'any'}.png"
        check_output_file(out, setting, fix)
        print(f"wrote {curves_figure(args.results_dir, task, args.preset, out, methods)}")
        return 0
    if args.which == "ablations":
        from benchmark.ablation import parse_studies

        check_output_dir(args.out or args.results_dir / "figures", setting, fix)
        paths = ablation_figures(
            args.results_dir,
            args.out or args.results_dir / "figures",
            task=args.task or DEFAULT_TASK,
            preset=args.preset or "paper",
            methods=methods,
            studies=parse_studies(args.study),
            overrides=parse_overrides(args.set or []),
        )
        for path in paths:
            print(f"wrote {path}")
        return 0
    task = args.task or FIGURE2_TASK
    out = args.out or args.results_dir / "figures" / f"separation_{task}_{args.preset or 'any'}.png"
    check_output_file(out, setting, fix)
    path, shown = separation_figure(
        args.results_dir,
        args.data_root,
        out,
        task=task,
        preset=args.preset,
        methods=methods,
        num_mixtures=args.num_mixtures,
        device=args.device,
    )
    print(f"wrote {path} ({', '.join(shown)})")
    return 0


def add_figure_parser(sub, default_results_dir, default_data_root) -> None:
    """The ``figure`` subcommand: SURF Figure 2-style separations or Table 9 ablation plots."""
    p = sub.add_parser("figure", help="qualitative separations (SURF Fig. 2) or ablation plots")
    p.add_argument("--which", default="separation", choices=["separation", "ablations", "curves"])
    p.add_argument(
        "--task",
        default=None,
        help=f"default: {FIGURE2_TASK} (separation, as SURF Fig. 2; curves), {DEFAULT_TASK} "
        "(ablations)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="default: any (separation), paper (ablations), the one with most curves (curves)",
    )
    p.add_argument("--methods", default=None, help="comma list (default: all with finished runs)")
    p.add_argument("--num-mixtures", type=int, default=4, help="rows of the separation figure")
    p.add_argument("--study", default="all", help="ablations: ema, batch, beta or all")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="ablations: the run's overrides")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG file (separation, curves) or folder (ablations)",
    )
    p.add_argument("--results-dir", type=Path, default=default_results_dir())
    p.add_argument("--data-root", type=Path, default=default_data_root())
    p.add_argument("--device", default="cpu", help="device for separating (cpu, cuda, ...)")
    p.set_defaults(func=_cmd_figure)
