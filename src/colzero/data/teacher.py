"""Teacher scores for knowledge distillation, in the paper's KD format.

Output rows: ``{"query_id", "query", "document_ids": [...], "scores": [...]}`` (PyLate's
``lightonai/ms-marco-*`` layout plus the query text). Teachers: any model colzero can load
(ColBERT → MaxSim, dense → dot product of its, possibly normalised, vectors) or a transformers
cross-encoder (``AutoModelForSequenceClassification``, logits of (query, document) pairs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from colzero.data.readers import DataError, id_value, iter_jsonl, load_text_table, write_jsonl
from colzero.scoring.packed import PackedBuilder, PackedEmbeddings
from colzero.scoring.search import score_candidates

logger = logging.getLogger(__name__)

#: queries scored per :meth:`Teacher.score_batch` call in :func:`score_file`
SCORE_ROWS = 4096


def load_corpus(path: str | Path) -> dict[str, str]:
    """id → ``title + " " + text`` of a corpus (BEIR ``corpus.jsonl`` or its folder, Parquet, ...)."""
    return load_text_table(path)


def is_cross_encoder(model_path: str | Path) -> bool:
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file() or (Path(model_path) / "modules.json").is_file():
        return False
    data = json.loads(cfg.read_text(encoding="utf-8"))
    return any(a.endswith("ForSequenceClassification") for a in data.get("architectures") or [])


class Teacher:
    """Scores (query, candidate list) with a colzero model or a cross-encoder."""

    def __init__(
        self, model_path: str | Path, *, batch_size: int = 32, max_length: int | None = None, device=None
    ):
        self.path = str(model_path)
        self.batch_size = batch_size
        self.cross = is_cross_encoder(model_path)
        if self.cross:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path).eval()
            self.max_length = max_length or 512
        else:
            from colzero.model.loading import load_model

            kwargs: dict[str, Any] = {}
            from colzero.model.colbert import ColBERT
            from colzero.model.folder import describe_folder, resolve_model_path

            multi = describe_folder(resolve_model_path(self.path)).is_multi_vector
            if max_length is not None:
                kwargs["document_length" if multi else "max_length"] = max_length
            self.model = load_model(self.path, **kwargs)
            self.multi = isinstance(self.model, ColBERT)
        if device is not None:
            self.model.to(device)
        self._docs: PackedBuilder | None = None  # encoded documents, packed as they come
        self._doc_row: dict[str, int] = {}
        self._query_cache: dict[str, Any] = {}

    def kind(self) -> str:
        return "cross-encoder" if self.cross else ("colbert-maxsim" if self.multi else "dense-dot")

    def encode_documents(self, ids: Sequence[str], corpus: dict[str, str]) -> None:
        """Encode (and cache) documents once; reused across queries (bi-encoders only)."""
        if self.cross:
            return
        todo = [i for i in dict.fromkeys(ids) if i not in self._doc_row]
        if not todo:
            return
        vecs = self.model.encode([corpus[i] for i in todo], role="document", batch_size=self.batch_size)
        matrices = list(vecs) if self.multi else list(torch.as_tensor(vecs).unsqueeze(1))
        if self._docs is None:
            self._docs = PackedBuilder(matrices[0].shape[-1], dtype=matrices[0].dtype)
        rows = self._docs.extend(matrices)
        self._doc_row.update(zip(todo, rows, strict=True))

    def encode_queries(self, texts: Sequence[str]) -> None:
        """Encode (and cache) query vectors in batches (bi-encoders only)."""
        if self.cross:
            return
        todo = [t for t in dict.fromkeys(texts) if t not in self._query_cache]
        if todo:
            vecs = self.model.encode(list(todo), role="query", batch_size=self.batch_size)
            self._query_cache.update(zip(todo, vecs, strict=True))

    @torch.inference_mode()
    def score(self, query: str, doc_ids: Sequence[str], corpus: dict[str, str]) -> list[float]:
        """Scores of ``doc_ids`` for ``query`` (see :meth:`score_batch`)."""
        return self.score_batch([query], [doc_ids], corpus)[0]

    @torch.inference_mode()
    def score_batch(
        self, queries: Sequence[str], doc_ids: Sequence[Sequence[str]], corpus: dict[str, str]
    ) -> list[list[float]]:
        """Scores of ``doc_ids[i]`` for ``queries[i]``, every query at once.

        Bi-encoders: documents are packed as they are encoded (each once) and scored by
        :func:`colzero.scoring.search.score_candidates` (MaxSim or dot), batched over queries and
        candidates. Cross-encoders: logits of (query, document) pairs, ``batch_size`` at a time.
        """
        if len(queries) != len(doc_ids):
            raise ValueError(f"{len(queries)} queries but {len(doc_ids)} candidate lists")
        if self.cross:
            return [self._cross_scores(q, ids, corpus) for q, ids in zip(queries, doc_ids, strict=True)]
        if not queries:
            return []
        self.encode_documents([d for ids in doc_ids for d in ids], corpus)
        self.encode_queries(queries)
        docs = self._docs.packed() if self._docs is not None else PackedEmbeddings.from_list([], dim=1)
        candidates = [[self._doc_row[d] for d in ids] for ids in doc_ids]
        qvecs = [torch.as_tensor(self._query_cache[q]) for q in queries]
        if self.multi:
            qpad = PackedEmbeddings.from_list(qvecs, dim=self.model.config.embedding_dim).padded()
            scores = score_candidates(qpad, docs, candidates, score="maxsim", device=self.model.device)
        else:
            scores = score_candidates(
                torch.stack(qvecs), docs, candidates, score="dot", device=self.model.device
            )
        return [scores[i, : len(ids)].tolist() for i, ids in enumerate(doc_ids)]

    def _cross_scores(self, query: str, doc_ids: Sequence[str], corpus: dict[str, str]) -> list[float]:
        out: list[float] = []
        for b in range(0, len(doc_ids), self.batch_size):
            ids = doc_ids[b : b + self.batch_size]
            enc = self.tokenizer(
                [query] * len(ids),
                [corpus[i] for i in ids],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.model.device)
            logits = self.model(**enc).logits
            out.extend((logits[:, -1] if logits.shape[-1] > 1 else logits[:, 0]).float().tolist())
        return out


def _candidates(
    row: dict[str, Any], pos_key: str, neg_key: str, id_key: str | None, where: str
) -> list[tuple[str, str]]:
    """(id, field) of a row's candidates: ``id_key``'s, else the positives then the negatives."""
    keys = [id_key] if id_key and id_key in row else [pos_key, neg_key]
    out = []
    for key in keys:
        value = row.get(key) or []
        for x in value if isinstance(value, list) else [value]:
            out.append((id_value(x, key, where), key))
    return out


def score_file(
    model: str | Path,
    input: str | Path,
    documents: str | Path,
    output: str | Path,
    *,
    queries: str | Path | None = None,
    n_candidates: int = 32,
    max_queries: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    positives: str = "pos",
    negatives: str = "neg",
    candidate_ids: str | None = None,
    drop_unknown: bool = False,
) -> int:
    """Teacher scores for every query of ``input`` (rows with ``query``/``query_id`` and either
    ``candidate_ids`` or positives + negatives); the first ``n_candidates`` candidates are kept
    (positives first). Returns the number of rows written.

    A positive id not in ``documents`` is an error naming the file, line and id (a KD row without
    its positive teaches the wrong thing); ``drop_unknown`` drops it instead, and skips the rows
    left without a positive. Unknown negative or candidate ids are dropped, with a count in the log."""
    corpus = load_corpus(documents)
    qtext = load_text_table(queries, what="query") if queries is not None else {}
    rows = []
    skipped = seen = 0
    unknown: dict[str, list[tuple[str, str]]] = {"positive": [], "other": []}
    lost_positive = 0
    for where, row in iter_jsonl(input):
        seen += 1
        qid = str(row.get("query_id", row.get("_id", seen - 1)))
        text = row.get("query") or qtext.get(qid)
        if not isinstance(text, str):
            raise DataError(
                f"{where}: field 'query' is missing (and query id {qid!r} is not in a query table)"
            )
        cands, had_positive, kept_positive = [], False, False
        for doc_id, key in _candidates(row, positives, negatives, candidate_ids, where):
            is_positive = key == positives and key != candidate_ids
            had_positive |= is_positive
            if doc_id in corpus:
                cands.append(doc_id)
                kept_positive |= is_positive
                continue
            if is_positive and not drop_unknown:
                raise DataError(
                    f"{where}: field {key!r}: positive id {doc_id!r} is not in {documents} "
                    "(--drop-unknown drops unknown ids and the rows they leave without a positive)"
                )
            unknown["positive" if is_positive else "other"].append((where, doc_id))
        if had_positive and not kept_positive:  # every positive was unknown (and dropped)
            lost_positive += 1
            continue
        cands = list(dict.fromkeys(cands))[:n_candidates]
        if len(cands) < n_candidates:
            skipped += 1
            logger.info(
                "%s: query %s: only %d candidates (wanted %d); skipped", where, qid, len(cands), n_candidates
            )
            continue
        rows.append((qid, str(text), cands))
        if max_queries is not None and len(rows) >= max_queries:
            break
    for kind, found in unknown.items():
        if found:
            logger.warning(
                "dropped %d unknown %s id(s) not in %s (the first %r at %s)%s",
                len(found),
                kind if kind == "positive" else "negative / candidate",
                documents,
                found[0][1],
                found[0][0],
                f"; {lost_positive} row(s) left without a positive skipped" if kind == "positive" else "",
            )
    if not rows:
        raise DataError(
            f"{input}: no query has {n_candidates} candidates found in {documents} ({skipped} of {seen} rows "
            "skipped); nothing to score, nothing written"
        )
    teacher = Teacher(model, batch_size=batch_size, max_length=max_length)
    teacher.encode_documents([c for _, _, cands in rows for c in cands], corpus)

    if not teacher.cross:  # encode all queries in one batched call
        teacher.encode_queries([text for _, text, _ in rows])

    def gen():
        for start in range(0, len(rows), SCORE_ROWS):
            chunk = rows[start : start + SCORE_ROWS]
            scores = teacher.score_batch([text for _, text, _ in chunk], [c for _, _, c in chunk], corpus)
            for (qid, text, cands), row_scores in zip(chunk, scores, strict=True):
                yield {"query_id": qid, "query": text, "document_ids": cands, "scores": row_scores}

    n = write_jsonl(output, gen(), what="teacher scores")
    logger.info("wrote %d KD rows scored by %s (%s) to %s", n, model, teacher.kind(), output)
    return n
