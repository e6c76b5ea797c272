"""The index's view of a corpus: documents from :func:`colzero.data.readers.iter_documents`.

colzero has one reader for every row and document (:mod:`colzero.data.readers`): a document is
encoded as :func:`colzero.data.readers.document_text` (``title + " " + text``, BEIR's rule) and keeps
every other field of its row (``title``, ``text`` and any metadata such as ``year`` or ``source``)
as its stored ``fields``: what filters match and what search results show. Errors are
:class:`colzero.data.readers.DataError` (a ``ValueError``) naming the file and line (or the
position in a Python sequence) and the field; a duplicate id names both lines, an empty corpus is
an error. This module adds only what the index needs on top: a ``start:end`` slice (a rank's
shard), the document count of a corpus file without parsing it, and chunking.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from colzero.data.readers import DataError, Document, iter_documents

__all__ = ["Document", "batches", "count_documents", "read_documents"]


def read_documents(source: Any, start: int = 0, end: int | None = None) -> Iterator[Document]:
    """Documents ``start:end`` of ``source`` (0-based; blank JSONL lines are not documents).

    ``source``: anything :func:`colzero.data.readers.iter_documents` reads: a BEIR ``corpus.jsonl``
    (or its folder), a Parquet / Hugging Face table, or in-memory rows (``{"_id", "title", "text",
    ...}`` dicts, ``(id, text)`` pairs or :class:`Document`). Documents before ``start`` are read
    (and checked for duplicates) but not returned.
    """
    if not isinstance(source, str | os.PathLike):
        source = _checked_pairs(source)
    docs = iter_documents(source)
    yield from (islice(docs, start, end) if start or end is not None else docs)


def _checked_pairs(rows: Iterable[Any]) -> Iterator[Any]:
    """In-memory rows as they are, with ``(id, text)`` pairs whose text is not a string refused
    (the shared reader would encode ``str(text)``, e.g. ``"None"``)."""
    for n, row in enumerate(rows):
        if isinstance(row, list | tuple):
            if len(row) != 2:
                raise DataError(f"document {n}: expected a dict or an (id, text) pair, got {len(row)} items")
            if not isinstance(row[1], str):
                raise DataError(f"document {n}: field 'text' must be a string, got {type(row[1]).__name__}")
        elif not isinstance(row, dict | Document):
            raise DataError(f"document {n}: expected a dict or an (id, text) pair, got {type(row).__name__}")
        yield row


def _corpus_file(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    return path / "corpus.jsonl" if path.is_dir() and (path / "corpus.jsonl").is_file() else path


def count_documents(source: Any) -> int:
    """Number of documents in a JSONL corpus (non-blank lines, not parsed or decoded) or a sized
    sequence; other table files are read through :func:`read_documents`."""
    if isinstance(source, str | os.PathLike):
        path = _corpus_file(source)
        if not path.is_file() or not path.name.lower().endswith((".jsonl", ".json", ".ndjson")):
            return sum(1 for _ in read_documents(source))
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
        raise TypeError(
            "a sharded build needs a JSONL path or a sequence of documents (every rank reads its own "
            f"shard), got {type(source).__name__}"
        )
    return len(source)


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
