"""Config options from a YAML file (``--config``) and ``key=value`` overrides, read safely.

Plain YAML only: tags that build Python objects (``!!python/...``) are refused, and so are
aliases (``*name``): a few hundred bytes of nested aliases expand into billions of list items
(the "billion laughs" bomb), and config files have no need for them. Nesting deeper than
``MAX_DEPTH`` and duplicate keys are refused too. Every problem is a ``ValueError`` that names
the file (or the override) and the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent

MAX_DEPTH = 16
MAX_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse megabytes of anything
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class _PlainLoader(yaml.SafeLoader):
    """``SafeLoader`` without aliases, with bounded nesting and without duplicate keys."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not allowed",
                                              event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"values nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - _PlainLoader is a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = error.problem or error.context or "invalid YAML"
        tag = re.search(r"constructor for the tag '([^']*)'", problem)
        if tag:
            problem = f"tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')} is not allowed (plain YAML values only)"
        raise ValueError(f"{where}{line}: {problem}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise ValueError(f"{where}: values nested too deeply") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The option mapping of the YAML file ``path`` (empty file: no options)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path} does not exist")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"--config {path} is larger than {MAX_BYTES // 2**20} MiB: not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path} is not UTF-8 text (byte {error.start})") from None
    values = _parse(text, f"--config {path}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of options (key: value lines), "
                         f"got a {type(values).__name__}")
    bad = [key for key in values if not isinstance(key, str)]
    if bad:
        raise ValueError(f"--config {path}: option names must be strings, got {bad[0]!r}")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``; the value is a YAML scalar or list (``3``, ``1e-4``,
    ``true``, ``[a, b]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not _KEY.match(key):
        raise ValueError(f"override {text!r} must look like key=value (key: letters, digits, _ or -)")
    value = _parse(raw, f"override {key}")
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return key.replace("-", "_"), value
