"""docs/architecture.md stays true: every path it names exists, and the import rules it states
hold for every module (read with ``ast``: nothing is imported to check)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def _named_paths(text: str) -> set[str]:
    spans = re.findall(r"`([^`\s]+)`", text)
    return {span for span in spans if "/" in span and not re.search(r"[<>{}*]", span)
            and re.fullmatch(r"[\w./-]+", span)}


def test_every_path_named_in_the_architecture_doc_exists():
    named = _named_paths(DOC.read_text())
    assert len(named) >= 40, "the doc names the places it describes"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


def test_every_file_named_in_a_layer_row_is_in_that_layer():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and "`" in line]
    checked = 0
    for row in rows:
        spans = re.findall(r"`([^`\s]+)`", row)
        folders = [ROOT / span for span in spans if span.endswith("/")]
        for name in (span for span in spans if span.endswith(".py") and "/" not in span):
            assert any((folder / name).is_file() for folder in folders), (name, row[:60])
            checked += 1
    assert checked >= 25


def test_the_path_check_catches_a_missing_file():
    assert _named_paths("see `fastalign/ops/nope.py` and `fastalign/ops/`") == {"fastalign/ops/nope.py",
                                                                                "fastalign/ops/"}
    assert not (ROOT / "fastalign/ops/nope.py").exists()


# -- import direction ---------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "kernels":
        parts = ["fastalign", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the fastalign modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "fastalign" or name.startswith("fastalign.")}


def _sources(*places: str) -> list[Path]:
    return sorted(path for place in places
                  for path in ([ROOT / place] if place.endswith(".py") else (ROOT / place).rglob("*.py")))


def _within(name: str, *allowed: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


LIBRARY = [path for path in _sources("fastalign") if _module_name(path).split(".")[1:2] not in (["app"], ["cli"])
           and path.name not in ("__main__.py",)]


@pytest.mark.parametrize("layer, allowed", [
    ("kernels", ("fastalign.kernels",)),
    ("fastalign/ops", ("fastalign.ops", "fastalign.kernels", "fastalign.choices")),
    ("fastalign/losses", ("fastalign.losses", "fastalign.ops", "fastalign.kernels", "fastalign.choices")),
    ("fastalign/choices.py", ()),
])
def test_lower_layers_import_nothing_above_them(layer, allowed):
    wrong = {f"{path.relative_to(ROOT)} imports {name}" for path in _sources(layer) for name in _imports(path)
             if not _within(name, *allowed)}
    assert not wrong, sorted(wrong)


def test_kernels_import_nothing_from_fastalign_at_all():
    # relative imports inside kernels/ resolve to fastalign.kernels; no absolute fastalign name
    for path in _sources("kernels"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+fastalign\b", text, flags=re.M), path


def test_nothing_in_the_library_imports_the_app_or_the_cli():
    wrong = {f"{path.relative_to(ROOT)} imports {name}" for path in LIBRARY for name in _imports(path)
             if _within(name, "fastalign.app", "fastalign.cli", "fastalign.cli_help")}
    assert not wrong, sorted(wrong)


def test_nothing_in_the_library_imports_the_bench_harness():
    wrong = {f"{path.relative_to(ROOT)} imports {name}" for path in LIBRARY for name in _imports(path)
             if _within(name, "fastalign.bench") and not _module_name(path).startswith("fastalign.bench")}
    assert not wrong, sorted(wrong)


def test_the_import_reader_sees_relative_and_aliased_imports(tmp_path):
    probe = ROOT / "fastalign" / "ops" / "linear_logprobs.py"
    names = _imports(probe)
    assert any(_within(name, "fastalign.kernels") or _within(name, "fastalign.ops") for name in names)
    assert _module_name(ROOT / "kernels" / "plans.py") == "fastalign.kernels.plans"
    assert not _within("fastalign.train", "fastalign.ops", "fastalign.kernels")
