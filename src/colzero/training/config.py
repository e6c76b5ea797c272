"""Configuration of one training phase (built from TOML / JSON by the recipe layer or the CLI).

Every class validates itself in ``__post_init__`` with messages that name the field, and
round-trips through ``from_dict`` / ``to_dict`` (plain JSON/TOML-compatible values).

Batch-size semantics: ``PhaseConfig.batch_size`` is the GLOBAL batch of one forward/backward
(split across ranks: each of W ranks takes ``batch_size / W`` consecutive rows of the same global
batch); ``gradient_accumulation`` such batches make one optimizer step. ``max_steps``,
``log_every``, ``save_every`` and ``eval_every`` count optimizer steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from colzero.data.spec import DataSource, checked_dict, plain

__all__ = ["DataSource", "LossConfig", "OptimConfig", "PhaseConfig", "load_phase_config"]

LOSS_KINDS = ("contrastive", "cached_contrastive", "distillation")
MODEL_TYPES = ("colbert", "dense")
PRECISIONS = ("auto", "fp32", "bf16")

_from_dict = checked_dict
_plain = plain


@dataclass
class OptimConfig:
    """AdamW with a linear schedule (optional warmup) and grad-norm clipping."""

    learning_rate: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.learning_rate, (int, float)) or self.learning_rate <= 0:
            raise ValueError(f"OptimConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"OptimConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        if self.eps <= 0:
            raise ValueError(f"OptimConfig.eps must be > 0, got {self.eps!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"OptimConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"OptimConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimConfig:
        return cls(**_from_dict(cls, data, "OptimConfig"))

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class LossConfig:
    """Which loss and its settings.

    ``n_negatives``: hard negatives per query for contrastive losses (0 = in-batch only; rows with
    fewer are an error before training). ``n_candidates``: candidates per query for distillation
    (rows with fewer are an error; extra ones are cut). ``mini_batch_size``: GradCache chunk size
    (``cached_contrastive`` only; None = the per-rank batch).
    """

    kind: str = "contrastive"
    temperature: float = 0.02
    learnable_temperature: bool = False
    mini_batch_size: int | None = None
    n_negatives: int = 0
    n_candidates: int = 32
    normalize_scores: bool = True

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"LossConfig.kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"LossConfig.temperature must be > 0, got {self.temperature!r}")
        if self.mini_batch_size is not None and (
            not isinstance(self.mini_batch_size, int) or self.mini_batch_size < 1
        ):
            raise ValueError(
                f"LossConfig.mini_batch_size must be a positive integer, got {self.mini_batch_size!r}"
            )
        if not isinstance(self.n_negatives, int) or self.n_negatives < 0:
            raise ValueError(f"LossConfig.n_negatives must be an integer >= 0, got {self.n_negatives!r}")
        if not isinstance(self.n_candidates, int) or self.n_candidates < 2:
            raise ValueError(f"LossConfig.n_candidates must be an integer >= 2, got {self.n_candidates!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        return cls(**_from_dict(cls, data, "LossConfig"))

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(kw_only=True)
class PhaseConfig:
    """One training phase: start model, data, loss, optimisation, and where to write.

    Keyword-only. ``model`` is a model folder or hub name (ColBERT / dense / plain encoder);
    ``model_settings`` are ColBERTConfig / DenseConfig overrides (query_length, document_length,
    prompts, ...) applied at load time. Outputs under ``output_dir``: ``checkpoint/`` (resume
    state), ``final/`` (the trained model), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``cost.json``,
    ``phase_config.json``.
    """

    name: str
    model: str
    output_dir: str
    sources: list[DataSource]
    batch_size: int
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-5))
    model_type: str = "colbert"
    model_settings: dict[str, Any] = field(default_factory=dict)
    gradient_accumulation: int = 1
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 42
    precision: str = "auto"
    log_every: int = 10
    save_every: int | None = 500
    keep_checkpoints: int = 2
    eval_every: int | None = None
    eval_datasets: list[str] = field(default_factory=list)
    drop_last: bool = True
    num_workers: int = 2
    data_cache: str | None = None

    _POSITIVE: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "gradient_accumulation",
        "epochs",
        "log_every",
        "keep_checkpoints",
    )

    def __post_init__(self) -> None:
        where = f"PhaseConfig {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"PhaseConfig.name must be a non-empty string, got {self.name!r}")
        if not self.model:
            raise ValueError(f"{where}: model (start model path or name) is required")
        if not self.output_dir:
            raise ValueError(f"{where}: output_dir is required")
        self.model = str(self.model)
        self.output_dir = str(self.output_dir)
        if not isinstance(self.sources, (list, tuple)) or not self.sources:
            raise ValueError(f"{where}: sources must be a non-empty list of data sources")
        self.sources = [s if isinstance(s, DataSource) else DataSource.from_dict(s) for s in self.sources]
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{where}: duplicate source names {dupes}")
        if isinstance(self.loss, dict):
            self.loss = LossConfig.from_dict(self.loss)
        if isinstance(self.optim, dict):
            self.optim = OptimConfig.from_dict(self.optim)
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if not isinstance(self.model_settings, dict):
            raise ValueError(f"{where}: model_settings must be a table/dict, got {self.model_settings!r}")
        for name in self._POSITIVE:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "save_every", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{where}: {name} must be a positive integer or None, got {value!r}")
        if (
            not isinstance(self.num_workers, int)
            or isinstance(self.num_workers, bool)
            or self.num_workers < 0
        ):
            raise ValueError(f"{where}: num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{where}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        distill = self.loss.kind == "distillation"
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
        if self.loss.kind == "cached_contrastive" and self.loss.mini_batch_size is None:
            self.loss.mini_batch_size = self.batch_size
        self.eval_datasets = list(self.eval_datasets)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhaseConfig:
        data = dict(_from_dict(cls, data, "PhaseConfig"))
        data["sources"] = [DataSource.from_dict(s) for s in data.get("sources", [])] or data.get("sources")
        if "loss" in data:
            data["loss"] = LossConfig.from_dict(data["loss"])
        if "optim" in data:
            data["optim"] = OptimConfig.from_dict(data["optim"])
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]  # type: ignore[misc]
        if missing:
            raise ValueError(f"PhaseConfig: missing required key(s) {missing}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        out.pop("_POSITIVE", None)
        # TOML has no null: drop None values so to_dict() output can be written as TOML too
        return _drop_none(out)

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def load_phase_config(path: str) -> PhaseConfig:
    """Read a PhaseConfig from a .toml or .json file (a ``[phase]`` table is unwrapped if present)."""
    import json
    import tomllib
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: phase config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: cannot parse ({exc})") from exc
    if "phase" in data and isinstance(data["phase"], dict) and len(data) == 1:
        data = data["phase"]
    try:
        return PhaseConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{p}: {exc}") from exc
