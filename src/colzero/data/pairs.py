"""Weak (query, document) pairs from a raw corpus, the way unsupervised retrieval data is built.

Rules (``mode``): ``title`` — the title is the query, the body the document; ``sentence`` — the
first sentence is the query, the rest the document; ``auto`` — title when there is one, else
first sentence. Pairs are deduplicated on the normalised (query, document) text and on the query
(a title shared by many documents is ambiguous and kept once), and short sides are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (temp file then rename); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


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
    """Read a BEIR ``corpus.jsonl`` (or a folder holding one), write pairs JSONL; returns the count."""
    corpus = Path(corpus)
    if corpus.is_dir():
        corpus = corpus / "corpus.jsonl"
    return write_jsonl(output, make_pairs(read_jsonl(corpus), **kwargs))
