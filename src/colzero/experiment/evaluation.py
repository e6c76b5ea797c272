"""Per-query evaluation of one model on the grid's datasets, cached as JSON per (model, dataset).

Every route's model goes through the same code: :func:`colzero.evaluation.load_dataset`, the
grid's query subset and relevance rule, exact search with :func:`colzero.evaluation.retrieve` or,
with ``[evaluation] search = "index"``, search through a PLAID index
(:class:`colzero.index.retrieval.IndexRetriever`), and :func:`colzero.evaluation.compute_metrics`
with ``per_query=True`` (ranx; BEIR / pytrec_eval semantics). The cache file holds the per-query
values the statistics need.

Lengths and prompts, the first that is set wins: the dataset entry's ``query_length`` /
``document_length``; the ``[evaluation] query_lengths`` preset (per-dataset query lengths, e.g.
``"colbert-zero"``); a grid start's declared ``prompts`` / lengths (a start evaluated as it is,
e.g. the dense baseline whose saved config has no prompts); the model's own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from colzero.data.datasets import RetrievalDataset
from colzero.experiment.grid import DatasetSpec, EvaluationSpec
from colzero.progress import SILENT, Progress

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "map@100")
MAIN_METRIC = "ndcg@10"


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def prepare_dataset(ds: RetrievalDataset, spec: DatasetSpec) -> RetrievalDataset:
    """The grid's view of a dataset: the fixed query subset and the relevance rule.

    Subset: ``random.Random(query_sample_seed).sample(sorted(query ids), max_queries)``, kept in
    the dataset's order; the corpus is untouched (scores stay comparable with the full set's
    difficulty) unless ``max_documents`` is set (smoke runs only). ``graded = false``: grade >=
    ``min_grade`` becomes 1, anything else 0.
    """
    qids = list(ds.query_ids)
    if spec.max_queries is not None and spec.max_queries < len(qids):
        chosen = set(random.Random(spec.query_sample_seed).sample(sorted(qids), spec.max_queries))
        qids = [q for q in qids if q in chosen]
    qrels = {q: dict(ds.qrels[q]) for q in qids}
    if not spec.graded:
        qrels = {q: {d: int(g >= spec.min_grade) for d, g in docs.items()} for q, docs in qrels.items()}
    texts = dict(zip(ds.query_ids, ds.query_texts, strict=True))
    out = dataclasses.replace(ds, query_ids=qids, query_texts=[texts[q] for q in qids], qrels=qrels)
    if spec.max_documents is not None and spec.max_documents < len(out.corpus_ids):
        out = dataclasses.replace(out.subset(n_docs=spec.max_documents), name=ds.name)
    return out


def retrieval_settings(
    spec: DatasetSpec,
    ev: EvaluationSpec,
    show_progress: bool = False,
    model_settings: dict[str, Any] | None = None,
):
    """The search settings of one dataset (lengths and prompts as the module docstring orders them)."""
    from colzero.evaluation import RetrievalSettings
    from colzero.evaluation.retrieval import preset_settings

    declared = model_settings or {}
    settings = preset_settings(
        RetrievalSettings(
            k=ev.k,
            query_length=spec.query_length,
            document_length=spec.document_length,
            batch_size=ev.batch_size,
            remove_self_hits=not spec.keep_self_hits,
            use_cache=False,  # every model is evaluated once; a corpus cache would only fill the disk
            show_progress=show_progress,
        ),
        spec.name,
        ev.query_lengths,
    )
    settings = settings.replace(
        query_length=settings.query_length or declared.get("query_length"),
        document_length=settings.document_length or declared.get("document_length"),
    )
    if "prompts" in declared:  # declared: applied as given ("" = none), not the saved config's
        prompts = declared["prompts"]
        settings = dataclasses.replace(
            settings, query_prompt=prompts.get("query", ""), document_prompt=prompts.get("document", "")
        )
    return settings


def evaluate_model(
    model_path: str,
    tasks: list[tuple[DatasetSpec, Path]],
    ev: EvaluationSpec,
    *,
    model_key: str,
    show_progress: bool = False,
    model_settings: dict[str, Any] | None = None,
    progress: Progress = SILENT,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``model_path`` on every (dataset, cache file) not cached yet; returns the records.
    ``model_settings``: a start's declared prompts / lengths (module docstring); ``progress`` hears
    each dataset's start and result, the model named ``label`` (default its key)."""
    from colzero.evaluation import compute_metrics, load_dataset, retrieve
    from colzero.evaluation.retrieval import effective_length
    from colzero.model.loading import load_model

    search: Any = retrieve
    if ev.search == "index":
        from colzero.index.retrieval import IndexRetriever

        search = IndexRetriever()

    todo = [(spec, file) for spec, file in tasks if not file.is_file()]
    records = [json.loads(file.read_text(encoding="utf-8")) for _, file in tasks if file.is_file()]
    if not todo:
        return records
    t0 = time.perf_counter()
    model = load_model(model_path)
    load_s = time.perf_counter() - t0
    for spec, file in todo:
        progress.evaluation_started(label or model_key, spec.name)
        t0 = time.perf_counter()
        ds = prepare_dataset(load_dataset(spec.path, split=spec.split), spec)
        settings = retrieval_settings(spec, ev, show_progress, model_settings)
        t1 = time.perf_counter()
        out = search(model, ds, settings)
        t2 = time.perf_counter()
        per_query = compute_metrics(ds.qrels, out.run, METRICS, per_query=True)
        timings = {"dataset_load_s": t1 - t0, **out.timings, "metrics_s": time.perf_counter() - t2}
        record = {
            "model_key": model_key,
            "model": str(model_path),
            "model_class": type(model).__name__,
            "dataset": spec.name,
            "path": spec.path,
            "split": spec.split,
            "n_queries": len(ds.query_ids),
            "n_documents": len(ds.corpus_ids),
            "settings": {
                k: v
                for k, v in dataclasses.asdict(settings).items()
                if k not in ("cache_dir", "show_progress")
            }
            | {
                "max_queries": spec.max_queries,
                "query_sample_seed": spec.query_sample_seed,
                "max_documents": spec.max_documents,
                "search": ev.search
                if not out.timings.get("exact_search_fallback")
                else "exact (dense model)",
                "query_lengths": ev.query_lengths,
                "query_tokens": effective_length(model, "query", settings),
                "document_tokens": effective_length(model, "document", settings),
                "query_prompt_used": settings.query_prompt
                if settings.query_prompt is not None
                else model.config.prompt_for("query"),
                "document_prompt_used": settings.document_prompt
                if settings.document_prompt is not None
                else model.config.prompt_for("document"),
            },
            "metrics": {m: sum(v.values()) / len(v) for m, v in per_query.items()},
            "per_query": per_query,
            "timings": {**timings, "model_load_s": load_s, "total_s": time.perf_counter() - t0},
        }
        write_json_atomic(file, record)
        logger.info(
            "evaluated %s on %s: nDCG@10 %.4f (%.1f s)",
            model_key,
            spec.name,
            record["metrics"][MAIN_METRIC],
            record["timings"]["total_s"],
        )
        progress.evaluation_finished(
            label or model_key, spec.name, record["metrics"], record["timings"]["total_s"]
        )
        records.append(record)
    return records
