"""Experiment grids: routes (a start model + ordered training phases) x seeds x evaluation sets.

A grid file (TOML) holds::

    name, description, notes, seeds = [42, 43], reference = "<route>"   # tested against
    [starts.<id>]          path = "..." (model folder or hub name), label, prompts = {query, document}
                           and query_length / document_length (explicit: they win over the saved
                           config when the model is evaluated as it is and in the prompt guard)
    [recipes.<id>]         recipe = "<preset or .toml>" and how to adapt it:
                           type = "colbert"|"dense", settings = {...} (REPLACES model.settings),
                           overrides = {...} (merged into the recipe, colzero.training.recipe.merge),
                           [recipes.<id>.phases.<phase name>] merged into that phase, except
                           model_settings, which REPLACES the phase's model_settings
    phase_overrides = {...}  merged into every phase of every recipe last (same rule)
    [[routes]]             name, label, start = "<start id>" | "route:<route name>" (that route's
                           final model, same seed), phases = ["<recipe id>:<phase name>" | {use =
                           "...", prompts = {...}, model_settings = {...}, overrides = {...},
                           allow_prompt_mismatch = true}], paper = {ndcg10, cost, note}
    [evaluation]           batch_size, k, query_lengths = "colbert-zero" (per-dataset query lengths),
                           search = "exact" | "index"
    [[evaluation.datasets]] name, path, split, max_queries + query_sample_seed (a fixed random
                           query subset), keep_self_hits, graded / min_grade, query_length,
                           document_length, note
    [statistics]           confidence, n_resamples, seed
    [[findings]]           id, claim, better = "<route>", worse = "<route>", paper = "..."

Placeholders: those of recipes (``${shared}``, ``${minilm}``, ``${repo}``) and ``${grid_dir}``.
Errors name the grid file and the key path.
"""

from __future__ import annotations

import importlib.resources
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from colzero.training.recipe import merge, placeholder_values, resolve_placeholders

_NAME = r"^[A-Za-z0-9_.-]+$"


class GridError(ValueError):
    """A grid that cannot be read or does not validate; the message names file and key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartSpec(_Strict):
    path: str = Field(min_length=1)
    label: str | None = None
    #: the prompts the model was trained with (explicit settings win over its saved config, e.g.
    #: a sentence-transformers config saved with empty prompts): applied when the model is
    #: evaluated as it is, and the truth for the prompt guard of the phases that start from it
    prompts: dict[str, str] | None = None
    #: token lengths to evaluate the model with as it is (None: its own)
    query_length: int | None = Field(default=None, ge=2)
    document_length: int | None = Field(default=None, ge=2)

    def declared(self) -> dict[str, Any]:
        """The explicit settings (prompts, lengths) this entry declares."""
        out: dict[str, Any] = {}
        if self.prompts is not None:  # query first, then document, then any other role
            order = sorted(self.prompts, key=lambda k: ({"query": 0, "document": 1}.get(k, 2), k))
            out["prompts"] = {k: self.prompts[k] for k in order if self.prompts[k]}
        for key in ("query_length", "document_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class RecipeSpec(_Strict):
    recipe: str = Field(min_length=1)
    type: Literal["colbert", "dense"] | None = None
    settings: dict[str, Any] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = Field(default_factory=dict)


class PhaseRef(_Strict):
    use: str = Field(pattern=r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")
    prompts: dict[str, str] | None = None
    model_settings: dict[str, Any] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    allow_prompt_mismatch: bool = False

    @property
    def recipe(self) -> str:
        return self.use.split(":", 1)[0]

    @property
    def phase(self) -> str:
        return self.use.split(":", 1)[1]


class PaperNumbers(_Strict):
    #: the published BEIR nDCG@10 (x100) of this route
    ndcg10: float | None = None
    cost: str | None = None
    note: str | None = None


class RouteSpec(_Strict):
    name: str = Field(pattern=_NAME)
    label: str | None = None
    description: str | None = None
    start: str = Field(min_length=1)
    phases: list[PhaseRef] = Field(default_factory=list)
    paper: PaperNumbers | None = None

    @field_validator("phases", mode="before")
    @classmethod
    def _phase_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"use": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def display(self) -> str:
        return self.label or self.name


class DatasetSpec(_Strict):
    name: str = Field(pattern=_NAME)
    path: str = Field(min_length=1)
    split: str = "test"
    #: evaluate a fixed random subset of this many queries (random.Random(query_sample_seed).sample
    #: of the sorted query ids); None = every query of the split
    max_queries: int | None = Field(default=None, ge=1)
    query_sample_seed: int = 13
    #: keep only this many documents (the selected queries' judged documents first, then corpus
    #: order; RetrievalDataset.subset) - for smoke runs: scores are inflated, never quote them
    max_documents: int | None = Field(default=None, ge=1)
    #: let a query retrieve the document with its own id (collections whose ids collide, e.g. Vaswani)
    keep_self_hits: bool = False
    #: graded relevance as in the qrels; false = binary with grade >= min_grade relevant
    graded: bool = True
    min_grade: int = Field(default=1, ge=1)
    query_length: int | None = Field(default=None, ge=2)
    document_length: int | None = Field(default=None, ge=2)
    note: str | None = None


class EvaluationSpec(_Strict):
    datasets: list[DatasetSpec] = Field(min_length=1)
    batch_size: int = Field(default=64, ge=1)
    k: int = Field(default=100, ge=10)
    #: per-dataset query lengths from a preset (``"colbert-zero"``: SPEC section 4, as the authors'
    #: published per-dataset numbers); a dataset's own ``query_length`` wins; None: the model's own
    query_lengths: str | None = None
    #: ``"exact"`` search, or ``"index"``: through a PLAID index built per model and dataset
    #: (``colzero.index``; the authors' published numbers use PLAID), ColBERT models only
    search: Literal["exact", "index"] = "exact"

    @field_validator("query_lengths")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from colzero.evaluation.retrieval import QUERY_LENGTH_PRESETS

        if value is not None and value not in QUERY_LENGTH_PRESETS:
            raise ValueError(f"unknown query-length preset {value!r}; known: {sorted(QUERY_LENGTH_PRESETS)}")
        return value

    def options(self) -> dict[str, Any]:
        """The settings that change every score (part of each evaluation's cache key when set)."""
        out: dict[str, Any] = {}
        if self.query_lengths is not None:
            out["query_lengths"] = self.query_lengths
        if self.search != "exact":
            out["search"] = self.search
        return out

    @model_validator(mode="after")
    def _unique(self) -> EvaluationSpec:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        return self


class StatisticsSpec(_Strict):
    confidence: float = Field(default=0.95, gt=0, lt=1)
    n_resamples: int = Field(default=10_000, ge=100)
    seed: int = 0


class FindingSpec(_Strict):
    id: str = Field(pattern=_NAME)
    claim: str
    better: str
    worse: str
    paper: str = ""


class Grid(_Strict):
    name: str = Field(pattern=_NAME)
    description: str = ""
    notes: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(min_length=1)
    reference: str
    paper_source: str = ""
    starts: dict[str, StartSpec] = Field(default_factory=dict)
    recipes: dict[str, RecipeSpec] = Field(default_factory=dict)
    phase_overrides: dict[str, Any] = Field(default_factory=dict)
    routes: list[RouteSpec] = Field(min_length=1)
    evaluation: EvaluationSpec
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec)
    findings: list[FindingSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Grid:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be unique, got {names}")
        if self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not a route; routes: {names}")
        for i, route in enumerate(self.routes):
            if route.start.startswith("route:"):
                if route.start[6:] not in names:
                    raise ValueError(f"routes[{i}].start: no route named {route.start[6:]!r}")
            elif route.start not in self.starts:
                raise ValueError(
                    f"routes[{i}].start: {route.start!r} is neither a [starts] entry "
                    f"({sorted(self.starts)}) nor 'route:<name>'"
                )
            for j, ref in enumerate(route.phases):
                if ref.recipe not in self.recipes:
                    raise ValueError(
                        f"routes[{i}].phases[{j}]: no recipe {ref.recipe!r} in [recipes] ({sorted(self.recipes)})"
                    )
            if not route.phases and route.start.startswith("route:"):
                raise ValueError(f"routes[{i}]: a route without phases must start from a [starts] model")
        for i, f in enumerate(self.findings):
            for side in ("better", "worse"):
                if getattr(f, side) not in names:
                    raise ValueError(f"findings[{i}].{side}: no route named {getattr(f, side)!r}")
        self.route_order()  # raises on a cycle
        return self

    def route(self, name: str) -> RouteSpec:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)

    def route_order(self) -> list[RouteSpec]:
        """Routes with every ``route:<name>`` start before the routes that use it."""
        done: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                raise ValueError(f"routes start from each other in a cycle: {' -> '.join([*visiting, name])}")
            visiting.append(name)
            start = self.route(name).start
            if start.startswith("route:"):
                visit(start[6:])
            visiting.pop()
            done.append(name)

        for r in self.routes:
            visit(r.name)
        return [self.route(n) for n in done]


# ---------------------------------------------------------------------- loading
def grid_preset_names() -> list[str]:
    files = importlib.resources.files("colzero.recipes") / "grids"
    if not files.is_dir():
        return []
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def read_grid_text(name_or_path: str | os.PathLike[str]) -> tuple[str, str, Path | None]:
    """(toml text, display name, directory) of a grid file or a grid preset name."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise GridError(f"{path}: grid file not found")
        return path.read_text(encoding="utf-8"), path.name, path.resolve().parent
    res = importlib.resources.files("colzero.recipes") / "grids" / f"{name_or_path}.toml"
    if not res.is_file():
        raise GridError(
            f"no grid file or grid preset named {str(name_or_path)!r}; presets: {', '.join(grid_preset_names())}"
        )
    return res.read_text(encoding="utf-8"), f"{name_or_path}.toml", None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def parse_grid(
    text: str,
    display: str = "grid.toml",
    directory: Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
) -> Grid:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{display}: invalid TOML: {exc}") from None
    if overrides:
        data = merge(data, overrides)
    values = placeholder_values(directory)
    if directory is not None:
        values["grid_dir"] = str(directory)
    # recipe-level placeholders such as ${run} stay for the recipes to resolve
    data = resolve_placeholders(data, values)
    try:
        return Grid.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "unknown key"
            elif err.get("type") == "missing":
                msg = "required key is missing"
            lines.append(f"{display}: {_loc(loc)}: {msg}" if loc else f"{display}: {msg}")
        raise GridError("\n".join(lines)) from None


def load_grid(name_or_path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None) -> Grid:
    """Read a grid file or preset, merge ``overrides`` (nested dict), resolve placeholders, validate."""
    text, display, directory = read_grid_text(name_or_path)
    return parse_grid(text, display, directory, overrides=overrides)
