"""README stays true: CI runs README's test command, the demo command names a real entry
point, and every Python snippet runs as written."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)]


def test_ci_runs_readme_test_command():
    test_command = next(b for b in _blocks("bash") if "pytest" in b)
    assert "pip install torch==2.13.0" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_demo_command_is_the_installed_demo():
    demo = _blocks("bash")[0]
    assert demo.startswith("python3 -m venv .venv") and "pip install torch==2.13.0" in demo
    assert demo.endswith("fastalign demo")
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fastalign"] == "fastalign.cli:main"  # `fastalign demo` itself runs in tests/train


def test_readme_cli_examples_parse():
    from fastalign.cli import build_parser

    parser = build_parser()
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("fastalign ")]
    assert len(commands) >= 4
    for line in commands:
        words = shlex.split(line.split("#", 1)[0])[1:]
        args, extra = parser.parse_known_args(words)
        assert all("=" in item for item in extra), line


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that write (runs/...) write here
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {"__name__": "__main__"})


def test_quickstart_example_runs():
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
