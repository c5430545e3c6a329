"""Typed config options: a value from YAML, the CLI or Python checked against the field's type
hint (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[float, float]``,
``list[str]``, ``str | list[str]``) and converted to it, or a ``ValueError`` naming the option.

The type hint is what counts, not the default: a field whose default is ``None`` is checked
like any other. Floats must be finite (``.inf`` is never a learning rate), ints fit in 64 bits
(they end up in tensors and the C++ packer), strings hold no NUL byte (they become paths).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
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
    unknown names are a ``ValueError`` with the close matches (``did you mean beta?``)."""
    hints = field_hints(cls)
    unknown = sorted(str(name) for name in set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}: {suggest(unknown, sorted(hints))}")
    return {name: coerce_option(name, value, hints[name]) for name, value in values.items()}


def suggest(unknown: list[str], known: list[str]) -> str:
    """``did you mean beta?`` for each unknown name with a close match, or the known names
    when none is close (a short list reads better than a guess)."""
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            hints.append(f"{name}: did you mean {' or '.join(close)}?")
    if hints:
        return "; ".join(hints)
    return f"known: {', '.join(known)}"


# Where an option appears in `fastalign train KIND --help`, in this order.
GROUPS = ("model", "data", "optimization", "method", "run")


def option(default: Any, group: str, help: str) -> Any:  # noqa: A002 - `help` as in argparse
    """A config field that documents itself: ``help`` (one line) and ``group`` (one of
    ``GROUPS``) are what ``fastalign train KIND --help`` prints beside its type and default.
    Lists and dicts get a fresh copy per instance (``default_factory``)."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    if not isinstance(help, str) or not help.strip() or "\n" in help:
        raise ValueError(f"help must be one line of text, got {help!r}")
    metadata = {"group": group, "help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_docs(cls: type) -> dict[str, dict[str, Any]]:
    """``{name: {"group", "help", "type", "default"}}`` for every field of config class
    ``cls``. A subclass that only changes a default (``learning_rate: float = 1e-4``) keeps the
    help of the class that declared the field. ``ValueError`` names a field without help."""
    hints = field_hints(cls)
    docs = {}
    for field in dataclasses.fields(cls):
        metadata = next((base.__dataclass_fields__[field.name].metadata for base in cls.__mro__
                         if field.name in getattr(base, "__dataclass_fields__", {})
                         and "help" in base.__dataclass_fields__[field.name].metadata), None)
        if metadata is None:
            raise ValueError(f"{cls.__name__}.{field.name} has no help: declare it with option(default, group, help)")
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            raise ValueError(f"{cls.__name__}.{field.name} has no default")
        docs[field.name] = {"group": metadata["group"], "help": metadata["help"],
                            "type": describe_type(hints[field.name]), "default": default}
    return docs


def describe_type(hint: Any) -> str:
    """``int | None`` → ``int|None``; ``list[str]`` → ``list[str]`` (the help's type column)."""
    if _is_union(hint):
        return "|".join(describe_type(option) for option in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(describe_type(arg) for arg in typing.get_args(hint))}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
