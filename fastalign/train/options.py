"""Typed config options: a value from YAML, the CLI or Python checked against the field's type
hint (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[float, float]``,
``list[str]``, ``str | list[str]``) and converted to it, or a ``ValueError`` naming the option.

The type hint is what counts, not the default: a field whose default is ``None`` is checked
like any other. Floats must be finite (``.inf`` is never a learning rate), ints fit in 64 bits
(they end up in tensors and the C++ packer), strings hold no NUL byte (they become paths).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

_INT_LIMIT = 2**63


class _Mismatch(Exception):
    """Internal: the value does not fit this branch of the hint."""


@functools.lru_cache(maxsize=None)
def field_hints(cls: type) -> dict[str, Any]:
    """``{field name: type hint}`` of a config dataclass (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def coerce_option(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint``; ``ValueError`` ``option NAME must be ..., got VALUE``."""
    try:
        return _coerce(value, hint)
    except _Mismatch:
        raise ValueError(f"option {name} must be {describe(hint)}, got {_short(value)}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce(value: Any, hint: Any) -> Any:
    if _is_union(hint):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except _Mismatch:
                continue
        raise _Mismatch
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(hint)
        if origin is tuple:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(item, arg) for item, arg in zip(value, args))
        return [_coerce(item, args[0]) for item in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 1e3 from the command line
        if isinstance(value, int) and not isinstance(value, bool) and -_INT_LIMIT < value < _INT_LIMIT:
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str) and "\x00" not in value:
            return value
        raise _Mismatch
    raise TypeError(f"unsupported option type {hint!r}")  # a config class declared a type this module lacks


def describe(hint: Any) -> str:
    """``int | None`` → ``an int or None`` (for messages)."""
    if _is_union(hint):
        parts = [describe(option) for option in typing.get_args(hint) if option is not type(None)]
        if type(None) in typing.get_args(hint):
            parts.append("None")
        return " or ".join(parts)
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is list:
        return f"a list of {_plural(typing.get_args(hint)[0])}"
    return {bool: "true or false", int: "an int", float: "a finite number", str: "a string"}.get(hint, str(hint))


def _plural(hint: Any) -> str:
    return {int: "ints", float: "finite numbers", str: "strings", bool: "bools"}.get(hint, str(hint))


def coerce_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Every entry of ``values`` (field name → value) converted to ``cls``'s field types;
    unknown names are a ``ValueError`` listing the known ones."""
    hints = field_hints(cls)
    unknown = sorted(str(name) for name in set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(hints)}")
    return {name: coerce_option(name, value, hints[name]) for name, value in values.items()}
