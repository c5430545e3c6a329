"""docs/defaults.md, fastalign's defaults beside TRL's, holds the real defaults: every
``name=value`` cell is checked against fastalign's config classes and (with TRL installed)
against TRL 1.16's config dataclasses."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from fastalign.cli_help import KINDS, format_value
from fastalign.train.options import option_docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "defaults.md"
_SECTION = re.compile(r"^## .*`fastalign train (\w+)`.*TRL's `(\w+)`", re.M)
_CELL = re.compile(r"`([a-z_0-9]+)=([^`]*)`")


def _tables() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``(kind, TRL class name, [(fastalign cell, TRL cell)])`` per section."""
    text = DOC.read_text()
    sections = list(_SECTION.finditer(text))
    tables = []
    for index, match in enumerate(sections):
        end = sections[index + 1].start() if index + 1 < len(sections) else len(text)
        rows = [line.split("|")[1:-1] for line in text[match.end():end].splitlines() if line.startswith("| ")]
        tables.append((match.group(1), match.group(2), [(cells[1], cells[2]) for cells in rows[1:]]))
    return tables


def test_the_doc_covers_dpo_sft_rm_and_grpo():
    assert [kind for kind, _, _ in _tables()] == ["dpo", "sft", "rm", "grpo"]
    assert all(len(rows) >= 4 for _, _, rows in _tables())


@pytest.mark.parametrize("kind, trl_name, rows", _tables(), ids=[kind for kind, _, _ in _tables()])
def test_fastalign_cells_are_the_real_defaults(kind, trl_name, rows):
    docs = option_docs(KINDS[kind][0])
    for ours, _ in rows:
        cells = _CELL.findall(ours)
        assert cells, ours
        for name, value in cells:
            assert name in docs, (kind, name)
            assert format_value(docs[name]["default"]) == value, (kind, name, docs[name]["default"], value)


@pytest.mark.parametrize("kind, trl_name, rows", _tables(), ids=[kind for kind, _, _ in _tables()])
def test_trl_cells_are_trl_116_defaults(kind, trl_name, rows):
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16"):
        pytest.skip(f"the table describes TRL 1.16, installed: {trl.__version__}")
    fields = {field.name: field for field in dataclasses.fields(getattr(trl, trl_name))}
    for _, theirs in rows:
        for name, value in _CELL.findall(theirs):
            field = fields[name]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            assert format_value(default) == value, (trl_name, name, default, value)
