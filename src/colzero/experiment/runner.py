"""``run_experiment``: train every unique phase once, evaluate every route model once, report.

Experiment folder (``EXP``, default ``experiments/<grid name>``)::

    EXP/grid.toml, grid.resolved.json   the grid as given and as validated
    EXP/data/<tool>-<hash>/             shared data preparation (pairs, teacher scores)
    EXP/recipes/<key>.toml              the one-phase recipe of each phase node
    EXP/phases/<key>/                   its run_recipe folder (phase-1-*/, final/, ...) + node.json
    EXP/eval/<model key>/<dataset>-<hash>.json   per-query metrics of one model on one dataset
    EXP/timeline.jsonl                  one line per training / evaluation with its wall time
    EXP/logs/experiment.log
    EXP/report/report.md, results.json, *.png

Rerunning continues: finished phases (``node.json``) and cached evaluations are skipped, an
interrupted phase resumes from its last checkpoint (``run_recipe`` / ``run_phase(resume=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from colzero.experiment.evaluation import MAIN_METRIC, evaluate_model, write_json_atomic
from colzero.experiment.grid import Grid, GridError, load_grid, read_grid_text
from colzero.experiment.plan import PhaseNode, Plan, RouteRun, build_plan
from colzero.experiment.report import Collected, RouteInfo, write_report
from colzero.progress import SILENT, Progress

logger = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    exp_dir: Path
    plan: Plan
    dry_run: bool = False
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    evaluated: int = 0
    report: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0


def default_exp_dir(grid: Grid) -> Path:
    return Path("experiments") / grid.name


# ---------------------------------------------------------------------- description (dry run)
def _start_label(plan: Plan, run: RouteRun) -> str:
    route = plan.grid.route(run.route)
    if route.start.startswith("route:"):
        return f"[{plan.grid.route(route.start[6:]).display}]"
    start = plan.grid.starts[route.start]
    return (start.label or route.start) + _declared(start.declared())


def _declared(declared: dict[str, Any]) -> str:
    """`` [prompts query='search_query: ', ...; query_length 39]`` for a start's declarations."""
    parts = []
    if "prompts" in declared:
        p = declared["prompts"]
        parts.append("prompts " + (", ".join(f"{k}={v!r}" for k, v in p.items()) if p else "none"))
    parts += [f"{k} {declared[k]}" for k in ("query_length", "document_length") if k in declared]
    return f" [{'; '.join(parts)}]" if parts else ""


def describe_plan(plan: Plan) -> str:
    """What ``run_experiment`` would do: routes, shared phases, phases to train, evaluations."""
    g = plan.grid
    lines = [
        f"grid {g.name}: {len(g.routes)} routes x {len(g.seeds)} seed(s) {g.seeds} -> {plan.exp_dir}",
        "",
    ]
    lines.append("routes (phase keys for the first seed):")
    first = g.seeds[0]
    for route in g.route_order():
        run = plan.run(route.name, first)
        chain = " -> ".join(f"{plan.nodes[k].label}[{k[:8]}]" for k in run.chain) or "(no training)"
        ref = ", reference" if route.name == g.reference else ""
        lines.append(f"  {route.display} ({route.name}{ref}): {_start_label(plan, run)} -> {chain}")
    uses = plan.phase_uses()
    per_seed = len(plan.nodes) // max(1, len(g.seeds))
    lines += [
        "",
        f"phases: {uses} in the routes, {len(plan.nodes)} unique ({uses - len(plan.nodes)} reused), "
        f"about {per_seed} per seed",
    ]
    shared = plan.shared_nodes()
    if shared:
        lines.append("shared phases (trained once, reused):")
        for n in shared:
            lines.append(f"  {n.key[:8]} {' = '.join(n.labels)} seed {n.seed}: used by {', '.join(n.users)}")
    status = {n.key: n.status() for n in plan.nodes.values()}
    todo = [n for n in plan.nodes.values() if status[n.key] != "done"]
    lines += ["", f"to train: {len(todo)} of {len(plan.nodes)} phases"]
    for n in todo:
        parent = plan.nodes[n.parent].label + f"[{n.parent[:8]}]" if n.parent else n.start
        lines.append(
            f"  [{status[n.key]}] {n.key[:8]} {n.label} seed {n.seed} ({n.recipe.model.type}, "
            f"{n.steps()}, batch {n.recipe.global_batch(0)}) from {parent}"
        )
    steps = sorted({Path(s["output"]).parent.name for n in plan.nodes.values() for s in n.data["prepare"]})
    if steps:
        lines.append(f"data preparation (shared): {', '.join(steps)}")
    cached = sum(t.file.is_file() for t in plan.evals.values())
    models = len({t.model_key for t in plan.evals.values()})
    ev = g.evaluation
    lengths = (
        f"{ev.query_lengths} query-length preset" if ev.query_lengths else "the models' own query lengths"
    )
    lines += [
        "",
        f"evaluations: {models} models x {len(g.evaluation.datasets)} datasets = {len(plan.evals)} "
        f"({cached} cached); {ev.search} search, {lengths}",
    ]
    for d in g.evaluation.datasets:
        sub = f"{d.max_queries} queries (seed {d.query_sample_seed})" if d.max_queries else "all queries"
        if d.max_documents:
            sub += f", {d.max_documents} documents (smoke run: inflated scores)"
        rule = ("graded" if d.graded else f"binary, grade >= {d.min_grade}") + (
            ", self-hits kept" if d.keep_self_hits else ""
        )
        lines.append(f"  {d.name}: {d.path} [{d.split}], {sub}, {rule}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- bookkeeping
@contextmanager
def _lock(exp_dir: Path) -> Iterator[None]:
    """One experiment process per folder (a stale lock of a dead process is taken over)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    lock = exp_dir / ".lock"
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise GridError(f"{exp_dir}: another colzero experiment (pid {pid}) holds {lock}") from None
        else:
            raise GridError(
                f"{exp_dir}: another colzero experiment (pid {pid}) is running here "
                f"(delete {lock} if that process is not a colzero experiment)"
            )
    lock.write_text(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _timeline(exp_dir: Path, **event: Any) -> None:
    event = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}  # noqa: UP017
    with open(exp_dir / "timeline.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")


def read_timeline(exp_dir: Path) -> list[dict[str, Any]]:
    path = exp_dir / "timeline.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return out


# ---------------------------------------------------------------------- training and evaluation
def node_title(node: PhaseNode) -> str:
    """How progress names a phase node: its label, seed and short key."""
    return f"{node.label} seed {node.seed} [{node.key[:8]}]"


def training_order(plan: Plan) -> list[PhaseNode]:
    """The unique phase nodes in the order :func:`run_experiment` trains them."""
    keys = dict.fromkeys(k for run in plan.runs for k in run.lineage)
    return [plan.nodes[k] for k in keys]


class _NodeProgress(Progress):
    """A node's one-phase recipe run, reported as one phase (``title``) of the experiment."""

    def __init__(self, outer: Progress, title: str) -> None:
        self.outer, self.title = outer, title

    def note(self, text: str) -> None:
        self.outer.note(text)

    def phase_started(self, name: str, total_steps: int, step: int) -> None:
        self.outer.phase_started(self.title, total_steps, step)

    def phase_step(self, name: str, step: int, metrics: Any) -> None:
        self.outer.phase_step(self.title, step, metrics)

    def phase_finished(self, name: str, record: Any) -> None:
        self.outer.phase_finished(self.title, record)


def train_node(
    node: PhaseNode,
    plan: Plan,
    *,
    show_progress: bool = True,
    phase_runner: Callable[..., Path] | None = None,
    progress: Progress = SILENT,
) -> bool:
    """Train ``node`` unless done (``node.json``); returns True when it trained now. ``progress``
    hears the node's one-phase run as the phase :func:`node_title` names."""
    if node.status() == "done":
        return False
    if node.parent is not None and plan.nodes[node.parent].status() != "done":
        raise RuntimeError(f"phase {node.key} starts from {node.parent}, which is not trained")
    from colzero.training.pipeline import run_recipe
    from colzero.training.recipe import RecipeError

    node.recipe_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = node.recipe_file.with_name(f".{node.recipe_file.name}.tmp")
    tmp.write_text(node.recipe_text(), encoding="utf-8")
    tmp.replace(node.recipe_file)
    extra: dict[str, Any] = {"phase_runner": phase_runner} if phase_runner is not None else {}
    if progress is not SILENT:
        extra["progress"] = _NodeProgress(progress, node_title(node))
    t0 = time.perf_counter()
    try:
        result = run_recipe(node.recipe_file, node.dir, evaluate=False, show_progress=show_progress, **extra)
    except RecipeError as exc:
        if "different recipe" not in str(exc):
            raise
        raise GridError(
            f"phase {node.key} ({node.label}, seed {node.seed}) was started with other settings that do "
            f"not change the trained model (log_every, save_every, allow_prompt_mismatch); restore them, "
            f"or delete {node.dir} to train this phase again from the start"
        ) from exc
    wall = time.perf_counter() - t0
    total = result.cost.get("total", {})
    record = {
        "key": node.key,
        "labels": node.labels,
        "seed": node.seed,
        "start": node.start,
        "parent": node.parent,
        "users": node.users,
        "final": str(result.final_model),
        "cost": result.cost,
        "wall_time_s": float(total.get("wall_s") or 0.0),
        "device_hours": float(total.get("device_hours") or 0.0),
        "run_recipe_s_last_invocation": wall,
        "material": node.material,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
    }
    write_json_atomic(node.record_file, record)
    _timeline(
        plan.exp_dir,
        event="train",
        key=node.key,
        label=node.label,
        seed=node.seed,
        seconds=wall,
        train_s=record["wall_time_s"],
    )
    return True


def evaluate_run(
    plan: Plan, run: RouteRun, *, show_progress: bool = False, progress: Progress = SILENT
) -> int:
    """Evaluate the route model on every grid dataset not cached yet; returns how many were run."""
    tasks = [(t.dataset, t.file) for t in plan.evals_of(run) if not t.file.is_file()]
    if not tasks:
        return 0
    t0 = time.perf_counter()
    records = evaluate_model(
        run.model_path,
        tasks,
        plan.grid.evaluation,
        model_key=run.model_key,
        show_progress=show_progress,
        model_settings=run.eval_settings,
        progress=progress,
        label=run.id,
    )
    for r in records:
        if r["dataset"] in {spec.name for spec, _ in tasks}:
            _timeline(
                plan.exp_dir,
                event="evaluate",
                key=run.model_key,
                dataset=r["dataset"],
                seconds=r["timings"]["total_s"],
            )
    logger.info("evaluated %s (%d datasets, %.1f s)", run.id, len(tasks), time.perf_counter() - t0)
    return len(tasks)


# ---------------------------------------------------------------------- collection
def _node_cost(node: PhaseNode) -> dict[str, float] | None:
    if not node.record_file.is_file():
        return None
    record = json.loads(node.record_file.read_text(encoding="utf-8"))
    total = (record.get("cost") or {}).get("total", {})
    return {
        "wall_time_s": record.get("wall_time_s", 0.0),
        "device_hours": record.get("device_hours", 0.0),
        "tokens": float(total.get("tokens") or 0.0),
    }


def _rule(d: Any) -> str:
    rel = "graded" if d.graded else f"binary (grade >= {d.min_grade})"
    hits = "self-hits kept" if d.keep_self_hits else "self-hits removed"
    sub = f"; fixed random {d.max_queries} queries (seed {d.query_sample_seed})" if d.max_queries else ""
    cut = (
        f"; corpus cut to {d.max_documents} documents (smoke run: inflated scores)" if d.max_documents else ""
    )
    return f"{rel}; {hits}{sub}{cut}"


def _dotted(overrides: dict[str, Any], prefix: str = "", depth: int = 2) -> list[str]:
    keys = []
    for k, v in overrides.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 1:
            keys += _dotted(v, name + ".", depth - 1)
        else:
            keys.append(name)
    return keys


def collect(plan: Plan, run_info: dict[str, Any] | None = None) -> Collected:
    """Everything finished so far in ``plan.exp_dir``, in the report's input form."""
    g = plan.grid
    datasets: dict[str, dict[str, Any]] = {
        d.name: {"path": d.path, "rule": _rule(d), "note": d.note or ""} for d in g.evaluation.datasets
    }
    scores: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    others: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    costs: dict[str, dict[int, dict[str, float]]] = {}
    for run in plan.runs:
        for task in plan.evals_of(run):
            if not task.file.is_file():
                continue
            record = json.loads(task.file.read_text(encoding="utf-8"))
            name = task.dataset.name
            scores.setdefault(run.route, {}).setdefault(name, {})[run.seed] = record["per_query"][MAIN_METRIC]
            others.setdefault(run.route, {}).setdefault(name, {})[run.seed] = {
                m: v for m, v in record["metrics"].items() if m != MAIN_METRIC
            }
            datasets[name].update(n_queries=record["n_queries"], n_documents=record["n_documents"])
        node_costs = [_node_cost(plan.nodes[k]) for k in run.lineage]
        if all(c is not None for c in node_costs):
            own = set(run.chain)
            pairs = list(zip(run.lineage, node_costs, strict=True))
            costs.setdefault(run.route, {})[run.seed] = {
                "total_s": sum(c["wall_time_s"] for _, c in pairs),
                "own_s": sum(c["wall_time_s"] for k, c in pairs if k in own),
                "device_hours": sum(c["device_hours"] for _, c in pairs),
                "own_device_hours": sum(c["device_hours"] for k, c in pairs if k in own),
                "tokens": sum(c["tokens"] for _, c in pairs),
                "phases": len(run.lineage),
                "own_phases": len(run.chain),
            }
    routes = [RouteInfo(r.name, r.display, r.paper, r.description) for r in g.routes]
    phases = [row for node in plan.nodes.values() if (row := _clipping_row(plan, node)) is not None]
    return Collected(
        grid=g.name,
        reference=g.reference,
        seeds=list(g.seeds),
        routes=routes,
        datasets=datasets,
        scores=scores,
        costs=costs,
        findings=list(g.findings),
        statistics=g.statistics,
        description=g.description,
        notes=list(g.notes),
        paper_source=g.paper_source,
        other_metrics=others,
        run_info=run_info or {},
        phases=phases,
        evaluation={"search": g.evaluation.search, "query_lengths": g.evaluation.query_lengths},
    )


def _clipping_row(plan: Plan, node: PhaseNode) -> dict[str, Any] | None:
    """The gradient-norm record of a trained node (its one phase's cost), as a report row."""
    if not node.record_file.is_file():
        return None
    record = json.loads(node.record_file.read_text(encoding="utf-8"))
    phase_costs = list(((record.get("cost") or {}).get("phases") or {}).values())
    cost = phase_costs[0] if phase_costs else {}
    loss = node.recipe.phases[0].loss
    if node.parent is not None:
        start = plan.nodes[node.parent].label
    else:
        start = next(
            (s.label or sid for sid, s in plan.grid.starts.items() if s.path == node.start), node.start
        )
    return {
        "phase": node.label,
        "from": start,
        "seed": node.seed,
        "loss": loss.kind,
        "loss_scale": loss.loss_scale if loss.kind != "distillation" else None,
        **{
            k: cost.get(k)
            for k in (
                "max_grad_norm",
                "grad_norm_steps",
                "clipped_steps",
                "grad_norm_mean",
                "grad_norm_first",
                "grad_norm_last",
            )
        },
    }


def _run_info(
    plan: Plan, command: str | None, invocation_s: float, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    events = read_timeline(plan.exp_dir)
    train_s = sum(e.get("seconds", 0.0) for e in events if e.get("event") == "train")
    eval_s = sum(e.get("seconds", 0.0) for e in events if e.get("event") == "evaluate")
    info: dict[str, Any] = {}
    if command:
        info["command"] = command
    if overrides:
        info["grid overrides"] = ", ".join(_dotted(overrides)) + " (the notes describe the grid as shipped)"
    import torch

    info.update(
        {
            "phases trained (unique)": f"{sum(n.status() == 'done' for n in plan.nodes.values())} of {len(plan.nodes)}",
            "training time, all invocations": f"{train_s / 60:.1f} min (run_recipe calls, incl. data preparation)",
            "evaluation time, all invocations": f"{eval_s / 60:.1f} min",
            "this invocation": f"{invocation_s / 60:.1f} min",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
        }
    )
    return info


# ---------------------------------------------------------------------- entry point
def run_experiment(
    grid_ref: str | os.PathLike[str],
    exp_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    evaluate: bool = True,
    show_progress: bool = True,
    phase_runner: Callable[..., Path] | None = None,
    echo: Callable[[str], None] | None = None,
    command: str | None = None,
    progress: Progress = SILENT,
) -> ExperimentResult:
    """Run (or continue) the grid ``grid_ref`` (a TOML file or a grid preset) in ``exp_dir``.

    ``dry_run``: build and validate the plan only (see :func:`describe_plan`). ``report_only``:
    train and evaluate nothing, write the report from what is finished. ``phase_runner`` is
    passed to ``run_recipe`` (tests count and interrupt phases with it). ``progress``
    (:class:`colzero.progress.Progress`) hears every unique phase (named by :func:`node_title`,
    in :func:`training_order`) and every evaluation (the route run's id, ``route@seed``).
    """
    t_start = time.perf_counter()
    say = echo or logger.info
    grid = load_grid(grid_ref, overrides=overrides)
    exp = Path(exp_dir) if exp_dir is not None else default_exp_dir(grid)
    plan = build_plan(grid, exp)
    result = ExperimentResult(exp_dir=plan.exp_dir, plan=plan, dry_run=dry_run)
    if dry_run:
        return result
    with _lock(plan.exp_dir):
        text, _, _ = read_grid_text(grid_ref)
        (plan.exp_dir / "grid.toml").write_text(text, encoding="utf-8")
        write_json_atomic(
            plan.exp_dir / "grid.resolved.json",
            {"grid": grid.model_dump(mode="json"), "overrides": overrides},
        )
        (plan.exp_dir / "logs").mkdir(exist_ok=True)
        handler = logging.FileHandler(plan.exp_dir / "logs" / "experiment.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("colzero")
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            if not report_only:
                progress.run_started(grid.name, [node_title(n) for n in training_order(plan)])
                total = len(plan.nodes)
                for run in plan.runs:
                    for key in run.lineage:
                        node = plan.nodes[key]
                        if node.status() == "done":
                            if key not in result.skipped and key not in result.trained:
                                result.skipped.append(key)
                                progress.phase_finished(node_title(node), {"skipped": True})
                            continue
                        done = sum(n.status() == "done" for n in plan.nodes.values())
                        say(
                            f"[{done + 1}/{total}] training {node.label} seed {node.seed} ({node.key[:8]}, "
                            f"{node.steps()}) for {run.id}"
                        )
                        train_node(
                            node,
                            plan,
                            show_progress=show_progress,
                            phase_runner=phase_runner,
                            progress=progress,
                        )
                        result.trained.append(key)
                    if evaluate:
                        pending = [t for t in plan.evals_of(run) if not t.file.is_file()]
                        if pending:
                            say(f"evaluating {run.id} on {', '.join(t.dataset.name for t in pending)}")
                        result.evaluated += evaluate_run(
                            plan, run, show_progress=show_progress, progress=progress
                        )
            info = _run_info(plan, command, time.perf_counter() - t_start, overrides)
            result.report = write_report(collect(plan, info), plan.exp_dir / "report")
            say(f"report: {result.report['markdown']}")
        finally:
            root.removeHandler(handler)
            handler.close()
    result.wall_time_s = time.perf_counter() - t_start
    return result
