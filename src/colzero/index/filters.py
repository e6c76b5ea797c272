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

Limits (:func:`check_filter`, checked before any query runs, so a filter that passes never
fails inside SQLite): at most :data:`MAX_FIELDS` fields and :data:`MAX_VALUES` values in all;
field names of 1 to :data:`MAX_NAME_CHARS` printable characters without quotes or backslashes;
strings of at most :data:`MAX_STRING_CHARS` characters of valid Unicode (no lone surrogates);
integers within SQLite's 64 bits; finite numbers (no NaN or infinity); a value is a scalar or a
flat list of scalars (depth 1). Every error is a :class:`FilterError` (a ``ValueError``) whose
``path`` is the offending key, e.g. ``("year",)`` or ``("source", 2)``.
"""

from __future__ import annotations

import json
import math
from typing import Any

Scalar = str | int | float | bool | None

#: fields in one filter (each is one AND-ed clause of the SQL query)
MAX_FIELDS = 64
#: values in all of a filter's lists together (each is one bound SQL parameter)
MAX_VALUES = 1024
#: characters of a field name
MAX_NAME_CHARS = 256
#: characters of a string value
MAX_STRING_CHARS = 4096
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class FilterError(ValueError):
    """A malformed filter; ``path`` is the key (and list position) it is about."""

    def __init__(self, message: str, path: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate cannot be stored or encoded), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode (lone surrogate {text[exc.start]!r} at position {exc.start})"
    return None


def check_value(value: Any, where: str, path: tuple[Any, ...]) -> None:
    """Raise :class:`FilterError` unless ``value`` is a scalar a filter can compare."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise FilterError(f"{where}: {value} does not fit in a 64-bit integer", path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{where}: {value} is not a finite number", path)
    elif isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise FilterError(
                f"{where}: a string of {len(value)} characters (at most {MAX_STRING_CHARS})", path
            )
        problem = unicode_problem(value)
        if problem:
            raise FilterError(f"{where}: the string {problem}", path)
    else:
        kind = type(value).__name__
        kind = {"dict": "an object", "list": "a nested list", "tuple": "a nested list"}.get(kind, kind)
        raise FilterError(f"{where}: values are strings, numbers, booleans or null, got {kind}", path)


def check_filter(flt: Any) -> dict[str, Any]:
    """``flt`` if it is a valid filter (see the module's limits), else :class:`FilterError`."""
    if not isinstance(flt, dict):
        raise FilterError(f"a filter is a JSON object {{field: value or [values]}}, got {type(flt).__name__}")
    if len(flt) > MAX_FIELDS:
        raise FilterError(f"a filter has at most {MAX_FIELDS} fields, got {len(flt)}")
    total = 0
    for name, wanted in flt.items():
        problem = unicode_problem(name) if isinstance(name, str) else None
        if problem:
            raise FilterError(f"filter field {name!r}: the name {problem}", (name,))
        if not isinstance(name, str) or not name or any(c in name for c in '"\\') or not name.isprintable():
            raise FilterError(
                f"filter field {name!r}: a field name is a non-empty printable string without quotes", (name,)
            )
        if len(name) > MAX_NAME_CHARS:
            raise FilterError(
                f"filter field {name[:40]!r}...: a name has at most {MAX_NAME_CHARS} characters", (name,)
            )
        if isinstance(wanted, list | tuple):
            total += len(wanted)
            if total > MAX_VALUES:
                raise FilterError(f"a filter has at most {MAX_VALUES} values in all its lists", (name,))
            for i, v in enumerate(wanted):
                check_value(v, f"filter field {name!r}, value {i}", (name, i))
        else:
            total += 1
            check_value(wanted, f"filter field {name!r}", (name,))
    return flt


def compile_filter(flt: dict[str, Any]) -> tuple[str, list[Any]]:
    """(SQL condition over table ``docs``, its parameters) for a filter; ValueError if malformed."""
    check_filter(flt)
    clauses: list[str] = []
    params: list[Any] = []
    for name, wanted in flt.items():
        values = list(wanted) if isinstance(wanted, list | tuple) else [wanted]
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
        flt = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise FilterError(f"--filter: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise FilterError("--filter: the JSON is nested too deeply (a filter is one level deep)") from None
    except ValueError as exc:
        raise FilterError(f"--filter: {exc}") from None
    try:
        return check_filter(flt)
    except FilterError as exc:
        raise FilterError(f"--filter: {exc}", exc.path) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (numbers must be finite)")


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
