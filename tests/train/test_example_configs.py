"""examples/configs/ holds one commented YAML per trainer kind: each loads, validates, sets only
options of its kind, and runs (one step of the tiny preset on a small synthetic task through the
CLI); the configs README's commands name exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import fastalign.app.recipes as recipes
from fastalign.cli import main
from fastalign.cli_help import KINDS
from fastalign.train.config_file import load_config_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "configs"


def test_there_is_one_config_per_kind_and_nothing_else():
    assert sorted(path.stem for path in CONFIGS.glob("*.yaml")) == sorted(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_config_loads_validates_and_explains_itself(kind):
    path = CONFIGS / f"{kind}.yaml"
    values = load_config_file(path)
    config = KINDS[kind][0].from_dict(values)
    assert values and all(getattr(config, key) == value or isinstance(value, list) for key, value in values.items())
    text = path.read_text()
    assert f"fastalign train {kind}" in text and f"--config examples/configs/{kind}.yaml" in text
    assert text.count("#") >= 8, "a commented example"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_config_runs_one_step(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(recipes.SYNTHETIC_SIZES, "num_train", 48)
    monkeypatch.setitem(recipes.SYNTHETIC_SIZES, "num_test", 4)
    out = tmp_path / "run"
    argv = ["train", kind, "--model", "tiny", "--data", "synthetic", "--config", str(CONFIGS / f"{kind}.yaml"),
            "--output-dir", str(out), "--max-steps", "1", "progress=false"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "final" / "config.json").is_file()
    assert f"fastalign train {kind} done: 1 step in" in capsys.readouterr().out


def test_the_configs_readme_names_exist():
    readme = (ROOT / "README.md").read_text()
    named = {word for line in re.findall(r"^fastalign .*$", readme, flags=re.M)
             for word in shlex.split(line.split("#", 1)[0]) if word.startswith("examples/configs/")}
    assert named, "README shows --config with an example config"
    assert all((ROOT / name).is_file() for name in named), named
