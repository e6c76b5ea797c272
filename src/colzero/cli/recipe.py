"""``colzero train RECIPE`` (run a recipe or preset) and ``colzero recipes`` (list presets)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from colzero.evaluation.metrics import MAIN_METRIC


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run a training recipe (TOML file or preset name), all phases")
    p.add_argument("recipe", help="a recipe .toml file or a preset name (see `colzero recipes`)")
    p.add_argument("--output", "-o", default=None, help="run folder (default runs/<recipe name>)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation of each phase")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a recipe key, e.g. --set 'phases={\"max_steps\":2}' (repeatable)",
    )
    p.set_defaults(func=_train)
    r = subparsers.add_parser("recipes", help="list the shipped recipe presets")
    r.add_argument("--show", metavar="NAME", help="print one preset's TOML")
    r.set_defaults(func=_recipes)


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


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from colzero.training.pipeline import run_recipe

    console = Console(width=None if Console().is_terminal else 160)
    result = run_recipe(
        args.recipe,
        args.output,
        dry_run=args.dry_run,
        overrides=_overrides(args.set),
        evaluate=not args.no_eval,
        log_file=True,
    )
    if args.dry_run:
        table = Table(title=f"plan: {args.recipe} -> {result.run_dir}")
        for col in (
            "phase",
            "start",
            "loss",
            "τ",
            "lr",
            "global batch",
            "epochs/max",
            "lengths q/d",
            "sources",
        ):
            table.add_column(col)
        for row in result.plan:
            table.add_row(
                row["phase"],
                str(row["start"]),
                row["loss"],
                str(row["temperature"] or "-"),
                f"{row['lr']:g}",
                str(row["global_batch"]),
                f"{row['epochs']}/{row['max_steps'] or '-'}",
                _lengths(row["settings"]),
                ", ".join(row["sources"]),
            )
        console.print(table)
        console.print(_sources_table(args.recipe, args.set, result.run_dir))
        console.print("recipe is valid (dry run: nothing trained)")
        return 0
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0  # under torchrun, rank 0 holds the run's summary and prints it
    console.print(cost_table(result.cost))
    if result.evaluation:
        console.print(evaluation_table(result.evaluation))
    console.print(f"final model: {result.final_model}  (wall time this run {result.wall_time_s:,.0f} s)")
    return 0


def _fmt_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _fmt_num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("-" if value is None else f"{value:,.0f}")


def cost_table(summary: dict[str, Any]) -> Table:
    """The run's cost (:func:`colzero.training.cost.summarize`): one row per phase and a total."""
    table = Table(title="colzero run cost")
    for col in ("phase", "examples", "tokens", "wall time", "peak memory", "device-h"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for name, cost in [*summary["phases"].items(), ("total", summary["total"])]:
        wall = cost.get("wall_s")
        table.add_row(
            name,
            _fmt_num(cost.get("examples")),
            _fmt_num(cost.get("tokens")),
            "-" if wall is None else f"{wall:,.1f} s",
            _fmt_bytes(cost.get("peak_memory_bytes")),
            f"{cost.get('device_hours') or 0.0:.3f}",
        )
    return table


def evaluation_table(evaluation: dict[str, dict[str, dict[str, float]]], metric: str = MAIN_METRIC) -> Table:
    """``metric`` x 100 per evaluated model (rows: start, phases) and dataset (columns)."""
    datasets = sorted({d for scores in evaluation.values() for d in scores})
    table = Table(title=f"{metric} (x100)")
    table.add_column("model")
    for d in datasets:
        table.add_column(d, justify="right")
    for stage, scores in evaluation.items():
        table.add_row(stage, *[f"{100 * scores[d][metric]:.2f}" if d in scores else "-" for d in datasets])
    return table


def _sources_table(recipe_ref: str, sets: list[str], run_dir):
    from rich.table import Table

    from colzero.training.pipeline import plan_sources
    from colzero.training.recipe import load_recipe

    recipe = load_recipe(recipe_ref, run_dir=run_dir, overrides=_overrides(sets))
    rows = plan_sources(recipe, run_dir)
    table = Table(
        title="data: every source, its rows and its share of the phase (batches are drawn in proportion)"
    )
    for col in ("phase", "source", "rows", "share", "rows from"):
        table.add_column(col, justify="right" if col in ("rows", "share") else "left")
    unknown: dict[str, int] = {}
    for r in rows:
        if r["rows"] is None:
            unknown[r["phase"]] = unknown.get(r["phase"], 0) + 1
        table.add_row(
            r["phase"],
            r["source"],
            "?" if r["rows"] is None else f"{r['rows']:,}",
            "?" if r["share"] is None else f"{100 * r['share']:.2f}%",
            r["from"],
        )
    if unknown:
        table.caption = "shares are of the sources of known size; " + ", ".join(
            f"{p}: {n} source(s) of unknown size" for p, n in unknown.items()
        )
    return table


def _lengths(settings: dict) -> str:
    if "max_length" in settings:
        return str(settings["max_length"])
    return f"{settings.get('query_length', '-')}/{settings.get('document_length', '-')}"


def _recipes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from colzero.training.recipe import preset_description, preset_names, preset_text

    if args.show:
        print(preset_text(args.show), end="")
        return 0
    table = Table(title="colzero recipe presets")
    table.add_column("name")
    table.add_column("description")
    for name in preset_names():
        table.add_row(name, preset_description(name))
    Console().print(table)
    return 0
