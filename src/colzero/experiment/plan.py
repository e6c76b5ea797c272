"""Turn a grid into a store of uniquely keyed training phases and the route runs that use them.

A route run (route x seed) is a start model followed by phases. Each phase becomes a *node*
whose key is ``sha256(start key, model type, resolved model settings, resolved phase config
(seed included, output paths and logging cadence excluded), the data-preparation steps its
sources come from)`` with machine paths written as placeholders. Routes that begin with the
same phases therefore share nodes, and each node is trained once into ``EXP/phases/<key>/``
by running a one-phase recipe (``EXP/recipes/<key>.toml``) through
:func:`colzero.training.pipeline.run_recipe`, which gives resume and atomic outputs.

Data preparation steps (``[[prepare]]`` of the base recipes) are re-homed to
``EXP/data/<tool>-<hash of tool and args>/<file>`` so every route and seed shares one teacher
scoring / pair building per distinct configuration.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colzero.experiment.grid import DatasetSpec, Grid, GridError, PhaseRef, RecipeSpec
from colzero.experiment.tomlw import dumps
from colzero.training.recipe import (
    Recipe,
    RecipeError,
    merge,
    minilm_dir,
    parse_recipe,
    read_recipe_text,
    repo_root,
    shared_dir,
)

NODE_RECORD = "node.json"
#: phase fields that do not change the trained model (left out of the key)
_NOT_TRAINING = ("name", "description", "evaluate", "eval_every", "eval_datasets", "log_every", "save_every")


def short_hash(value: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:n]


class PathNormalizer:
    """Writes machine paths as placeholders so keys do not depend on where things live."""

    def __init__(self, exp_dir: Path) -> None:
        pairs = [("${exp}", str(exp_dir)), ("${shared}", str(shared_dir())), ("${repo}", str(repo_root()))]
        minilm = minilm_dir()
        if not minilm.startswith("${"):
            pairs.append(("${minilm}", minilm))
        self.pairs = sorted(pairs, key=lambda p: -len(p[1]))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            for token, path in self.pairs:
                if path and (value == path or value.startswith(path.rstrip("/") + "/")):
                    return token + value[len(path) :]
            return value
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value


def _replace_string(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, list):
        return [_replace_string(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace_string(v, old, new) for k, v in value.items()}
    return value


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    return set()


def _apply_phase_overrides(phase: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into a phase table; ``model_settings`` replaces instead of merging."""
    if not overrides:
        return phase
    rest = {k: v for k, v in overrides.items() if k != "model_settings"}
    out = merge(phase, rest) if rest else dict(phase)
    if "model_settings" in overrides:
        out["model_settings"] = dict(overrides["model_settings"])
    return out


def _plain_prompts(prompts: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (prompts or {}).items() if v}


# ---------------------------------------------------------------------- base recipes
@dataclass
class BaseRecipe:
    """A grid ``[recipes.<id>]`` entry: the adapted, validated recipe as resolved plain data."""

    id: str
    display: str
    directory: Path | None
    data: dict[str, Any]

    def phase(self, name: str) -> dict[str, Any]:
        for p in self.data["phases"]:
            if p["name"] == name:
                return copy.deepcopy(p)
        raise KeyError(name)


def load_base_recipe(
    rid: str, spec: RecipeSpec, grid: Grid, used_phases: list[str], exp_dir: Path, norm: PathNormalizer
) -> BaseRecipe:
    text, display, directory = read_recipe_text(spec.recipe)
    where = f"grid {grid.name!r}: recipes.{rid}"
    data = tomllib.loads(text)
    if spec.overrides:
        data = merge(data, spec.overrides)
    data.setdefault("model", {})
    if spec.type is not None:
        data["model"]["type"] = spec.type
    if spec.settings is not None:
        data["model"]["settings"] = dict(spec.settings)
    names = [p.get("name") for p in data.get("phases", [])]
    for name in list(spec.phases) + used_phases:
        if name not in names:
            raise GridError(f"{where}: {display} has no phase {name!r}; its phases: {names}")
    phases = []
    for p in data.get("phases", []):
        if p.get("name") not in used_phases:
            continue  # only the phases some route uses are adapted and validated
        p = _apply_phase_overrides(p, spec.phases.get(p["name"], {}))
        phases.append(_apply_phase_overrides(p, grid.phase_overrides))
    data["phases"] = phases
    data["evaluation"] = {"datasets": []}
    try:
        recipe = parse_recipe(dumps(data), f"{display} ({where})", directory, run_dir=exp_dir)
    except RecipeError as exc:
        raise GridError(str(exc)) from None
    resolved = recipe.model_dump(mode="json", exclude_none=True)
    # re-home every prepared file under EXP/data/<tool>-<hash>/ (shared by all routes and seeds)
    for i in range(len(resolved.get("prepare", []))):
        step = resolved["prepare"][i]
        digest = short_hash({"tool": step["tool"], "args": norm(step["args"])}, 12)
        new = str(exp_dir / "data" / f"{step['tool']}-{digest}" / Path(step["output"]).name)
        resolved = _replace_string(resolved, step["output"], new)
    return BaseRecipe(rid, display, directory, resolved)


def _needed_steps(prepare: list[dict[str, Any]], phase: dict[str, Any]) -> list[dict[str, Any]]:
    """The prepare steps whose outputs the phase reads, with the steps those depend on, in order."""
    wanted = _strings(phase)
    keep: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, step in enumerate(prepare):
            if i not in keep and step["output"] in wanted:
                keep.add(i)
                wanted |= _strings(step["args"])
                changed = True
    return [prepare[i] for i in sorted(keep)]


# ---------------------------------------------------------------------- nodes and runs
@dataclass
class PhaseNode:
    key: str
    seed: int
    label: str
    parent: str | None
    start: str
    start_key: str
    data: dict[str, Any]
    recipe: Recipe
    material: dict[str, Any]
    dir: Path
    recipe_file: Path
    users: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    allow_prompt_mismatch: bool = False

    @property
    def final(self) -> Path:
        return self.dir / "final"

    @property
    def record_file(self) -> Path:
        return self.dir / NODE_RECORD

    @property
    def phase_name(self) -> str:
        return self.recipe.phases[0].name

    @property
    def prompts(self) -> dict[str, str]:
        return _plain_prompts(self.recipe.prompts_for(0))

    def status(self) -> str:
        if self.record_file.is_file():
            return "done"
        if self.dir.exists():
            return "partial"
        return "todo"

    def recipe_text(self) -> str:
        data = dict(self.data, allow_prompt_mismatch=self.allow_prompt_mismatch)
        header = (
            f"colzero experiment phase {self.key} ({', '.join(self.labels)}; seed {self.seed})\n"
            f"used by: {', '.join(self.users)}"
        )
        return dumps(data, header)

    def steps(self) -> str:
        p = self.recipe.phases[0]
        return f"{p.max_steps} steps" if p.max_steps else f"{p.epochs} epoch(s)"


@dataclass
class RouteRun:
    route: str
    label: str
    seed: int
    start: str
    #: the route's own phases (node keys)
    chain: list[str]
    #: every node the final model depends on: the start route's lineage, then ``chain``
    lineage: list[str]
    model_key: str
    model_path: str
    #: how the model is evaluated when it is a grid start as it is (its declared prompts and
    #: lengths); empty for trained models, which carry their own
    eval_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.route}@{self.seed}"


@dataclass
class EvalTask:
    model_key: str
    model_path: str
    dataset: DatasetSpec
    file: Path
    users: list[str] = field(default_factory=list)
    #: prompts / lengths to evaluate with (RouteRun.eval_settings)
    model_settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    grid: Grid
    exp_dir: Path
    nodes: dict[str, PhaseNode]
    runs: list[RouteRun]
    evals: dict[tuple[str, str], EvalTask]
    normalizer: PathNormalizer

    def run(self, route: str, seed: int) -> RouteRun:
        for r in self.runs:
            if r.route == route and r.seed == seed:
                return r
        raise KeyError((route, seed))

    def evals_of(self, run: RouteRun) -> list[EvalTask]:
        return [self.evals[(run.model_key, d.name)] for d in self.grid.evaluation.datasets]

    def shared_nodes(self) -> list[PhaseNode]:
        return [n for n in self.nodes.values() if len(n.users) > 1]

    def phase_uses(self) -> int:
        """Phases the route runs need, counted per route (a shared prefix once per route)."""
        return sum(len(r.lineage) for r in self.runs)


def dataset_key(spec: DatasetSpec, norm: PathNormalizer, options: dict[str, Any] | None = None) -> str:
    """The evaluation file's key: the dataset entry, plus the grid's non-default evaluation
    options (``EvaluationSpec.options``: query-length preset, index search)."""
    fields = spec.model_dump(exclude={"name", "note"})
    return short_hash(norm({**fields, **options} if options else fields), 10)


def start_model_key(path: str, declared: dict[str, Any], norm: PathNormalizer) -> str:
    """A grid start's key: its path, and its declared prompts / lengths when it has any."""
    return "start-" + short_hash(norm({"path": path, **declared}) if declared else norm(path), 12)


def _node(
    grid: Grid,
    base: BaseRecipe,
    ref: PhaseRef,
    seed: int,
    start: str,
    start_key: str,
    parent: str | None,
    exp_dir: Path,
    norm: PathNormalizer,
    start_prompts: dict[str, str] | None = None,
) -> PhaseNode:
    phase = base.phase(ref.phase)
    phase.pop("model", None)  # the route decides where a phase starts
    phase["seed"] = seed
    phase = _apply_phase_overrides(phase, ref.overrides)
    if ref.model_settings is not None:
        phase["model_settings"] = dict(ref.model_settings)
    if ref.prompts is not None:
        phase["model_settings"] = {**phase.get("model_settings", {}), "prompts": dict(ref.prompts)}
    steps = _needed_steps(base.data.get("prepare", []), phase)
    model = {k: v for k, v in base.data["model"].items() if k not in ("description", "base_prompts")}
    if start_prompts is not None:  # the start's declared prompts: the truth for the prompt guard
        model["base_prompts"] = dict(start_prompts)
    data = {
        "name": "experiment-phase",
        "model": {**model, "base": start},
        "allow_prompt_mismatch": True,  # validated below; the flag written to disk is set later
        "prepare": steps,
        "phases": [phase],
        "evaluation": {"datasets": []},
    }
    where = f"grid {grid.name!r}: phase {ref.use} (seed {seed})"
    try:
        recipe = parse_recipe(dumps(data), where, base.directory)
    except RecipeError as exc:
        raise GridError(str(exc)) from None
    p0 = recipe.phases[0].to_dict()
    p0 = {k: v for k, v in p0.items() if v is not None}
    for k in (*_NOT_TRAINING, "model_settings", "model", "output_dir", "model_type", "data_cache"):
        p0.pop(k, None)
    for s in p0.get("sources", []):
        s.pop("origin", None)
        s.pop("rows", None)
    material = norm(
        {
            "start": start_key,
            "model_type": recipe.model.type,
            "settings": recipe.settings_for(0),
            "phase": p0,
            "prepare": [{"tool": s["tool"], "args": s["args"], "output": s["output"]} for s in steps],
        }
    )
    key = short_hash(material)
    data["name"] = f"experiment-{key}"
    return PhaseNode(
        key=key,
        seed=seed,
        label=ref.use,
        parent=parent,
        start=start,
        start_key=start_key,
        data=data,
        recipe=recipe,
        material=material,
        dir=exp_dir / "phases" / key,
        recipe_file=exp_dir / "recipes" / f"{key}.toml",
    )


def build_plan(grid: Grid, exp_dir: str | Path) -> Plan:
    """Every unique phase node (in training order) and every route run of ``grid`` in ``exp_dir``."""
    exp = Path(exp_dir).resolve()
    norm = PathNormalizer(exp)
    used: dict[str, list[str]] = {}
    for route in grid.routes:
        for ref in route.phases:
            used.setdefault(ref.recipe, [])
            if ref.phase not in used[ref.recipe]:
                used[ref.recipe].append(ref.phase)
    bases = {
        rid: load_base_recipe(rid, grid.recipes[rid], grid, phases, exp, norm) for rid, phases in used.items()
    }
    nodes: dict[str, PhaseNode] = {}
    runs: list[RouteRun] = []
    finals: dict[tuple[str, int], RouteRun] = {}
    for seed in grid.seeds:
        for route in grid.route_order():
            if route.start.startswith("route:"):
                before = finals[(route.start[6:], seed)]
                start, key_of_start = before.model_path, before.model_key
                parent = before.lineage[-1] if before.lineage else None
                lineage = list(before.lineage)
            else:
                spec = grid.starts[route.start]
                start, declared = spec.path, spec.declared()
                key_of_start = start_model_key(start, declared, norm)
                parent, lineage = None, []
            chain: list[str] = []
            model_path, model_key = start, key_of_start
            for j, ref in enumerate(route.phases):
                from_start = (
                    None if route.start.startswith("route:") or j else grid.starts[route.start].prompts
                )
                node = _node(
                    grid, bases[ref.recipe], ref, seed, model_path, model_key, parent, exp, norm, from_start
                )
                if from_start is not None and not ref.allow_prompt_mismatch:
                    declared_prompts = _plain_prompts(from_start)
                    if declared_prompts != node.prompts:
                        raise GridError(
                            f"grid {grid.name!r}: routes {route.name!r} phases[0] ({ref.use}): prompts "
                            f"{node.prompts or 'none'} differ from those starts.{route.start} declares "
                            f"({declared_prompts or 'none'}); set allow_prompt_mismatch = true on this phase "
                            "to train the misaligned route on purpose"
                        )
                if parent is not None and not ref.allow_prompt_mismatch:
                    before_prompts = nodes[parent].prompts
                    if before_prompts != node.prompts:
                        raise GridError(
                            f"grid {grid.name!r}: routes {route.name!r} phases[{j}] ({ref.use}): prompts "
                            f"{node.prompts or 'none'} differ from the previous phase's "
                            f"{before_prompts or 'none'}; set allow_prompt_mismatch = true on this phase "
                            "to train the misaligned route on purpose"
                        )
                node = nodes.setdefault(node.key, node)
                node.allow_prompt_mismatch |= ref.allow_prompt_mismatch
                node.users.append(f"{route.name}@{seed}")
                if ref.use not in node.labels:
                    node.labels.append(ref.use)
                chain.append(node.key)
                lineage.append(node.key)
                parent, model_path, model_key = node.key, str(node.final), node.key
            run = RouteRun(route.name, route.display, seed, start, chain, lineage, model_key, model_path)
            if not lineage and not route.start.startswith("route:"):  # a start evaluated as it is
                run.eval_settings = grid.starts[route.start].declared()
            for key in lineage[: len(lineage) - len(chain)]:  # the start route's phases serve this route too
                nodes[key].users.append(run.id)
            finals[(route.name, seed)] = run
            runs.append(run)
    evals: dict[tuple[str, str], EvalTask] = {}
    for run in runs:
        for ds in grid.evaluation.datasets:
            task = evals.get((run.model_key, ds.name))
            if task is None:
                key = dataset_key(ds, norm, grid.evaluation.options())
                file = exp / "eval" / run.model_key / f"{ds.name}-{key}.json"
                task = evals[(run.model_key, ds.name)] = EvalTask(
                    run.model_key, run.model_path, ds, file, model_settings=dict(run.eval_settings)
                )
            task.users.append(run.id)
    return Plan(grid, exp, nodes, runs, evals, norm)
