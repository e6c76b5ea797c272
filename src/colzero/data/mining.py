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

A positive id that is not in the corpus is an error naming the row's file and line and the id
(the margin filter needs the positive's score, and the row would train on a document nobody can
read); ``drop_unknown=True`` (``colzero mine --drop-unknown``) drops such ids instead, and the
rows left without a positive, with a count in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colzero.data.readers import DataError, iter_jsonl, load_text_table, write_jsonl
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
    wheres: Sequence[str] | None = None,
    documents: str = "the corpus",
    drop_unknown: bool = False,
) -> list[dict[str, Any]]:
    """Mined rows (see the module). ``wheres``: each row's place (file:line) for error messages;
    ``documents``: the corpus's name in them."""
    if not bm25 and model is None:
        raise ValueError("mining needs bm25=True and/or a model")
    wheres = list(wheres) if wheres is not None else [f"row {i}" for i in range(len(rows))]
    queries, positives = [], []
    for row, where in zip(rows, wheres, strict=True):
        for key in (query_key, positive_key):
            if row.get(key) in (None, "", []):
                raise DataError(f"{where}: field {key!r} is missing or empty")
        queries.append(str(row[query_key]))
        value = row[positive_key]
        positives.append([str(p) for p in (value if isinstance(value, list) else [value])])
    rows, wheres, queries, positives = _known_positives(
        rows, wheres, queries, positives, corpus, positive_key, documents, drop_unknown
    )
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


def _known_positives(
    rows: list[dict[str, Any]],
    wheres: list[str],
    queries: list[str],
    positives: list[list[str]],
    corpus: dict[str, str],
    positive_key: str,
    documents: str,
    drop_unknown: bool,
) -> tuple[list[dict[str, Any]], list[str], list[str], list[list[str]]]:
    """The rows with every positive in ``corpus``: an unknown positive is a :class:`DataError`
    naming the first one, or (``drop_unknown``) dropped, with the rows left without a positive."""
    unknown = [(i, p) for i, ps in enumerate(positives) for p in ps if p not in corpus]
    if not unknown:
        return rows, wheres, queries, positives
    i, first = unknown[0]
    if not drop_unknown:
        raise DataError(
            f"{wheres[i]}: field {positive_key!r}: positive id {first!r} is not in {documents} "
            f"({len(unknown)} unknown positive id(s) in all; --drop-unknown drops them)"
        )
    kept: tuple[list, list, list, list] = ([], [], [], [])
    for row, where, query, ps in zip(rows, wheres, queries, positives, strict=True):
        known = [p for p in ps if p in corpus]
        if known:
            for out, value in zip(kept, (row | {positive_key: known}, where, query, known), strict=True):
                out.append(value)
    logger.warning(
        "dropped %d unknown positive id(s) (the first %r at %s) and %d row(s) left without a positive",
        len(unknown),
        first,
        wheres[i],
        len(rows) - len(kept[0]),
    )
    return kept


def mine_file(
    input: str | Path, documents: str | Path, output: str | Path, *, drop_unknown: bool = False, **kwargs: Any
) -> int:
    """Mine hard negatives for every row of ``input`` against ``documents``; the output is written
    atomically (nothing on failure). Unknown positive ids: see the module."""
    pairs = list(iter_jsonl(input))
    corpus = load_text_table(documents)
    mined = mine(
        [row for _, row in pairs],
        corpus,
        wheres=[where for where, _ in pairs],
        documents=str(documents),
        drop_unknown=drop_unknown,
        **kwargs,
    )
    return write_jsonl(output, mined, what="mined rows")


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
    if not kwargs.get("drop_unknown"):  # name the qrels line of an unknown positive
        for r in rows:
            for d in r["pos"]:
                if d not in corpus:
                    raise DataError(
                        f"{_qrels_place(beir, split, r['query_id'], d)}: field 'corpus-id': positive id {d!r} "
                        f"of query {r['query_id']!r} is not in the corpus of {beir} (drop_unknown = true in "
                        "the step's args, or --drop-unknown, drops such ids)"
                    )
    wheres = [f"{beir} ({split}) query {r['query_id']!r}" for r in rows]
    mined = mine(rows, corpus, wheres=wheres, documents=f"the corpus of {beir}", **kwargs)
    return write_jsonl(output, mined, what=f"mined rows of {beir} ({split})")


def _qrels_place(beir: str | Path, split: str, qid: str, did: str) -> str:
    """file:line of the qrels row (qid, did) of a BEIR folder (read only for an error message)."""
    path = Path(beir) / "qrels" / f"{split}.tsv"
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] == qid and parts[1] == did:
                    return f"{path}:{lineno}"
    return f"{beir} qrels ({split}), query {qid!r}"
