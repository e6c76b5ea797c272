"""Retrieval evaluation: datasets, exact search with a corpus cache, ranx metrics, reports."""

from colzero.data.datasets import DatasetError, RetrievalDataset, load_dataset
from colzero.evaluation.evaluate import EvaluationResults, evaluate, make_eval_hook
from colzero.evaluation.metrics import DEFAULT_METRICS, MAIN_METRIC, compute_metrics
from colzero.evaluation.retrieval import (
    QUERY_LENGTH_PRESETS,
    RetrievalSettings,
    default_cache_dir,
    retrieve,
)

__all__ = [
    "DEFAULT_METRICS",
    "MAIN_METRIC",
    "QUERY_LENGTH_PRESETS",
    "DatasetError",
    "EvaluationResults",
    "RetrievalDataset",
    "RetrievalSettings",
    "compute_metrics",
    "default_cache_dir",
    "evaluate",
    "load_dataset",
    "make_eval_hook",
    "retrieve",
]
