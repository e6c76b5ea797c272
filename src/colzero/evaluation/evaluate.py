"""``evaluate(models, datasets)``: search every dataset with every model, score with ranx, report."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colzero.data.datasets import RetrievalDataset, load_dataset
from colzero.evaluation.metrics import DEFAULT_METRICS, MAIN_METRIC, compute_metrics
from colzero.evaluation.report import bar_charts, markdown, text_table
from colzero.evaluation.retrieval import (
    RetrievalOutput,
    RetrievalSettings,
    effective_length,
    preset_settings,
    retrieve,
)
from colzero.model.encoder import Encoder
from colzero.progress import SILENT, Progress

logger = logging.getLogger(__name__)

#: a model, or a folder / hub name to load one from
ModelLike = Encoder | str | os.PathLike[str]
DatasetLike = RetrievalDataset | str | os.PathLike[str]
#: ``retriever(model, dataset, settings) -> RetrievalOutput``: exact search (:func:`retrieve`) by
#: default; ``colzero.index.retrieval.IndexRetriever`` searches through a PLAID index. Its
#: ``name`` and ``options`` attributes, when present, are recorded with the settings.
Retriever = Callable[[Encoder, RetrievalDataset, RetrievalSettings], RetrievalOutput]


@dataclass
class EvaluationResults:
    """``scores[model][dataset][metric]`` (fractions), plus timings and the settings used."""

    scores: dict[str, dict[str, dict[str, float]]]
    metrics: list[str]
    timings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def mean(self, model: str, metric: str = MAIN_METRIC) -> float:
        """Mean of ``metric`` over the datasets ``model`` was evaluated on."""
        vals = [v[metric] for v in self.scores[model].values()]
        return sum(vals) / len(vals)

    def table(self, metric: str = MAIN_METRIC) -> str:
        """A plain-text table of ``metric`` (models x datasets)."""
        return text_table(self.scores, metric)

    def to_dict(self) -> dict[str, Any]:
        """Scores, means per model, metrics, timings and settings as plain values."""
        return {
            "scores": self.scores,
            "mean": {m: {met: self.mean(m, met) for met in self.metrics} for m in self.scores},
            "metrics": self.metrics,
            "timings": self.timings,
            "settings": self.settings,
        }

    def write(self, out_dir: str | os.PathLike[str], plots: bool = True) -> dict[str, str]:
        """Write ``results.json``, ``results.md`` (and bar charts) into ``out_dir``; returns the files."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        (out / "results.json").write_text(json.dumps(data, indent=1, sort_keys=False))
        (out / "results.md").write_text(markdown(data, self.metrics))
        self.files = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
        if plots:
            for p in bar_charts(self.scores, self.metrics, out):
                self.files[f"png:{p.stem}"] = str(p)
        return self.files


def _model_label(spec: ModelLike, index: int, used: set[str]) -> str:
    if isinstance(spec, str | os.PathLike):
        label = Path(spec).name or str(spec)
    else:
        label = f"{type(spec).__name__}-{index}"
    base, n = label, 2
    while label in used:
        label, n = f"{base}-{n}", n + 1
    used.add(label)
    return label


def _load(spec: ModelLike, device: str | None) -> Encoder:
    if not isinstance(spec, str | os.PathLike):
        return spec
    from colzero.model.loading import load_model

    return load_model(spec, device=device)


def evaluate(
    models: ModelLike | Sequence[ModelLike],
    datasets: DatasetLike | Sequence[DatasetLike],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    settings: RetrievalSettings | None = None,
    per_dataset: dict[str, dict[str, Any]] | None = None,
    preset: str | None = None,
    split: str = "test",
    model_names: Sequence[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    plots: bool = True,
    device: str | None = None,
    progress: Progress = SILENT,
    retriever: Retriever | None = None,
    **setting_overrides: Any,
) -> EvaluationResults:
    """Evaluate each model on each dataset with exact search (or ``retriever``).

    ``settings`` (or keyword overrides such as ``k=100, query_length=48, use_cache=False``) apply
    to all datasets; ``per_dataset[name]`` overrides per dataset (e.g. ``{"arguana":
    {"query_length": 64}}``); ``preset="colbert-zero"`` fills SPEC section 4 query lengths where
    nothing else set one. Models may be objects or paths (loaded with :func:`colzero.load_model`).
    ``retriever`` replaces exact search (e.g. ``colzero.index.retrieval.IndexRetriever()``, PLAID
    search as the authors' published numbers). The settings of each dataset record the search and
    the query / document lengths actually used (``query_tokens``, ``document_tokens``).
    ``progress`` (:class:`colzero.progress.Progress`) hears each (model, dataset) start and result.

    Example (``model`` is any ColBERT or DenseModel; datasets may be BEIR folders or names):

    >>> from colzero.evaluation import RetrievalDataset
    >>> toy = RetrievalDataset(
    ...     "toy", ["d1", "d2"], ["the quick brown fox", "protein cell study"],
    ...     ["q1"], ["brown fox"], {"q1": {"d1": 1}})
    >>> res = evaluate(model, toy, model_names=["tiny"], use_cache=False, plots=False)
    >>> sorted(res.scores["tiny"]["toy"])
    ['map@100', 'mrr@10', 'ndcg@10', 'recall@100']
    >>> 0.0 <= res.mean("tiny") <= 1.0
    True
    """
    model_list = list(models) if isinstance(models, Sequence) and not isinstance(models, str) else [models]
    ds_list = [datasets] if isinstance(datasets, RetrievalDataset | str | os.PathLike) else list(datasets)
    if not model_list:
        raise ValueError("no model to evaluate")
    if not ds_list:
        raise ValueError("no dataset to evaluate on")
    base = settings or RetrievalSettings()
    if setting_overrides:
        base = dataclasses.replace(base, **setting_overrides)
    loaded = [load_dataset(d, split) for d in ds_list]
    used: set[str] = set()
    labels = (
        list(model_names) if model_names else [_model_label(m, i, used) for i, m in enumerate(model_list)]
    )
    if len(labels) != len(model_list):
        raise ValueError("model_names must name every model")
    scores: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, dict[str, dict[str, float]]] = {}
    used_settings: dict[str, Any] = {}
    for label, spec in zip(labels, model_list, strict=True):
        model = _load(spec, device)
        scores[label], timings[label] = {}, {}
        for ds in loaded:
            s = base
            if per_dataset and ds.name in per_dataset:
                s = dataclasses.replace(s, **per_dataset[ds.name])
            s = preset_settings(s, ds.name, preset)
            progress.evaluation_started(label, ds.name)
            t0 = time.perf_counter()
            out = (retriever or retrieve)(model, ds, s)
            t1 = time.perf_counter()
            scores[label][ds.name] = compute_metrics(ds.qrels, out.run, metrics)
            timings[label][ds.name] = {
                **out.timings,
                "metrics_s": time.perf_counter() - t1,
                "total_s": time.perf_counter() - t0,
                "cache_hit": float(out.cache_hit),
            }
            used_settings[ds.name] = {
                k: v for k, v in dataclasses.asdict(s).items() if k not in ("cache_dir", "show_progress")
            } | {
                "search": getattr(retriever, "name", "custom") if retriever is not None else "exact",
                **({"search_options": getattr(retriever, "options", None)} if retriever is not None else {}),
                "query_tokens": effective_length(model, "query", s),
                "document_tokens": effective_length(model, "document", s),
                "queries": len(ds.query_ids),
                "documents": len(ds.corpus_ids),
                "dropped_qrels": ds.dropped_qrels,
            }
            logger.info("%s on %s: %s", label, ds.name, scores[label][ds.name])
            progress.evaluation_finished(
                label, ds.name, scores[label][ds.name], timings[label][ds.name]["total_s"]
            )
    results = EvaluationResults(scores, list(metrics), timings, used_settings)
    if output_dir is not None:
        results.write(output_dir, plots=plots)
    return results


def make_eval_hook(
    datasets: DatasetLike | Sequence[DatasetLike],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    prefix: str = "eval",
    split: str = "test",
    settings: RetrievalSettings | None = None,
    preset: str | None = None,
    **setting_overrides: Any,
) -> Callable[[Encoder, int], dict[str, float]]:
    """A training dev hook: ``hook(model, step) -> {"eval/<dataset>/<metric>": value, ...,
    "eval/mean/<metric>": value}``. Datasets are loaded once; the corpus cache is off by default
    (the weights change every call). The model's train/eval mode is restored."""
    ds_list = [datasets] if isinstance(datasets, RetrievalDataset | str | os.PathLike) else list(datasets)
    loaded = [load_dataset(d, split) for d in ds_list]
    base = settings or RetrievalSettings(use_cache=False)
    if setting_overrides:
        base = dataclasses.replace(base, **setting_overrides)

    def hook(model: Encoder, step: int) -> dict[str, float]:
        was_training = model.training
        out: dict[str, float] = {}
        try:
            for ds in loaded:
                res = compute_metrics(
                    ds.qrels, retrieve(model, ds, preset_settings(base, ds.name, preset)).run, metrics
                )
                for m, v in res.items():
                    out[f"{prefix}/{ds.name}/{m}"] = v
            for m in metrics:
                out[f"{prefix}/mean/{m}"] = sum(out[f"{prefix}/{d.name}/{m}"] for d in loaded) / len(loaded)
        finally:
            model.train(was_training)
        logger.info("step %d: %s", step, {k: round(v, 4) for k, v in out.items() if "/mean/" in k})
        return out

    return hook
