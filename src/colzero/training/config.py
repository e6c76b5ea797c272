"""One training phase: ``PhaseConfig`` (with ``OptimConfig``, and the data's ``DataSource`` and the
losses' ``LossConfig``), the one schema of ``colzero train-phase`` and of a recipe's ``[[phases]]``.

Validated settings records (:mod:`colzero.schema`): the same rules and defaults however a phase
is built: in Python, from a phase file (:func:`load_phase_config`), or inside a recipe
(:class:`colzero.training.recipe.Recipe` holds a list of them and fills in ``model``,
``output_dir``, ``model_type`` and the recipe-level ``model_settings`` when it runs a phase).

Batch-size semantics: ``batch_size`` is the GLOBAL batch of one forward/backward (split across
ranks: each of W ranks takes ``batch_size / W`` consecutive rows of the same global batch);
``gradient_accumulation`` such batches make one optimizer step. ``max_steps``, ``log_every``,
``save_every`` and ``eval_every`` count optimizer steps.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from colzero.data.spec import DataSource
from colzero.losses.config import LossConfig
from colzero.schema import NonNegativeInt, PathText, PositiveInt, SettingsError, from_dict, settings, to_dict

__all__ = ["DataSource", "LossConfig", "OptimConfig", "PhaseConfig", "load_phase_config"]

STAGES = ("unsupervised", "supervised", "distillation")
Stage = Literal["unsupervised", "supervised", "distillation"]
ModelType = Literal["colbert", "dense"]


@settings
class OptimConfig:
    """AdamW with a linear schedule (optional warmup) and grad-norm clipping."""

    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("must be two numbers in [0, 1)")
        return value

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimConfig:
        """Validate a plain table (TOML / JSON)."""
        return from_dict(cls, data, "OptimConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (round trip with :meth:`from_dict`)."""
        return to_dict(self)


@settings(kw_only=True)
class PhaseConfig:
    """One training phase: start model, data, loss, optimisation, and where to write.

    Keyword-only. ``model`` is the start model (a folder or hub name: ColBERT, dense or plain
    encoder; in a recipe, set it only to start from another model than the previous phase's
    output); ``model_settings`` are ColBERTConfig / DenseConfig overrides (query_length,
    document_length, prompts, ...) applied at load time. Outputs under ``output_dir`` (a recipe
    sets it to ``RUN/phase-N-name``): ``checkpoints/`` (resume state), ``final/`` (the trained
    model), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``cost.json``, ``phase_config.json``.

    ``stage``, ``description`` and ``evaluate`` matter to recipes (phase order, model card,
    whether the recipe's evaluation sets are run on this phase's output). ``eval_every`` runs the
    trainer's evaluation hook every so many steps on ``eval_datasets``.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    sources: list[DataSource] = Field(min_length=1)
    batch_size: PositiveInt
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(learning_rate=1e-5))
    model: PathText | None = None
    output_dir: PathText | None = None
    model_type: ModelType = "colbert"
    model_settings: dict[str, Any] = Field(default_factory=dict)
    stage: Stage | None = None
    description: str | None = None
    gradient_accumulation: PositiveInt = 1
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    log_every: PositiveInt = 10
    #: optimizer steps between checkpoints (a killed run resumes from the last one)
    save_every: PositiveInt | None = 500
    keep_checkpoints: PositiveInt = 2
    eval_every: PositiveInt | None = None
    eval_datasets: list[str] = Field(default_factory=list)
    #: recipes: evaluate this phase's output on the recipe's evaluation sets (the last phase always is)
    evaluate: bool = True
    drop_last: bool = True
    #: DataLoader worker processes that read and tokenise batches (0: on the training thread)
    num_workers: NonNegativeInt = 2
    data_cache: PathText | None = None

    @model_validator(mode="after")
    def _coherent(self) -> PhaseConfig:
        where = f"phase {self.name!r}"
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{where}: duplicate source names {dupes}")
        distill = self.loss.kind == "distillation"
        if self.stage == "distillation" and not distill:
            raise ValueError(f"{where}: a distillation phase needs loss.kind = 'distillation'")
        if self.stage not in (None, "distillation") and distill:
            raise ValueError(f"{where}: a {self.stage} phase cannot use loss.kind = 'distillation'")
        for s in self.sources:
            if distill and not s.is_distillation:
                raise ValueError(
                    f"{where}: loss 'distillation' needs candidate_ids and teacher_scores on source {s.name!r}"
                )
            if not distill and s.positive is None:
                raise ValueError(
                    f"{where}: loss {self.loss.kind!r} needs a positive column on source {s.name!r}"
                )
            if not distill and self.loss.n_negatives > 0 and s.negatives is None:
                raise ValueError(
                    f"{where}: loss.n_negatives={self.loss.n_negatives} but source {s.name!r} has no negatives column"
                )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhaseConfig:
        """Validate a plain table (TOML / JSON)."""
        return from_dict(cls, data, "PhaseConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (round trip with :meth:`from_dict`)."""
        return to_dict(self)

    @property
    def samples_per_step(self) -> int:
        """Examples in one optimizer step: ``batch_size * gradient_accumulation``."""
        return self.batch_size * self.gradient_accumulation


def load_phase_config(path: str | Path) -> PhaseConfig:
    """Read a PhaseConfig from a .toml or .json file (a ``[phase]`` table is unwrapped if present).

    Errors name the file and the key path (``phase.toml: loss.temperature: must be > 0``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: phase config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{p}: cannot parse ({exc})") from exc
    if "phase" in data and isinstance(data["phase"], dict) and len(data) == 1:
        data = data["phase"]
    return from_dict(PhaseConfig, data, str(p))
