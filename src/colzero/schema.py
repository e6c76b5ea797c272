"""Validated settings records: one declaration per concept, one kind of error message.

:func:`settings` makes a class a dataclass validated by pydantic: the constraints are written
once, next to the field (``Field(gt=0)``, :data:`PositiveInt`, ``Literal[...]``, validators), and
hold for every way the record is built: keyword or positional construction in Python,
``dataclasses.replace``, :func:`from_dict` on a TOML / JSON table, or a pydantic model that holds
the record (a recipe holds its phases). Unknown keys are errors.

Errors: building a record in Python raises :class:`SettingsError` (a ``ValueError``) whose lines
read ``PhaseConfig.loss.temperature must be > 0, got 0``; reading a file names the file and the
key path, ``recipe.toml: phases[1].loss.temperature: must be > 0`` (:func:`describe`).

This module sits below every folder of the package (it imports none of them).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast, dataclass_transform, overload

import pydantic
import pydantic.dataclasses
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ArgsKwargs

__all__ = [
    "NonNegativeInt",
    "PathText",
    "PositiveInt",
    "SettingsError",
    "describe",
    "from_dict",
    "key_path",
    "settings",
    "to_dict",
]

T = TypeVar("T")

#: unknown keys are errors
CONFIG = ConfigDict(extra="forbid")


class SettingsError(ValueError):
    """Settings that do not validate; the message names every key path and what is wrong."""


def _strict_int(minimum: int, text: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(text)
        return value

    return check


#: an integer >= 1 (a count or a number of steps)
PositiveInt = Annotated[int, pydantic.Strict(), AfterValidator(_strict_int(1, "must be a positive integer"))]
#: an integer >= 0
NonNegativeInt = Annotated[int, pydantic.Strict(), AfterValidator(_strict_int(0, "must be an integer >= 0"))]


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


#: a path or name, given as text or as a path object (kept as text)
PathText = Annotated[str, BeforeValidator(_fspath)]


def key_path(loc: tuple[Any, ...]) -> str:
    """``("phases", 1, "loss", "temperature")`` -> ``phases[1].loss.temperature``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (isinstance(part, str) and part.startswith("function-")):
            out += ("." if out else "") + str(part)
    return out


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _message(err: Any) -> str:
    ctx = {k: _number(v) for k, v in (err.get("ctx") or {}).items()}
    kind = err.get("type", "")
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than":
        return f"must be < {ctx.get('lt')}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    if kind in ("missing", "missing_keyword_only_argument", "missing_argument"):
        return "required key is missing"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def describe(exc: ValidationError, where: str) -> str:
    """One line per error: ``WHERE: key.path: message`` (``WHERE: message`` for a whole record)."""
    lines = []
    for err in exc.errors():
        path = key_path(tuple(err["loc"]))
        lines.append(f"{where}: {path}: {_message(err)}" if path else f"{where}: {_message(err)}")
    return "\n".join(lines)


def _describe_construction(exc: ValidationError, owner: str) -> str:
    lines = []
    for err in exc.errors():
        path = key_path(tuple(err["loc"]))
        got = err.get("input")
        shown = f", got {got!r}" if path and not isinstance(got, dict | list | ArgsKwargs) else ""
        lines.append(f"{owner}.{path} {_message(err)}{shown}" if path else _message(err))
    return "\n".join(lines)


@overload
def settings(cls: type[T], /) -> type[T]: ...
@overload
def settings(*, kw_only: bool = False) -> Callable[[type[T]], type[T]]: ...
@dataclass_transform(field_specifiers=(Field, dataclasses.field))
def settings(cls: type[T] | None = None, /, *, kw_only: bool = False) -> Any:
    """Class decorator: a pydantic-validated dataclass that forbids unknown keys (module docstring)."""

    def wrap(klass: type[T]) -> type[T]:
        made = pydantic.dataclasses.dataclass(klass, config=CONFIG, kw_only=kw_only)
        init = made.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise SettingsError(_describe_construction(exc, klass.__name__)) from None

        made.__init__ = __init__  # type: ignore[method-assign]
        return cast("type[T]", made)

    return wrap if cls is None else wrap(cls)


def from_dict(cls: type[T], data: Any, where: str | None = None) -> T:
    """Validate a plain table (TOML / JSON) into ``cls``; errors name ``where`` and the key path."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        raise SettingsError(describe(exc, where or cls.__name__)) from None


def to_dict(record: Any, *, drop_none: bool = False) -> Any:
    """A record as plain JSON values (tuples become lists); ``drop_none=True`` leaves out None
    values, for TOML, which has no null."""
    return TypeAdapter(type(record)).dump_python(record, mode="json", exclude_none=drop_none)
