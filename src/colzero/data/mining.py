"""Hard-negative mining for (query, positive) data with BM25 (``bm25s``) and/or a colzero model.

Candidates are the top-k of each retriever (merged, in rank order), **positives excluded**. Then a
score-margin filter drops likely false negatives, using the retriever score of the candidate and of
the query's best positive (per retriever; a candidate found by both is judged by the model when
there is one):

- ``margin_mode="relative"`` (default, NV-Retriever's "TopK-PercPos"): drop a negative whose score
  is above ``margin × positive score`` (``margin=0.95`` keeps negatives scoring below 95 % of the
  positive).
- ``margin_mode="absolute"``: drop a negative whose score is above ``positive score − margin``
  (i.e. within ``margin`` of, or above, the positive).
- ``margin=None``: no filtering.

Output rows: the input row plus ``neg`` (ids) and ``neg_source`` (id → "bm25" | "model" | "both").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colzero.data.readers import iter_jsonl, load_text_table, write_jsonl
from colzero.scoring.packed import PackedEmbeddings, PaddedEmbeddings
from colzero.scoring.search import Score, score_candidates, search

logger = logging.getLogger(__name__)


def bm25_search(corpus: dict[str, str], queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    import bm25s

    ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([corpus[i] for i in ids], stopwords="en", show_progress=False), show_progress=False
    )
    k = min(k, len(ids))
    docs, scores = retriever.retrieve(
        bm25s.tokenize(list(queries), stopwords="en", show_progress=False), k=k, show_progress=False
    )
    return [
        [(ids[int(d)], float(s)) for d, s in zip(dr, sr, strict=True)]
        for dr, sr in zip(docs, scores, strict=True)
    ]


def model_search(
    model_path: str | Path, corpus: dict[str, str], queries: Sequence[str], k: int, batch_size: int = 32
) -> tuple[list[list[tuple[str, float]]], Any]:
    """Exact top-k with a colzero model (MaxSim for ColBERT, dot for dense), by
    :func:`colzero.scoring.search.search`. Returns hits and a scorer
    ``f(query_index, doc_ids) -> scores`` for positive scores."""
    from colzero.model.colbert import ColBERT
    from colzero.model.loading import load_model

    model = load_model(str(model_path))
    ids = list(corpus)
    index = {d: n for n, d in enumerate(ids)}
    multi = isinstance(model, ColBERT)
    score: Score = "maxsim" if multi else "dot"
    docs = model.encode([corpus[i] for i in ids], role="document", batch_size=batch_size)
    qs = model.encode(list(queries), role="query", batch_size=batch_size)
    if multi:
        packed = PackedEmbeddings.from_list(docs, dim=model.config.embedding_dim)
        query_vectors = PackedEmbeddings.from_list(qs, dim=model.config.embedding_dim).padded()
    else:
        packed, query_vectors = PackedEmbeddings(docs), qs
    hits: list[list[tuple[str, float]]] = [[] for _ in queries]
    if queries and ids:
        top = search(query_vectors, packed, k, score=score, device=model.device)
        hits = [
            [(ids[j], v) for v, j in zip(srow, irow, strict=True) if j >= 0]
            for srow, irow in zip(top.scores.tolist(), top.indices.tolist(), strict=True)
        ]

    def scorer(qi: int, doc_ids: Sequence[str]) -> list[float]:
        if multi:
            one = PaddedEmbeddings(query_vectors.embeddings[qi : qi + 1], query_vectors.mask[qi : qi + 1])
        else:
            one = query_vectors[qi : qi + 1]
        rows = [[index[d] for d in doc_ids]]
        return score_candidates(one, packed, rows, score=score, device=model.device)[0].tolist()

    return hits, scorer


def keep_negative(score: float, pos_score: float | None, margin: float | None, mode: str) -> bool:
    if margin is None or pos_score is None:
        return True
    if mode == "relative":
        return score <= margin * pos_score
    if mode == "absolute":
        return score <= pos_score - margin
    raise ValueError(f"margin_mode must be 'relative' or 'absolute', got {mode!r}")


def mine(
    rows: list[dict[str, Any]],
    corpus: dict[str, str],
    *,
    model: str | Path | None = None,
    bm25: bool = True,
    k: int = 30,
    n_negatives: int = 20,
    margin: float | None = 0.95,
    margin_mode: str = "relative",
    query_key: str = "query",
    positive_key: str = "pos",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    if not bm25 and model is None:
        raise ValueError("mining needs bm25=True and/or a model")
    queries = [str(r[query_key]) for r in rows]
    positives = [
        [str(p) for p in (r[positive_key] if isinstance(r[positive_key], list) else [r[positive_key]])]
        for r in rows
    ]
    found: list[dict[str, dict[str, float]]] = [{} for _ in rows]  # qi -> retriever -> {doc: score}
    pos_best: list[dict[str, float]] = [{} for _ in rows]
    if bm25:
        # a large enough k that positives are usually in the list: their BM25 score sets the margin
        hits = bm25_search(corpus, queries, k + 50)
        for qi, h in enumerate(hits):
            found[qi]["bm25"] = dict(h[: k + len(positives[qi])])
            pos = [s for d, s in h if d in positives[qi]]
            if pos:
                pos_best[qi]["bm25"] = max(pos)
    if model is not None:
        hits, scorer = model_search(model, corpus, queries, k + 10, batch_size)
        for qi, h in enumerate(hits):
            found[qi]["model"] = dict(h)
            known = [p for p in positives[qi] if p in corpus]
            if known:
                pos_best[qi]["model"] = max(scorer(qi, known))
    out = []
    dropped = 0
    for qi, row in enumerate(rows):
        order: list[str] = []
        source: dict[str, str] = {}
        for name in ("model", "bm25"):
            for d in found[qi].get(name, {}):
                if d in positives[qi]:
                    continue  # positives are never negatives
                source[d] = "both" if d in source and source[d] != name else name
                if d not in order:
                    order.append(d)
        negs = []
        for d in order:
            judge = "model" if d in found[qi].get("model", {}) else "bm25"
            if keep_negative(found[qi][judge][d], pos_best[qi].get(judge), margin, margin_mode):
                negs.append(d)
            else:
                dropped += 1
            if len(negs) >= n_negatives:
                break
        out.append({**row, "neg": negs, "neg_source": {d: source[d] for d in negs}})
    logger.info("mined %d queries; %d candidates dropped by the margin filter", len(out), dropped)
    return out


def mine_file(input: str | Path, documents: str | Path, output: str | Path, **kwargs: Any) -> int:
    """Mine hard negatives for every row of ``input`` against ``documents``; the output is written
    atomically (nothing on failure)."""
    rows = [row for _, row in iter_jsonl(input)]
    corpus = load_text_table(documents)
    return write_jsonl(output, mine(rows, corpus, **kwargs), what="mined rows")


def mine_beir(beir: str | Path, output: str | Path, *, split: str = "train", **kwargs: Any) -> int:
    """Hard negatives for the queries of a BEIR split (a folder or a hub name such as
    ``BeIR/scifact``): each query's positives are its qrels with grade > 0, the corpus is the
    dataset's. Rows ``{query_id, query, pos, neg, neg_source}``, written atomically."""
    from colzero.data.datasets import load_dataset

    ds = load_dataset(str(beir), split=split)
    rows = [
        {"query_id": q, "query": text, "pos": [d for d, grade in ds.qrels[q].items() if grade > 0]}
        for q, text in zip(ds.query_ids, ds.query_texts, strict=True)
    ]
    rows = [r for r in rows if r["pos"]]
    corpus = dict(zip(ds.corpus_ids, ds.corpus_texts, strict=True))
    return write_jsonl(output, mine(rows, corpus, **kwargs), what=f"mined rows of {beir} ({split})")
