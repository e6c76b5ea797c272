"""Evaluation runs through the index: :func:`retrieve_with_index`, the PLAID counterpart of
:func:`colzero.evaluation.retrieve` (exact search).

The authors' published per-dataset ColBERT-Zero numbers come from PLAID search, not exact
search. This builds an :class:`~colzero.index.Index` over a dataset's corpus and searches it, so an
evaluation can be run the way they ran it. Corpus vectors come from
:func:`colzero.evaluation.retrieval.encode_corpus` (its on-disk cache, the settings' document
length and prompt), queries are encoded exactly as for exact search (the settings' query length
and prompt), and the index is built in a temporary folder next to the corpus cache (or the system
temporary directory) and removed afterwards. Self-hits are removed as in exact search: a query
asks for one more hit and drops the document with its own id. Memory: the corpus's vectors (memory
mapped from the cache) plus the index build's sample and chunk (:meth:`Index.build`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from colzero.data.datasets import RetrievalDataset
from colzero.evaluation.retrieval import RetrievalOutput, RetrievalSettings, encode_corpus, query_vectors
from colzero.index.plaid import Index, SearchSettings
from colzero.model.colbert import ColBERT
from colzero.model.encoder import Encoder
from colzero.scoring.packed import PackedEmbeddings


@dataclasses.dataclass
class IndexEvaluation:
    """How the evaluation index is built and searched (the index's own defaults otherwise)."""

    nprobe: int | None = None
    ncandidates: int | None = None
    codec: str = "pq"
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Rows(Sequence[Any]):
    """``packed[a:b]`` as the index build reads precomputed embeddings (per-document matrices)."""

    def __init__(self, packed: PackedEmbeddings) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return [self.packed.doc(i) for i in range(*item.indices(len(self.packed)))]
        return self.packed.doc(item)


def retrieve_with_index(
    model: Encoder,
    dataset: RetrievalDataset,
    settings: RetrievalSettings | None = None,
    options: IndexEvaluation | None = None,
) -> RetrievalOutput:
    """Build an index of ``dataset``'s corpus with ``model`` and search it with every query.

    Same inputs and output as :func:`colzero.evaluation.retrieve`; ``timings`` adds
    ``index_build_s``. ColBERT models only (the index is multi-vector).
    """
    if not isinstance(model, ColBERT):
        raise ValueError(f"index search needs a ColBERT (multi-vector) model, got {type(model).__name__}")
    settings = settings or RetrievalSettings()
    options = options or IndexEvaluation()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    corpus, hit, path = encode_corpus(model, dataset, settings)
    timings["encode_corpus_s"] = time.perf_counter() - t0
    parent = Path(path).parent if path is not None else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".eval-index-", dir=parent) as tmp:
        t0 = time.perf_counter()
        documents = [(doc_id, "") for doc_id in dataset.corpus_ids]  # texts are not stored
        index = Index.build(
            model,
            documents,
            Path(tmp) / "index",
            codec=options.codec,
            batch_size=settings.batch_size,
            store_fields=False,
            embeddings=_Rows(corpus),
            expected_documents=len(documents),
            settings=SearchSettings(),
            seed=options.seed,
        )
        timings["index_build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        queries = query_vectors(model, dataset.query_texts, settings)
        timings["encode_queries_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        extra = 1 if settings.remove_self_hits else 0
        hits = index.search(
            [np.asarray(q.float().numpy()) for q in queries],
            settings.k + extra,
            nprobe=options.nprobe,
            ncandidates=options.ncandidates,
        )
        timings["search_s"] = time.perf_counter() - t0
    corpus_ids = set(dataset.corpus_ids)
    run: dict[str, dict[str, float]] = {}
    for qid, found in zip(dataset.query_ids, hits, strict=True):
        own = qid if settings.remove_self_hits and qid in corpus_ids else None
        kept = [(d, s) for d, s in found if d != own][: settings.k]
        run[qid] = {d: float(s) for d, s in kept}
    return RetrievalOutput(run, timings, hit, str(path) if path else None)


class IndexRetriever:
    """A ``retriever`` for :func:`colzero.evaluation.evaluate`: :func:`retrieve_with_index` with
    fixed ``options``; dense models, which the index does not hold, fall back to exact search
    (recorded as ``"exact (dense model)"`` when they do)."""

    name = "index"

    def __init__(self, options: IndexEvaluation | None = None) -> None:
        self.index_options = options or IndexEvaluation()
        self.options = self.index_options.as_dict()

    def __call__(
        self, model: Encoder, dataset: RetrievalDataset, settings: RetrievalSettings
    ) -> RetrievalOutput:
        if not isinstance(model, ColBERT):
            from colzero.evaluation.retrieval import retrieve

            out = retrieve(model, dataset, settings)
            out.timings["exact_search_fallback"] = 1.0
            return out
        return retrieve_with_index(model, dataset, settings, self.index_options)
