"""Weak (query, document) pairs from a raw corpus, the way unsupervised retrieval data is built.

Rules (``mode``): ``title`` — the title is the query, the body the document; ``sentence`` — the
first sentence is the query, the rest the document; ``auto`` — title when there is one, else
first sentence. Pairs are deduplicated on the normalised (query, document) text and on the query
(a title shared by many documents is ambiguous and kept once), and short sides are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from colzero.data.readers import iter_documents, write_jsonl

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def split_first_sentence(text: str) -> tuple[str, str]:
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    return (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else (text.strip(), "")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def make_pairs(
    docs: Iterable[dict[str, Any]],
    *,
    mode: str = "auto",
    min_words: int = 3,
    max_pairs: int | None = None,
    id_field: str = "_id",
) -> Iterator[dict[str, Any]]:
    """Yield ``{"query", "document", "doc_id", "rule"}`` deduplicated weak pairs."""
    if mode not in ("auto", "title", "sentence"):
        raise ValueError(f"mode must be 'auto', 'title' or 'sentence', got {mode!r}")
    seen_pairs: set[tuple[str, str]] = set()
    seen_queries: set[str] = set()
    n = 0
    for doc in docs:
        title = str(doc.get("title") or "").strip()
        text = str(doc.get("text") or "").strip()
        if mode == "title" or (mode == "auto" and title):
            query, document, rule = title, text, "title"
        else:
            query, document = split_first_sentence(text)
            rule = "sentence"
        if len(query.split()) < min_words or len(document.split()) < min_words:
            continue
        key = (_norm(query), _norm(document))
        if key in seen_pairs or key[0] in seen_queries or key[0] == key[1]:
            continue
        seen_pairs.add(key)
        seen_queries.add(key[0])
        yield {"query": query, "document": document, "doc_id": str(doc.get(id_field, "")), "rule": rule}
        n += 1
        if max_pairs is not None and n >= max_pairs:
            return


def build_pairs(corpus: str | Path, output: str | Path, **kwargs: Any) -> int:
    """Read a corpus (BEIR ``corpus.jsonl`` or its folder, Parquet, ...), write pairs JSONL
    atomically; returns the count. No pair (e.g. every document too short) is an error."""
    rows = ({"_id": doc.id, **doc.fields} for doc in iter_documents(corpus))
    return write_jsonl(output, make_pairs(rows, **kwargs), what=f"pairs from {corpus}")
