"""README's commands stay true: CI runs README's test command, the example runs."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_command = next(b for b in _bash_blocks(readme) if "pytest" in b)
    assert "pip install torch==2.13.0" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_demo_command_runs_the_example():
    readme = (ROOT / "README.md").read_text()
    demo = _bash_blocks(readme)[0]
    assert demo.startswith("python3 -m venv .venv") and "pip install torch==2.13.0" in demo
    script = demo.rsplit("python ", 1)[1].strip()
    assert (ROOT / script).is_file()
    runpy.run_path(str(ROOT / script), run_name="__main__")
