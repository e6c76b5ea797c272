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

from colzero.data.readers import DataError, iter_jsonl, load_text_table, write_jsonl

logger = logging.getLogger(__name__)


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
            from colzero import load_model

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
        self._doc_cache: dict[str, Any] = {}
        self._query_cache: dict[str, Any] = {}

    def kind(self) -> str:
        return "cross-encoder" if self.cross else ("colbert-maxsim" if self.multi else "dense-dot")

    def encode_documents(self, ids: Sequence[str], corpus: dict[str, str]) -> None:
        """Encode (and cache) documents once; reused across queries (bi-encoders only)."""
        if self.cross:
            return
        todo = [i for i in dict.fromkeys(ids) if i not in self._doc_cache]
        if not todo:
            return
        vecs = self.model.encode([corpus[i] for i in todo], role="document", batch_size=self.batch_size)
        for i, v in zip(todo, vecs, strict=True):
            self._doc_cache[i] = v

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
        if self.cross:
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
        self.encode_documents(doc_ids, corpus)
        self.encode_queries([query])
        q = self._query_cache[query]
        q = torch.as_tensor(q).float()
        scores = []
        for i in doc_ids:
            d = torch.as_tensor(self._doc_cache[i]).float()
            if self.multi:
                scores.append(float((q @ d.T).max(dim=1).values.sum()))
            else:
                scores.append(float(q @ d))
        return scores


def _candidates(row: dict[str, Any], pos_key: str, neg_key: str, id_key: str | None) -> list[str]:
    if id_key and id_key in row:
        return [str(x) for x in row[id_key]]
    pos = row.get(pos_key) or []
    neg = row.get(neg_key) or []
    return [str(x) for x in list(pos) + list(neg)]


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
) -> int:
    """Teacher scores for every query of ``input`` (rows with ``query``/``query_id`` and either
    ``candidate_ids`` or positives + negatives); the first ``n_candidates`` candidates are kept
    (positives first). Returns the number of rows written."""
    corpus = load_corpus(documents)
    qtext = load_text_table(queries, what="query") if queries is not None else {}
    rows = []
    skipped = seen = 0
    for where, row in iter_jsonl(input):
        seen += 1
        qid = str(row.get("query_id", row.get("_id", seen - 1)))
        text = row.get("query") or qtext.get(qid)
        if not isinstance(text, str):
            raise DataError(
                f"{where}: field 'query' is missing (and query id {qid!r} is not in a query table)"
            )
        cands = [c for c in _candidates(row, positives, negatives, candidate_ids) if c in corpus]
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
        for qid, text, cands in rows:
            yield {
                "query_id": qid,
                "query": text,
                "document_ids": cands,
                "scores": teacher.score(text, cands, corpus),
            }

    n = write_jsonl(output, gen(), what="teacher scores")
    logger.info("wrote %d KD rows scored by %s (%s) to %s", n, model, teacher.kind(), output)
    return n
