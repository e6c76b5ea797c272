"""``colzero experiment GRID``: run a grid of training routes x seeds and write the report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run a grid of training routes over seeds (shared prefixes trained once) and report",
        description="Run or continue an experiment grid: every unique phase is trained once, every "
        "route's model is evaluated on the grid's datasets, and EXP/report/ gets report.md, "
        "results.json and PNG charts. Rerun the same command to continue after a kill.",
    )
    p.add_argument("grid", nargs="?", help="a grid .toml file or a grid preset (see --list)")
    p.add_argument("--output", "-o", default=None, help="experiment folder (default experiments/<grid name>)")
    p.add_argument("--dry-run", action="store_true", help="print routes, shared phases and what would run")
    p.add_argument("--report-only", action="store_true", help="train nothing; report what is finished")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the grid presets")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a grid key, e.g. --set 'seeds=[42]' --set 'phase_overrides={\"max_steps\":2}'",
    )
    p.set_defaults(func=_run)


def _overrides(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=JSON, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parsed
    return out


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from colzero.experiment import describe_plan, grid_preset_names, run_experiment
    from colzero.experiment.grid import load_grid

    console = Console()
    if args.list or not args.grid:
        for name in grid_preset_names():
            grid = load_grid(name)
            console.print(
                f"{name}: {grid.description.strip().splitlines()[0] if grid.description else ''}",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
        return 0 if args.list else 2
    # the command that reproduces the results (a --report-only rerun reports the same runs)
    argv = [a for a in sys.argv[1:] if a not in ("--report-only", "--no-progress")]
    command = "colzero " + " ".join(shlex.quote(a) for a in argv) if argv else None
    result = run_experiment(
        args.grid,
        args.output,
        overrides=_overrides(args.set),
        dry_run=args.dry_run,
        report_only=args.report_only,
        evaluate=not args.no_eval,
        show_progress=not args.no_progress,
        echo=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
        command=command,
    )
    if args.dry_run:
        console.print(describe_plan(result.plan), highlight=False, markup=False, soft_wrap=True)
        return 0
    console.print(
        f"trained {len(result.trained)} phase(s), reused {len(result.skipped)}, ran {result.evaluated} "
        f"evaluation(s) in {result.wall_time_s / 60:.1f} min; report in {result.report.get('markdown')}",
        highlight=False,
        markup=False,
    )
    return 0
