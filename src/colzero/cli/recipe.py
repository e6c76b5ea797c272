"""``colzero train RECIPE`` (run a recipe or preset) and ``colzero recipes`` (list presets)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.table import Table

from colzero.cli.cost import add_projection_arguments
from colzero.evaluation.metrics import MAIN_METRIC


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run a training recipe (TOML file or preset name), all phases")
    p.add_argument("recipe", help="a recipe .toml file or a preset name (see `colzero recipes`)")
    p.add_argument("--output", "-o", default=None, help="run folder (default runs/<recipe name>)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation of each phase")
    add_projection_arguments(p)
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
    from colzero.cli.live import run_view
    from colzero.cli.term import console as get_console
    from colzero.training.pipeline import run_recipe

    console = get_console()
    if args.dry_run:
        return _dry_run(args, console)
    if any(v is not None for v in (args.gpus, args.gpu_kind, args.gpu_records)) or args.no_calibrate:
        raise ValueError("--gpus, --gpu-kind, --gpu-records and --no-calibrate go with --dry-run")
    import torch.distributed as dist

    # ranks are known from the launcher's environment before run_recipe sets up the process group
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    main_rank = (dist.get_rank() if dist.is_initialized() else int(rank)) == 0
    with run_view(console, f"colzero train {args.recipe}", enabled=main_rank) as view:
        result = run_recipe(
            args.recipe,
            args.output,
            overrides=_overrides(args.set),
            evaluate=not args.no_eval,
            log_file=True,
            progress=view,
        )
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0  # under torchrun, rank 0 holds the run's summary and prints it
    console.print(cost_table(result.cost, title=f"colzero run: {args.recipe} -> {result.run_dir}"))
    if result.evaluation:
        console.print(evaluation_table(result.evaluation))
    console.print(f"final model: {result.final_model}", soft_wrap=True)
    console.print(
        f"summary:     {result.run_dir / 'summary.json'}  (wall time of this invocation "
        f"{result.wall_time_s:,.0f} s; log: {result.run_dir / 'logs' / 'pipeline.log'})",
        soft_wrap=True,
    )
    return 0


def _dry_run(args: argparse.Namespace, console: Any) -> int:
    from colzero.training.pipeline import run_recipe

    result = run_recipe(args.recipe, args.output, dry_run=True, overrides=_overrides(args.set))
    table = Table(title=f"plan: {args.recipe} -> {result.run_dir}")
    for col in ("phase", "start", "loss", "τ", "lr", "global batch", "epochs/max", "lengths q/d", "sources"):
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
    from colzero.cli.cost import print_recipe_projection
    from colzero.training.recipe import load_recipe

    recipe = load_recipe(args.recipe, run_dir=result.run_dir, overrides=_overrides(args.set))
    print_recipe_projection(console, args, recipe, result.run_dir)
    console.print("recipe is valid (dry run: nothing trained)")
    return 0


def _fmt_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _fmt_num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("-" if value is None else f"{value:,.0f}")


def _device(cost: dict[str, Any]) -> str:
    device = cost.get("device")
    if not device:
        return "-"
    world = cost.get("world_size") or 1
    return f"{str(device).split(':')[0]} x{world}" if world > 1 else str(device).split(":")[0]


def cost_table(summary: dict[str, Any], title: str = "colzero run cost") -> Table:
    """The run's cost (:func:`colzero.training.cost.summarize`): one row per phase and a total.
    Device-hours count accelerators (``wall x GPUs``); a CPU phase has none (``-``)."""
    table = Table(title=title)
    for col in ("phase", "steps", "examples", "tokens", "wall time", "peak memory", "device", "device-h"):
        table.add_column(col, justify="left" if col in ("phase", "device") else "right")
    total_steps = 0
    for name, cost in summary["phases"].items():
        total_steps += int(cost.get("steps") or 0)
        table.add_row(name, *_cost_cells(cost, cost.get("steps")))
    table.add_row("total", *_cost_cells(summary["total"], total_steps, total=True), style="bold")
    return table


def _cost_cells(cost: dict[str, Any], steps: Any, total: bool = False) -> list[str]:
    from colzero.cli.live import duration

    wall = cost.get("wall_s")
    on_gpu = total or str(cost.get("device", "")).startswith("cuda")
    hours = cost.get("device_hours")
    return [
        _fmt_num(steps),
        _fmt_num(cost.get("examples")),
        _fmt_num(cost.get("tokens")),
        duration(wall) if wall is not None else "-",
        _fmt_bytes(cost.get("peak_memory_bytes")),
        "" if total else _device(cost),
        f"{hours:.3f}" if on_gpu and hours else "-",
    ]


def evaluation_table(evaluation: dict[str, dict[str, dict[str, float]]], metric: str = MAIN_METRIC) -> Table:
    """``metric`` x 100 per evaluated model (rows: the start model, each evaluated phase, the last
    one marked ``final``) and dataset (columns), as ``summary.json`` holds them."""
    datasets = sorted({d for scores in evaluation.values() for d in scores})
    table = Table(title=f"{'nDCG@10' if metric == MAIN_METRIC else metric} (x100)")
    table.add_column("stage")
    for d in datasets:
        table.add_column(d, justify="right")
    stages = list(evaluation)
    for stage in stages:
        scores = evaluation[stage]
        label = f"final ({stage})" if stage == stages[-1] and stage != "start" else stage
        table.add_row(label, *[f"{100 * scores[d][metric]:.2f}" if d in scores else "-" for d in datasets])
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
