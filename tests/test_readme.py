"""README stays true: CI runs README's test command, the demo command names a real entry
point, and every Python snippet runs as written."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
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


DEMO_RESULTS = ROOT / "bench" / "results" / "x86-64" / "demo_seeds.json"
_CELL = re.compile(r"(\d+\.\d{3}) \((\d+\.\d{3})–(\d+\.\d{3})\)")


def _demo_section() -> str:
    start = README.index("Measured on this project's 2-core CPU machine")
    return README[start:README.index("\n## ", start)]


def _demo_table(section: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_readme_demo_table_is_the_committed_seed_results():
    """README's demo table is bench/results/x86-64/demo_seeds.json: every mean (min–max) cell,
    the step counts in the row labels, the seeds and the wall times; and those results were
    measured with the demo's current defaults (change a default: rerun bench/bench_demo.py)."""
    import json
    from dataclasses import asdict

    from fastalign.app.demo_settings import DemoSettings

    results = json.loads(DEMO_RESULTS.read_text())
    defaults = asdict(DemoSettings())
    assert {k: defaults[k] for k in results["settings"]} == results["settings"], "rerun bench/bench_demo.py"
    section = _demo_section()
    rows = _demo_table(section)
    assert len(rows) == len(results["mean_min_max"]) == 3
    metrics = ("preference_accuracy", "exact_match", "win_rate_vs_sft")
    for row, entry in zip(rows, results["mean_min_max"]):
        assert row[0].startswith(entry["model"]), (row[0], entry["model"])
        for text, metric in zip(row[1:], metrics):
            match = _CELL.fullmatch(text)
            assert match, f"{row[0]} / {metric}: {text!r} is not 'mean (min–max)'"
            stats = entry[metric]
            expected = tuple(f"{stats[k]:.3f}" for k in ("mean", "min", "max"))
            assert match.groups() == expected, f"{row[0]} / {metric}: README {text!r}, results {expected}"
    settings = results["settings"]
    assert f"({settings['sft_steps']} steps)" in rows[1][0]
    assert f"({settings['dpo_steps']} steps" in rows[2][0]
    seeds = [run["seed"] for run in results["runs"]]
    assert f"seeds {', '.join(map(str, seeds))}" in section
    walls = [run["wall_s"] for run in results["runs"]]
    assert f"{min(walls):.0f}–{max(walls):.0f} s" in section, "README's demo wall time is not the measured one"


def test_readme_demo_table_check_fails_on_a_changed_number(monkeypatch):
    """The check above really compares numbers: one digit changed in README fails it."""
    section = _demo_section()
    first = _CELL.search(section)
    changed = f"{float(first.group(1)) + 0.001:.3f}"
    monkeypatch.setattr(sys.modules[__name__], "README", README.replace(first.group(0), first.group(0).replace(
        first.group(1), changed, 1), 1))
    with pytest.raises(AssertionError):
        test_readme_demo_table_is_the_committed_seed_results()


LONG_CONTEXT_RESULTS = ROOT / "bench" / "results" / "x86-64" / "long_context_cpu.json"


def _long_pairs_paragraph() -> str:
    start = README.index("**Long pairs.**")
    return README[start:README.index("```", start)]


def test_readme_long_pair_numbers_are_the_committed_results():
    """README's long-pair figures are bench/results/x86-64/long_context_cpu.json's: the peaks
    at the longest length, memory per token and its phase, the ratio and the longest pairs."""
    import json

    results = json.loads(LONG_CONTEXT_RESULTS.read_text())
    summary = {entry["provider"]: entry for entry in results["environment"]["summary"]}
    trl, fastalign, untiled = summary["trl"], summary["fastalign"], summary["fastalign-no-tiled-mlp"]
    text = " ".join(_long_pairs_paragraph().split())
    expected = [
        f"{fastalign['peak_at_longest_mb']:,.0f} MiB", f"{trl['peak_at_longest_mb']:,.0f} MiB",
        f"costs fastalign {fastalign['kib_per_token']:.1f} KiB and TRL {trl['kib_per_token']:.1f} KiB "
        f"({fastalign['per_token_vs_trl']:.2f}×)",
        f"({untiled['kib_per_token']:.1f} without it)",
        f"fastalign {fastalign['longest_length'] / 1000:.0f}k tokens, TRL {trl['longest_length'] / 1000:.0f}k",
        f"grows by only {trl['peak_kib_per_token']:.1f} KiB per token",
    ]
    for figure in expected:
        assert figure in text, f"README's long-pair paragraph lacks {figure!r} (bench/results: rerun or copy)"
    assert fastalign["per_token_phase"] == trl["per_token_phase"] == "decoder backward"
