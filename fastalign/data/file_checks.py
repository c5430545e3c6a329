"""Local data files: checked before ``datasets`` reads them, explained when it fails on them.

Before: ``check_data_file`` runs the cheap checks whose failures ``datasets`` reports badly or
not at all, or that crash the process (see ``json_scan``), and reads a Parquet footer.
After: when ``datasets`` still fails on a file, ``describe_problem`` re-reads it with the
standard ``json`` module (error path only, so its speed does not matter) to name the line and
what is wrong with it, instead of a ``DatasetGenerationError`` traceback.
Every error message starts with the file's path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fastalign.data.json_scan import JsonScanError, scan_json_file

JSON_SUFFIXES = (".json", ".jsonl")
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r} in one object")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing a repeated key (``json`` would keep the last silently)."""
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return row


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def check_data_file(path: Path) -> None:
    """Refuse, with a ``ValueError`` naming ``path`` (and the line), a local file that
    ``datasets`` would crash on or report without saying where."""
    if path.suffix in JSON_SUFFIXES:
        try:
            scan_json_file(path)
        except JsonScanError as err:
            raise ValueError(f"{path}: {err}") from None
    elif path.suffix == ".parquet":
        try:
            rows = pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
        if rows == 0:
            raise ValueError(f"{path}: the Parquet file holds no rows")


def _first_json_lines_problem(path: Path) -> str | None:
    # Read bytes split on b"\n" only: text mode would also split on a lone "\r", and
    # str.splitlines on U+2028, which JSON strings may hold raw; either would shift line numbers.
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # check_data_file saw UTF-8
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                return f"line {number}: invalid JSON ({err.msg} at column {err.colno})"
            except _DuplicateKey as err:
                return f"line {number}: {err}"
            if not isinstance(row, dict):
                return f"line {number}: expected one JSON object per line, got {_kind(row)}"
    return None


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _first_json_array_problem(text: str) -> str | None:
    """Walk the top-level list item by item, so a problem gets the line its item starts on."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)
    pos = _WHITESPACE.match(text, text.index("[") + 1).end()
    index = 0
    while pos < len(text) and text[pos] != "]":
        start = pos
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:  # its line and column count from the file's start
            return f"line {err.lineno}: invalid JSON ({err.msg} at column {err.colno})"
        except _DuplicateKey as err:
            return f"line {_line_of(text, start)}: item {index} of the top-level list: {err}"
        if not isinstance(row, dict):
            return (f"line {_line_of(text, start)}: item {index} of the top-level list: expected a JSON "
                    f"object, got {_kind(row)}")
        pos = _WHITESPACE.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif pos < len(text) and text[pos] != "]":
            return f"line {_line_of(text, pos)}: invalid JSON (expected ',' or ']' after item {index})"
        index += 1
    if pos >= len(text):
        return f"line {_line_of(text, len(text))}: invalid JSON (the top-level list is never closed: truncated?)"
    if text[pos + 1:].strip():
        return f"line {_line_of(text, pos)}: invalid JSON (extra data after the top-level list)"
    if index == 0:
        return "the top-level list is empty: no rows to load"
    return None


def describe_problem(path: Path) -> str | None:
    """What is wrong with a JSON / JSON Lines file ``datasets`` failed on, naming the line
    (``None`` if the standard ``json`` module finds nothing wrong, or for other file types)."""
    if path.suffix not in JSON_SUFFIXES:
        return None
    # A .jsonl file is JSON Lines; datasets reads a .json file as one list when it starts
    # with "[" (then it holds the whole file in memory itself) and as JSON Lines otherwise.
    if path.suffix == ".json":
        with open(path, encoding="utf-8-sig") as handle:
            starts_with_list = handle.read(4096).lstrip().startswith("[")
        if starts_with_list:
            return _first_json_array_problem(path.read_text(encoding="utf-8-sig"))
    return _first_json_lines_problem(path)
