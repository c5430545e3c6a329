"""Every Python snippet of docs/integrations.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
SNIPPETS = [block.strip() for block in re.findall(r"```python\n(.*?)```", DOC, flags=re.S)]


def test_every_tool_has_a_before_after_pair():
    diffs = re.findall(r"```diff\n(.*?)```", DOC, flags=re.S)
    assert len(diffs) == len(SNIPPETS) == 4
    for needle in ("liger_kernel", "cut_cross_entropy", "from trl import DPOConfig, DPOTrainer", "with_fused_head"):
        assert any(needle in diff for diff in diffs), needle


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, tmp_path, monkeypatch):
    if "trl" in SNIPPETS[index]:
        pytest.importorskip("trl")
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPETS[index], f"docs/integrations.md python block {index}", "exec"), {"__name__": "__main__"})
