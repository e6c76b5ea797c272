"""``colzero experiment GRID``: run a grid of training routes x seeds and write the report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from colzero.cli.cost import add_projection_arguments


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
    add_projection_arguments(p)
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
    from colzero.cli.live import run_view
    from colzero.cli.term import console as get_console
    from colzero.experiment import describe_plan, grid_preset_names, run_experiment
    from colzero.experiment.grid import load_grid

    console = get_console()
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
    if not args.dry_run and (
        any(v is not None for v in (args.gpus, args.gpu_kind, args.gpu_records)) or args.no_calibrate
    ):
        raise ValueError("--gpus, --gpu-kind, --gpu-records and --no-calibrate go with --dry-run")
    # the command that reproduces the results (a --report-only rerun reports the same runs)
    argv = [a for a in sys.argv[1:] if a not in ("--report-only", "--no-progress")]
    command = "colzero " + " ".join(shlex.quote(a) for a in argv) if argv else None
    live = not (args.dry_run or args.report_only or args.no_progress)

    def echo(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    with run_view(console, f"colzero experiment {args.grid}", enabled=live) as view:
        result = run_experiment(
            args.grid,
            args.output,
            overrides=_overrides(args.set),
            dry_run=args.dry_run,
            report_only=args.report_only,
            evaluate=not args.no_eval,
            show_progress=False,  # the view (or, with --no-progress, nothing) replaces the bars
            echo=None if live else echo,  # the view says what runs; its steps are logged (-v)
            command=command,
            progress=view,
        )
    if args.dry_run:
        console.print(describe_plan(result.plan), highlight=False, markup=False, soft_wrap=True)
        from colzero.cli.cost import print_experiment_projection

        print_experiment_projection(console, args, result.plan)
        return 0
    results_file = result.report.get("json")
    if results_file and Path(results_file).is_file():
        results = json.loads(Path(results_file).read_text(encoding="utf-8"))
        console.print(routes_table(results))
        console.print(verdict_table(results))
    console.print(
        f"trained {len(result.trained)} phase(s), reused {len(result.skipped)}, ran {result.evaluated} "
        f"evaluation(s) in {result.wall_time_s / 60:.1f} min; report in {result.report.get('markdown')}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return 0


def _interval(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['estimate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def _cells(*values: str) -> list[Text]:
    return [Text(v) for v in values]


def routes_table(results: dict) -> Table:
    """Mean nDCG@10 (x100, with its interval) per route beside the paper's number and cost."""
    conf = round(100 * results["statistics"]["confidence"])
    table = Table(title=f"{results['grid']}: mean nDCG@10 over {len(results['datasets'])} dataset(s)")
    table.add_column("route")
    table.add_column(escape(f"ours [{conf}% interval]"), justify="right")
    table.add_column("paper", justify="right")
    table.add_column("paper cost")
    for entry in results["routes"].values():
        paper = entry.get("paper") or {}
        ndcg = paper.get("ndcg10")
        table.add_row(
            *_cells(
                entry["label"],
                _interval(entry.get("mean")),
                "-" if ndcg is None else f"{ndcg:.2f}",
                paper.get("cost") or "",
            )
        )
    return table


def verdict_table(results: dict) -> Table:
    """The verdict on each of the paper's findings (as in the report)."""
    table = Table(title="verdicts on the paper's findings")
    for col in ("finding", "paper", "ours: A - B [interval]", "p", "verdict"):
        table.add_column(escape(col), justify="right" if col in ("ours: A - B [interval]", "p") else "left")
    for f in results["findings"]:
        if f["verdict"] == "not run":
            table.add_row(*_cells(f["claim"], str(f["paper"]), "-", "-", "not run"))
            continue
        diff = f"{f['difference_estimate']:+.2f} [{f['difference_low']:+.2f}, {f['difference_high']:+.2f}]"
        p = f.get("p_value")
        p_text = "-" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")
        style = {"reproduced": "green", "not reproduced": "red"}.get(f["verdict"], "yellow")
        table.add_row(*_cells(f["claim"], str(f["paper"]), diff, p_text), Text(f["verdict"], style=style))
    return table
