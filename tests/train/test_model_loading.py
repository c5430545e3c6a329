"""Loading options of ``--model`` on a tiny saved model: ``--dtype`` (the weights' dtype),
``--revision`` (a branch or commit of a hub model: an offline hub cache with two commits) and
``--trust-remote-code`` (a model with its own code is refused without it, loaded with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastalign.app.recipes as recipes
from fastalign.app.recipes import load_model
from fastalign.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny preset saved with its tokenizer, in float32 and in bfloat16."""
    root = tmp_path_factory.mktemp("saved")
    model, tokenizer = load_model("tiny", seed=1)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.mark.parametrize("source, dtype, expected", [
    ("fp32", "float32", torch.float32), ("fp32", "bfloat16", torch.bfloat16), ("fp32", "float16", torch.float16),
    ("bf16", "auto", torch.bfloat16), ("fp32", "auto", torch.float32), ("bf16", "float32", torch.float32),
])
def test_dtype_sets_the_weights_dtype(saved, source, dtype, expected):
    model, _ = load_model(str(saved / source), dtype=dtype)
    assert {parameter.dtype for parameter in model.parameters()} == {expected}


def test_the_tiny_preset_takes_the_dtype_too():
    model, _ = load_model("tiny", dtype="bfloat16")
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


class Accepted(Exception):
    """Raised in place of loading: the CLI got this far with these options."""


@pytest.mark.parametrize("command", ["train", "eval"])
def test_the_cli_flags_reach_the_loader(command, tmp_path, monkeypatch):
    seen = {}

    def stop(name, **options):
        seen.update(name=name, **options)
        raise Accepted

    monkeypatch.setattr(recipes, "load_model", stop)
    argv = (["train", "dpo", "--output-dir", str(tmp_path / "out")] if command == "train" else ["eval"])
    argv += ["--model", "org/model", "--data", "synthetic", "--dtype", "bfloat16", "--revision", "v1",
             "--trust-remote-code"]
    with pytest.raises(Accepted):
        main(argv)
    assert seen == {"name": "org/model", "seed": 0, "dtype": "bfloat16", "revision": "v1", "trust_remote_code": True}


def test_bad_loading_options_exit_2_with_one_line(tmp_path, capsys):
    base = ["train", "dpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "out")]
    assert main(base + ["--dtype", "int8"]) == 2
    assert "argument --dtype: invalid choice: 'int8'" in capsys.readouterr().err
    assert main(base + ["--revision", " "]) == 2
    assert "--revision must be a non-empty branch, tag or commit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# Runs in a fresh interpreter: the hub cache location and offline mode are read at import.
_HUB_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from fastalign.app.recipes import load_model

    def first(model):
        return float(next(model.parameters()).detach().double().sum())

    repo, custom = sys.argv[1], sys.argv[2]
    out = {"main": first(load_model(repo)[0]), "v1": first(load_model(repo, revision="v1")[0]),
           "commit": first(load_model(repo, revision=sys.argv[3])[0])}
    try:
        load_model(custom)
        out["without_trust"] = "loaded"
    except ValueError as error:
        out["without_trust"] = str(error)
    out["with_trust"] = type(load_model(custom, trust_remote_code=True)[0]).__name__
    print(json.dumps(out))
""")

_CONFIG_CODE = "from transformers import LlamaConfig\n\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'fa_tiny'\n"
_MODEL_CODE = ("from transformers import LlamaForCausalLM\n\nfrom .configuration_fa_tiny import TinyConfig\n\n\n"
               "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")


def _hub_cache(root, saved) -> tuple[str, dict[str, float]]:
    """An offline hub cache holding ``fastalign-test/tiny`` at two commits: main (the saved
    model) and ``v1`` (its weights doubled). Returns the v1 commit and each commit's first-
    parameter sum."""
    repo = root / "models--fastalign-test--tiny"
    commits = {"v1": "1" * 40, "main": "2" * 40}
    sums = {}
    for ref, commit in commits.items():
        model, tokenizer = load_model(str(saved / "fp32"))
        if ref == "v1":
            with torch.no_grad():
                next(model.parameters()).mul_(2.0)
        snapshot = repo / "snapshots" / commit
        model.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        sums[ref] = float(next(model.parameters()).detach().double().sum())
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commits["v1"], sums


def _custom_code_model(path, saved) -> None:
    """A local model whose config names its own Python classes (``auto_map``)."""
    model, tokenizer = load_model(str(saved / "fp32"))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="fa_tiny", architectures=["TinyForCausalLM"],
                  auto_map={"AutoConfig": "configuration_fa_tiny.TinyConfig",
                            "AutoModelForCausalLM": "modeling_fa_tiny.TinyForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "configuration_fa_tiny.py").write_text(_CONFIG_CODE)
    (path / "modeling_fa_tiny.py").write_text(_MODEL_CODE)


def test_revision_and_trust_remote_code(saved, tmp_path):
    cache = tmp_path / "hub"
    v1_commit, sums = _hub_cache(cache, saved)
    custom = tmp_path / "custom"
    _custom_code_model(custom, saved)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "mod")}
    result = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, "fastalign-test/tiny", str(custom), v1_commit],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["main"] == pytest.approx(sums["main"]) and out["v1"] == pytest.approx(sums["v1"])
    assert out["commit"] == pytest.approx(sums["v1"]) and sums["v1"] != pytest.approx(sums["main"])
    assert "pass --trust-remote-code" in out["without_trust"]
    assert out["with_trust"] == "TinyForCausalLM"
