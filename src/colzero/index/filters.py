"""Metadata filters: which documents a search may return, decided BEFORE ranking.

Syntax: a JSON object mapping a stored field to a value or to a list of values,
``{"year": 2020, "source": ["pubmed", "arxiv"]}``. A document matches when EVERY field matches
(AND); a field matches when its stored value equals the value, or one of the listed values (OR),
or, when the stored value is a list (e.g. ``"tags": ["a", "b"]``), when one of its elements
does. ``null`` matches a missing or null field; ``"_id"`` matches the document id. Values compare
with their JSON types (``2020`` does not match ``"2020"``; ``true`` is stored as 1). ``{}``
matches every document.

Why this syntax: it is plain JSON (the same object on the command line, in Python and in an
HTTP request), it cannot inject SQL (field names and values are bound parameters), and
equality / membership covers the common cases (a collection, a year, a language, a tenant).
It compiles to one SQLite query over the document table's ``fields`` column (``json_each``).
"""

from __future__ import annotations

import json
from typing import Any

Scalar = str | int | float | bool | None


def compile_filter(flt: dict[str, Any]) -> tuple[str, list[Any]]:
    """(SQL condition over table ``docs``, its parameters) for a filter; ValueError if malformed."""
    if not isinstance(flt, dict):
        raise ValueError(f"a filter is a JSON object {{field: value or [values]}}, got {type(flt).__name__}")
    clauses: list[str] = []
    params: list[Any] = []
    for name, wanted in flt.items():
        if not isinstance(name, str) or not name or any(c in name for c in '"\\') or not name.isprintable():
            raise ValueError(f"filter field {name!r}: a field name is a non-empty string without quotes")
        values = list(wanted) if isinstance(wanted, list | tuple) else [wanted]
        for v in values:
            if not isinstance(v, Scalar):
                raise ValueError(
                    f"filter field {name!r}: values are strings, numbers, booleans or null, "
                    f"got {type(v).__name__}"
                )
        if not values:
            clauses.append("0")  # an empty list of allowed values matches nothing
            continue
        if name == "_id":
            ids = [str(v) for v in values if v is not None]
            clauses.append(f"doc_id IN ({','.join('?' * len(ids))})" if ids else "0")
            params += ids
            continue
        parts = []
        concrete = [int(v) if isinstance(v, bool) else v for v in values if v is not None]
        path = f'$."{name}"'
        if concrete:
            marks = ",".join("?" * len(concrete))
            parts.append(
                f"EXISTS (SELECT 1 FROM json_each(fields, ?) WHERE type NOT IN ('object', 'array') AND value IN ({marks}))"
            )
            params += [path, *concrete]
        if any(v is None for v in values):
            parts.append("json_extract(fields, ?) IS NULL")
            params.append(path)
        clauses.append("(" + " OR ".join(parts) + ")")
    return (" AND ".join(clauses) or "1"), params


def parse_filter(text: str) -> dict[str, Any]:
    """A filter from its JSON text (``colzero search --filter``)."""
    try:
        flt = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--filter: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    compile_filter(flt)
    return flt


def matches(fields: dict[str, Any], doc_id: str, flt: dict[str, Any]) -> bool:
    """The same rule in Python (the reference the SQL is tested against)."""

    def key(x: Any) -> tuple[str, Any] | None:
        if isinstance(x, bool):
            return ("number", int(x))
        if isinstance(x, int | float):
            return ("number", x)
        return ("string", x) if isinstance(x, str) else None

    def one(stored: Any, value: Any) -> bool:
        if value is None:
            return stored is None
        cands = stored if isinstance(stored, list) else [stored]
        return any(key(c) is not None and key(c) == key(value) for c in cands)

    for name, wanted in flt.items():
        values = list(wanted) if isinstance(wanted, list | tuple) else [wanted]
        stored = doc_id if name == "_id" else fields.get(name)
        if name == "_id":
            if doc_id not in {str(v) for v in values if v is not None}:
                return False
        elif not any(one(stored, v) for v in values):
            return False
    return True
