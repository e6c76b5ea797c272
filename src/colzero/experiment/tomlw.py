"""A minimal TOML writer for plain data (the one-phase recipes the experiment runner writes).

Every top-level key is written as ``key = value`` with nested tables inline, so any nested
dict / list / str / int / float / bool structure round-trips through :mod:`tomllib`. ``None``
values of tables are left out (TOML has no null); ``None`` inside a list is an error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys must be strings, got {key!r}")
    return key if _BARE_KEY.match(key) else _string(key)


def _string(value: str) -> str:
    # JSON escapes are TOML basic-string escapes; DEL must be escaped in TOML but not in JSON
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        if any(v is None for v in value):
            raise TypeError(f"{where}: TOML lists cannot hold null values")
        return "[" + ", ".join(_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_value(v, f'{where}.{k}')}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"{where}: cannot write a {type(value).__name__} as TOML")


def dumps(data: dict[str, Any], header: str = "") -> str:
    """TOML text of ``data``; ``header`` lines are written first as comments."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{_key(k)} = {_value(v, k)}" for k, v in data.items() if v is not None]
    return "\n".join(lines) + "\n"
