"""Projected cost in every plan: the ``--dry-run`` tables of ``colzero train`` and ``colzero
experiment`` (device-hours per phase and in total, on ``--gpus N --gpu-kind KIND`` and on this
CPU). The numbers come from :mod:`colzero.training.projection`; this module only lays them out."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table


def add_projection_arguments(p: argparse.ArgumentParser) -> None:
    """``--gpus``, ``--gpu-kind``, ``--gpu-records``, ``--no-calibrate`` (dry runs)."""
    g = p.add_argument_group("cost projection (with --dry-run)")
    g.add_argument("--gpus", type=int, default=None, help="GPUs to project the wall time on (default 8)")
    g.add_argument(
        "--gpu-kind",
        default=None,
        metavar="KIND",
        help="card to project on, e.g. H200 or H100 (default: every card with a recorded measurement)",
    )
    g.add_argument(
        "--gpu-records",
        default=None,
        metavar="DIR",
        help="folder of benchmarks/gpu_check.py records (default $COLZERO_GPU_RECORDS, else the "
        "source checkout's benchmarks/results/gpu)",
    )
    g.add_argument(
        "--no-calibrate", action="store_true", help="skip the short CPU calibration (no CPU projection)"
    )


@dataclass
class Card:
    """A card to project on: its newest record, or None (not measured) with the reason."""

    kind: str
    record: Any
    reason: str = ""

    @property
    def title(self) -> str:
        return self.record.device if self.record is not None else self.kind


def cards(args: argparse.Namespace) -> tuple[list[Card], str]:
    """The cards ``--gpu-kind`` names (or every recorded card), and where the records came from."""
    from colzero.training.projection import (
        RECORDS_ENV,
        load_records,
        newest_per_card,
        records_folder,
        records_for,
    )

    folder = records_folder(args.gpu_records)
    records = load_records(folder)
    where = (
        _shown(folder)
        if folder is not None
        else f"no records folder (set {RECORDS_ENV} or --gpu-records to a folder of gpu_check.py records)"
    )
    recorded = ", ".join(r.device for r in newest_per_card(records)) or "none"
    if args.gpu_kind:
        found = records_for(records, args.gpu_kind)
        if not found:
            return [Card(args.gpu_kind, None, f"no measurement recorded (recorded cards: {recorded})")], where
        return [Card(args.gpu_kind, found[0])], where
    if not records:
        return [Card("GPU", None, "no measurement recorded")], where
    return [Card(r.device, r) for r in newest_per_card(records)], where


def _shown(path: Any) -> str:
    """``path`` relative to the working folder when it lies below it."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _hours(value: float | None, lower: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if value >= 10 else f"{value:,.3g}"
    return ("≥ " if lower else "") + text


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f} {unit}/s" if value >= 1 else f"{value:.3g} {unit}/s"


def projection_table(
    title: str, rows: list[tuple[str, Any]], gpus: int, card_list: list[Card], cpu: Any
) -> Table:
    """One row per (label, PhaseWork): steps, examples, per card the rate per GPU, GPU-hours and
    wall hours on ``gpus`` GPUs, CPU hours here, notes; a total row (``≥`` where a phase's sources
    are partly of unknown size or a phase is not projected)."""
    from colzero.training.projection import project_gpu, reference_shapes

    reference = reference_shapes()
    totals: dict[str, list[Any]] = {}
    body: list[list[str]] = []
    for label, work in rows:
        examples = (
            "-" if work.examples is None else f"{_hours_int(work.examples, work.lower_bound)} {work.unit}"
        )
        cells = [label, _hours_int(work.steps, work.lower_bound), examples]
        notes: list[str] = []
        for i, card in enumerate(card_list):
            proj = project_gpu(work, card.record, gpus, reference)
            cells += [
                _rate(proj.rate, work.unit),
                _hours(proj.device_hours, proj.lower_bound),
                _hours(proj.wall_hours, proj.lower_bound),
            ]
            _add_total(totals, f"gpu{i}", proj)
            if proj.note and card.record is not None:
                notes.append(proj.note)
        c = cpu.project(work)
        cells.append(_hours(c.device_hours, c.lower_bound) if c.rate is not None else "not measured")
        _add_total(totals, "cpu", c)
        if work.unknown and not any(work.unknown in n for n in notes):
            notes.append(work.unknown)
        body.append([*cells, "; ".join(dict.fromkeys(notes))])
    total = ["total", "", ""]
    for i, _ in enumerate(card_list):
        hours, lower, missing = totals.get(f"gpu{i}", [None, False, True])
        total += [
            "",
            _total(hours, lower, missing),
            _total(None if hours is None else hours / gpus, lower, missing),
        ]
    hours, lower, missing = totals.get("cpu", [None, False, True])
    total += [_total(hours, lower, missing), ""]
    with_notes = any(r[-1] for r in body)

    table = Table(title=title, title_justify="left")
    table.add_column("phase", no_wrap=True)
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("examples", justify="right", no_wrap=True)
    for card in card_list:
        name = card.title.removeprefix("NVIDIA ")
        table.add_column(f"{name}\nrate/GPU", justify="right", no_wrap=True)
        table.add_column(f"{name}\nGPU-h", justify="right", no_wrap=True)
        table.add_column(f"{name} x{gpus}\nwall h", justify="right", no_wrap=True)
    table.add_column("this CPU\nhours", justify="right")
    if with_notes:
        table.add_column("notes")
    for r in body:
        table.add_row(*(r if with_notes else r[:-1]))
    table.add_row(*(total if with_notes else total[:-1]), style="bold")
    if any(w.lower_bound for _, w in rows):
        table.caption = "≥: at least; the rows of sources of unknown size (offline, or written by the run) are not counted"
    return table


def _hours_int(value: int | None, lower: bool) -> str:
    return "-" if value is None else ("≥ " if lower else "") + f"{value:,}"


def _add_total(totals: dict[str, list[Any]], key: str, proj: Any) -> None:
    entry = totals.setdefault(key, [None, False, False])
    if proj.device_hours is None:
        entry[2] = True
        return
    entry[0] = (entry[0] or 0.0) + proj.device_hours
    entry[1] = entry[1] or proj.lower_bound


def _total(hours: float | None, lower: bool, missing: bool) -> str:
    if hours is None:
        return "not measured" if missing else "-"
    return ("≥ " if (lower or missing) else "") + (f"{hours:,.1f}" if hours >= 10 else f"{hours:,.3g}")


def card_lines(card_list: list[Card], where: str, gpus: int) -> list[str]:
    """What each card's numbers come from, or why it is not measured."""
    out = [f"GPU records: {where}"]
    for card in card_list:
        if card.record is None:
            out.append(f"{card.kind}: not measured ({card.reason}); nothing is projected for it")
        else:
            r = card.record
            when = f", {r.date}" if r.date else ""
            commit = f", commit {r.commit[:10]}" if r.commit else ""
            out.append(
                f"{r.device}: {r.path.name} (torch {r.torch or '?'}{when}{commit}); wall time on {gpus} GPUs"
            )
    return out


def print_recipe_projection(console: Console, args: argparse.Namespace, recipe: Any, run_dir: Any) -> None:
    """The projection of ``colzero train RECIPE --dry-run`` (with the paper's cost beside it)."""
    from colzero.training.projection import ASSUMPTIONS, CPU_ASSUMPTIONS, recipe_work

    works = recipe_work(recipe, run_dir)
    gpus = args.gpus if args.gpus is not None else 8
    card_list, where = cards(args)
    cpu = _calibrate(console, works, not args.no_calibrate)
    title = f"projected cost: {recipe.name}"
    console.print(projection_table(title, [(w.name, w) for w in works], gpus, card_list, cpu))
    _print_notes(console, card_list, where, gpus, cpu, ASSUMPTIONS, CPU_ASSUMPTIONS)
    if recipe.paper is not None and recipe.paper.cost:
        console.print(f"paper: {recipe.paper.cost} for this recipe ({recipe.paper.note or 'as published'})")


def _calibrate(console: Console, works: list[Any], enabled: bool) -> Any:
    from colzero.training.projection import CpuCalibrations

    if not enabled:
        return CpuCalibrations(works, enabled=False)
    with console.status("calibrating this CPU (a few forward/backward passes per architecture)"):
        return CpuCalibrations(works)


def _print_notes(
    console: Console,
    card_list: list[Card],
    where: str,
    gpus: int,
    cpu: Any,
    assumptions: str,
    cpu_assumptions: str,
) -> None:
    import os

    for line in card_lines(card_list, where, gpus):
        console.print(line, soft_wrap=True, markup=False)
    for arch, cal in cpu.results.items():
        console.print(
            f"this CPU: {arch} calibrated now in {cal.seconds:.1f} s ({cal.threads} threads of {os.cpu_count()} CPUs)",
            soft_wrap=True,
            markup=False,
        )
    for arch, reason in cpu.failures.items():
        console.print(f"this CPU: not measured for {arch}: {reason}", soft_wrap=True, markup=False)
    console.print(f"assumptions: {assumptions}", soft_wrap=True, markup=False)
    console.print(f"             {cpu_assumptions}", soft_wrap=True, markup=False)


def print_experiment_projection(console: Console, args: argparse.Namespace, plan: Any) -> None:
    """The projection of ``colzero experiment GRID --dry-run``: every unique phase (trained once),
    the grid's total, and each route's phases (shared ones counted in each route that uses them)
    beside the paper's cost of that route."""
    from colzero.experiment.runner import node_title, training_order
    from colzero.training.projection import ASSUMPTIONS, CPU_ASSUMPTIONS, phase_work

    nodes = training_order(plan)
    works = {}
    for node in nodes:
        root = node
        while root.parent is not None:
            root = plan.nodes[root.parent]
        works[node.key] = phase_work(node.recipe, 0, node.dir, architecture=root.start)
        works[node.key].name = node_title(node)
    gpus = args.gpus if args.gpus is not None else 8
    card_list, where = cards(args)
    cpu = _calibrate(console, list(works.values()), not args.no_calibrate)
    todo = [n for n in nodes if n.status() != "done"]
    console.print(
        projection_table(
            f"projected cost: {plan.grid.name}, the {len(todo)} phase(s) still to train (each once)",
            [(works[n.key].name, works[n.key]) for n in todo],
            gpus,
            card_list,
            cpu,
        )
    )
    console.print(_route_table(plan, works, gpus, card_list, cpu))
    _print_notes(console, card_list, where, gpus, cpu, ASSUMPTIONS, CPU_ASSUMPTIONS)


def _route_table(plan: Any, works: dict[str, Any], gpus: int, card_list: list[Card], cpu: Any) -> Table:
    """Per route run: the GPU-hours of every phase its model depends on, beside the paper's cost."""
    from colzero.training.projection import project_gpu, reference_shapes

    reference = reference_shapes()
    table = Table(title="projected cost per route (every phase its model depends on)", title_justify="left")
    table.add_column("route")
    table.add_column("phases", justify="right")
    for card in card_list:
        table.add_column(f"{card.title}\nGPU-h", justify="right")
    table.add_column("this CPU\nhours", justify="right")
    table.add_column("paper")
    for run in plan.runs:
        route = plan.grid.route(run.route)
        cells = [run.id, str(len(run.lineage))]
        for card in card_list:
            parts = [project_gpu(works[k], card.record, gpus, reference) for k in run.lineage]
            cells.append(_sum(parts))
        cells.append(_sum([cpu.project(works[k]) for k in run.lineage]))
        paper = route.paper
        cells.append((paper.cost or paper.note or "") if paper is not None else "")
        table.add_row(*cells)
    return table


def _sum(parts: list[Any]) -> str:
    if not parts:
        return "0"
    known = [p.device_hours for p in parts if p.device_hours is not None]
    missing = len(known) < len(parts)
    if not known:
        return "not measured" if missing else "-"
    return _total(sum(known), any(p.lower_bound for p in parts), missing)
