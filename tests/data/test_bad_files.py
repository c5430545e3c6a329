"""Bad local files give one ``ValueError`` naming the file (and line), never a traceback from
``datasets``, a bare ``StopIteration`` or a crash (issue 15)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastalign.data import load_preference_data, load_sft_data

GOOD = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
DEEP = 100_000  # the depth that killed the process inside pyarrow's JSON reader


def _deep_row() -> str:
    return '{"prompt": "a", "chosen": "b", "rejected": ' + "[" * DEEP + "]" * DEEP + "}"


# (file name, content, expected message after the path)
BAD_FILES = [
    ("dup.jsonl", f'{GOOD}\n{{"prompt": "a", "prompt": "z", "chosen": "b", "rejected": "c"}}\n',
     r"line 2: duplicate key 'prompt' in one object"),
    ("list-line.jsonl", f"{GOOD}\n[1, 2]\n", r"line 2: expected one JSON object per line, got a list"),
    ("list-first.jsonl", f"[1, 2]\n{GOOD}\n", r"line 1: expected one JSON object per line, got a list"),
    ("scalar.json", "42", r"line 1: expected one JSON object per line, got a number"),
    ("string.json", '"just text"\n', r"line 1: expected one JSON object per line, got a string"),
    ("truncated.json", f'[{GOOD}, {{"prompt": "a", "chosen": "b"',
     r"line 1: invalid JSON \(Expecting ',' delimiter at column \d+\)"),
    ("truncated-list.json", f"[\n{GOOD},\n{GOOD}\n",
     r"line 4: invalid JSON \(the top-level list is never closed: truncated\?\)"),
    ("truncated.jsonl", f'{GOOD}\n{{"prompt": "a", "chosen": "b"\n',
     r"line 2: invalid JSON \(Expecting ',' delimiter at column \d+\)"),
    ("not-objects.json", f"[\n{GOOD},\n[1]\n]",
     r"line 3: item 1 of the top-level list: expected a JSON object, got a list"),
    ("empty-list.json", "[]", r"the top-level list is empty: no rows to load"),
    ("empty.jsonl", "", r"the file is empty \(or holds only blank lines\): no rows to load"),
    ("blank.jsonl", "\n\n  \n\r\n", r"the file is empty \(or holds only blank lines\): no rows to load"),
    ("bad-utf8-first.jsonl", b"\xff\n", r"line 1: not valid UTF-8 \(byte 0xff at column 1\)"),
    ("bad-utf8.jsonl", (GOOD + "\n").encode() + b'{"prompt": "\xff", "chosen": "b", "rejected": "c"}\n',
     r"line 2: not valid UTF-8 \(byte 0xff at column 13\)"),
    ("deep.jsonl", f"{GOOD}\n{_deep_row()}\n", r"line 2: a row nested deeper than 63 levels of objects/lists"),
    ("deep-list.json", f"[{GOOD},\n{_deep_row()}]", r"line 2: a row nested deeper than 63 levels"),
    ("deep-pretty.json", '{"prompt": ' + "[\n" * DEEP + "]\n" * DEEP + "}",
     r"line 63: a row nested deeper than 63 levels"),
]


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_json_file_is_a_value_error_naming_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    _write(path, content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        load_preference_data(path)


def test_sft_loader_checks_files_the_same_way(tmp_path):
    path = tmp_path / "list-line.jsonl"
    _write(path, '{"prompt": "a", "completion": "b"}\n[1]\n')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": line 2: expected one JSON object"):
        load_sft_data(path)


def test_empty_parquet_files(tmp_path):
    no_rows = tmp_path / "no-rows.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), no_rows)
    with pytest.raises(ValueError, match=re.escape(str(no_rows)) + ": the Parquet file holds no rows"):
        load_preference_data(no_rows)
    zero_bytes = tmp_path / "zero.parquet"
    zero_bytes.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(zero_bytes)) + r": not a readable Parquet file \(.*0 bytes"):
        load_preference_data(zero_bytes)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    with pytest.raises(ValueError, match=re.escape(str(garbage)) + ": not a readable Parquet file"):
        load_preference_data(garbage)


def test_folder_source_checks_its_files(tmp_path):
    (tmp_path / "train.jsonl").write_text(f"{GOOD}\n")
    (tmp_path / "test.jsonl").write_text(f"{GOOD}\n{_deep_row()}\n")
    # datasets prepares every split of a folder, so a bad test file stops the train split too.
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "test.jsonl")) + ": line 2: a row nested deeper"):
        load_preference_data(tmp_path, split="train")
    (tmp_path / "test.jsonl").write_text(f"{GOOD}\n[1]\n")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "test.jsonl")) + ": line 2: expected one JSON"):
        load_preference_data(tmp_path, split="test")
    (tmp_path / "test.jsonl").write_text(f"{GOOD}\n")
    assert load_preference_data(tmp_path, split="test").to_list() == [json.loads(GOOD)]


def test_tricky_but_valid_files_still_load(tmp_path):
    # Brackets and escaped quotes inside strings, a BOM, CRLF line ends, blank lines between
    # rows and nesting right at the limit are all fine.
    rows = [
        {"prompt": "[" * 300 + '\\"{', "chosen": 'say \\"hi\\" [', "rejected": "\\\\"},
        {"prompt": "é 漢字 \u2028 x", "chosen": "}" * 300, "rejected": '"'},
    ]
    text = "\r\n\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\r\n"
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_preference_data(path).to_list() == rows


def _row_nested(levels: int, kind: str) -> str:
    """A row whose ``meta`` makes it nest ``levels`` deep (the row's own object is one level)."""
    depth = levels - 1
    inner = "[" * depth + "]" * depth if kind == "list" else '{"k": ' * depth + "0" + "}" * depth
    return GOOD[:-1] + f', "meta": {inner}}}'


@pytest.mark.parametrize("kind", ["list", "object"])
def test_nesting_limit_is_arrows(tmp_path, kind):
    at_limit = tmp_path / "at-limit.jsonl"
    at_limit.write_text(_row_nested(63, kind) + "\n")
    assert len(load_preference_data(at_limit)) == 1
    in_list = tmp_path / "in-list.json"
    in_list.write_text("[" + _row_nested(63, kind) + "]")  # the file's own list is not counted
    assert len(load_preference_data(in_list)) == 1
    over = tmp_path / "over.jsonl"
    over.write_text(f"{GOOD}\n" + _row_nested(64, kind) + "\n")
    with pytest.raises(ValueError, match=re.escape(str(over)) + ": line 2: a row nested deeper than 63 levels"):
        load_preference_data(over)
