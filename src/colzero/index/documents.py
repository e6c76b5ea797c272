"""The index's corpus reader: the one function that turns corpus rows into documents.

A document is encoded as ``title + " " + text`` (BEIR's rule, stripped; either part may be
missing) and keeps every other JSON field of its row (``title``, ``text`` and any metadata such
as ``year`` or ``source``) as its stored ``fields``: what filters match and what search results
show. Errors are :class:`colzero.data.readers.DataError` (a ``ValueError``) naming the file and
line (or the position in a Python sequence) and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from colzero.data.readers import DataError

ID_FIELDS = ("_id", "id")


@dataclass(frozen=True)
class Document:
    """One corpus row: its id, the text the model encodes, its stored fields, and where it was read."""

    doc_id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    where: str = ""


def read_documents(source: Any, start: int = 0, end: int | None = None) -> Iterator[Document]:
    """Documents ``start:end`` of ``source`` (0-based; blank JSONL lines are not documents).

    ``source``: a JSONL path (one JSON object per line with ``_id`` or ``id``, optional ``title``
    and ``text`` strings and any other fields), or an iterable of such dicts, of ``(id, text)``
    pairs, or of :class:`Document`. Lines outside ``start:end`` are not parsed.
    """
    if isinstance(source, str | os.PathLike):
        yield from _read_jsonl(os.fspath(source), start, end)
        return
    rows: Iterable[Any] = source
    if start or end is not None:
        rows = source[start:end] if isinstance(source, list | tuple) else islice(source, start, end)
    for n, row in enumerate(rows, start):
        if isinstance(row, Document):
            yield row
        elif isinstance(row, dict):
            yield _from_row(row, f"document {n}")
        elif isinstance(row, list | tuple) and len(row) == 2:
            doc_id, text = row
            if not isinstance(text, str):
                raise DataError(f"document {n}: field 'text' must be a string, got {type(text).__name__}")
            yield Document(_doc_id(doc_id, f"document {n}"), text, {}, f"document {n}")
        else:
            raise DataError(f"document {n}: expected a dict or an (id, text) pair, got {type(row).__name__}")


def _read_jsonl(path: str, start: int, end: int | None) -> Iterator[Document]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: corpus file not found")
    i = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if end is not None and i >= end:
                return
            if i >= start:
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield _from_row(row, where)
            i += 1


def _doc_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise DataError(f"{where}: field '_id' must be a non-empty string or integer, got {value!r}")
    return str(value)


def _from_row(row: dict[str, Any], where: str) -> Document:
    key = next((k for k in ID_FIELDS if k in row), None)
    if key is None:
        raise DataError(f"{where}: field '_id' (or 'id') is missing")
    parts = []
    for name in ("title", "text"):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        parts.append(value or "")
    fields = {k: v for k, v in row.items() if k not in ID_FIELDS}
    return Document(_doc_id(row[key], where), " ".join(parts).strip(), fields, where)


def count_documents(source: Any) -> int:
    """Number of documents in a JSONL path (non-blank lines, not parsed) or a sized sequence."""
    if isinstance(source, str | os.PathLike):
        with open(source, encoding="utf-8") as f:
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
