"""The byte-level JSON pre-scan measures nesting exactly on valid JSON, whatever the strings
hold (brackets, escaped quotes and backslashes, U+2028), across block boundaries."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastalign.data import json_scan
from fastalign.data.json_scan import JsonScanError, scan_json_file

TRICKY = st.text(alphabet=st.sampled_from(list('ab "\\[]{}:,\n\u2028é')), max_size=6)
VALUES = st.recursive(
    st.none() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=12,
)
ROWS = st.lists(st.dictionaries(TRICKY, VALUES, min_size=1, max_size=3), min_size=1, max_size=5)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _scan(path, max_depth: int) -> int | None:
    """The line the scan refuses (0 for a refusal without a line), or ``None`` if it passes."""
    try:
        scan_json_file(path, max_depth)
    except JsonScanError as err:
        return err.line or 0
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, ascii_only=st.booleans(), block=st.sampled_from([7, 8 << 20]))
def test_json_lines_depth_and_line_are_exact(tmp_path, rows, ascii_only, block):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=ascii_only) + "\n" for row in rows), encoding="utf-8")
    depths = [_depth(row) for row in rows]
    deepest = max(depths)
    with mock.patch.object(json_scan, "BLOCK_BYTES", block):
        assert _scan(path, deepest) is None
        first_too_deep = next(i for i, depth in enumerate(depths) if depth == deepest) + 1
        assert _scan(path, deepest - 1) == first_too_deep


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, block=st.sampled_from([7, 8 << 20]))
def test_pretty_printed_list_depth_is_exact(tmp_path, rows, block):
    # One list of rows over many lines: the depth carries from line to line and block to block,
    # and the file's own list is not counted against the rows.
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    deepest = max(_depth(row) for row in rows)
    with mock.patch.object(json_scan, "BLOCK_BYTES", block):
        assert _scan(path, deepest) is None
        assert _scan(path, deepest - 1) is not None


def test_a_broken_line_does_not_hide_a_deep_line_after_it(tmp_path):
    # An unclosed string or stray closing brackets on one (invalid) line must not swallow the
    # nesting of the next ones: a raw newline ends any string, and depth never goes below 0.
    deep = '{"a": ' + "[" * 70 + "]" * 70 + "}"
    for broken in ('{"a": "no end', "]]]]" * 100, '{"a": "\\"}'):
        path = tmp_path / "rows.jsonl"
        path.write_text(f"{broken}\n{deep}\n")
        with pytest.raises(JsonScanError, match=r"line 2: a row nested deeper than 63 levels"):
            scan_json_file(path)


def test_bad_utf8_line_and_column_across_blocks(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": "x"}\n' * 50 + b'{"a": "\xc3\xa9\xc3"}\n')
    for block in (5, 8 << 20):
        with mock.patch.object(json_scan, "BLOCK_BYTES", block):
            with pytest.raises(JsonScanError, match=r"line 51: not valid UTF-8 \(byte 0xc3 at column 10\)"):
                scan_json_file(path)


@pytest.mark.parametrize("content", [b"", b"\n", b" \t\r\n\n", b"\xef\xbb\xbf\n"])
def test_no_data(tmp_path, content):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(JsonScanError, match="the file is empty") as caught:
        scan_json_file(path)
    assert caught.value.line is None
