"""The CLI teaches itself: `fastalign train KIND --help` lists every option of KIND with its
type, default and help, grouped; every flag of every command is described; a misspelled option
or flag names the close match; `--help` answers fast because nothing imports torch before a
command runs."""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

import pytest

from fastalign.cli import build_parser, main
from fastalign.cli_help import KINDS, format_value
from fastalign.train.options import GROUPS, option_docs

HELP_SECONDS = 1.5


def _help(capsys, *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_train_kind_help_lists_every_option_with_type_default_and_help(kind, capsys):
    text = _help(capsys, "train", kind)
    docs = option_docs(KINDS[kind][0])
    assert len(docs) > 30
    flat = " ".join(text.split())  # help lines are wrapped
    for name, doc in docs.items():
        assert f"\n  {name}={format_value(doc['default'])}  ({doc['type']})\n" in text, name
        assert " ".join(doc["help"].split()) in flat, name
    # Grouped, in GROUPS order, each option under its own group's heading.
    groups, placed = [], {}
    for line in text[text.index("\noptions (key=value"):].splitlines():
        heading = re.match(rf"^({'|'.join(GROUPS)})\b.*:$", line)
        if heading:
            groups.append(heading.group(1))
        elif re.match(r"^  [a-z_0-9]+=", line):
            placed[line.split("=")[0].strip()] = groups[-1]
    assert groups == [group for group in GROUPS if any(doc["group"] == group for doc in docs.values())]
    assert placed == {name: doc["group"] for name, doc in docs.items()}

def test_each_kind_lists_its_own_options(capsys):
    dpo, sft, ppo = (_help(capsys, "train", kind) for kind in ("dpo", "sft", "ppo"))
    assert "\n  beta=0.1  (float)" in dpo and "\n  beta=" not in sft
    assert "\n  pairs_per_step=null" in dpo and "\n  examples_per_step=null" in sft
    assert "\n  kl_coef=0.05  (float)" in ppo and "kl_coef" not in dpo
    assert "\n  learning_rate=0.0001  (float)" in sft and "\n  learning_rate=1e-05  (float)" in dpo


def _parsers(parser: argparse.ArgumentParser, prog: str = "fastalign"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{prog} {name}")


def test_every_argument_of_every_command_is_described():
    seen = set()
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 10, (prog, action.dest)
            seen.add(prog)
    assert {"fastalign demo", "fastalign eval", "fastalign train dpo"} <= seen


def test_demo_and_eval_help_show_their_defaults(capsys):
    demo = _help(capsys, "demo")
    from fastalign.app.demo_settings import DemoSettings

    defaults = DemoSettings()
    assert f"(default: {defaults.sft_steps})" in demo and f"(default: {defaults.dpo_steps})" in demo
    evaluate = " ".join(_help(capsys, "eval").split())
    assert "(default: 0.1)" in evaluate and "(default: 16)" in evaluate and "--trust-remote-code" in evaluate


@pytest.mark.parametrize("argv, hint", [
    (["train", "dpo", "bta=0.2"], "bta: did you mean beta?"),
    (["train", "dpo", "learning_rat=1e-4"], "did you mean learning_rate?"),
    (["train", "sft", "pairs_per_step=8"], "examples_per_step"),
    (["train", "dpo", "--seeed", "3"], "did you mean --seed?"),
])
def test_a_misspelled_option_names_the_close_match(argv, hint, tmp_path, capsys):
    argv[2:2] = ["--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and hint in err, err
    assert not (tmp_path / "out").exists()


def test_a_misspelled_key_in_a_config_file_names_the_close_match(tmp_path, capsys):
    config = tmp_path / "dpo.yaml"
    config.write_text("beta: 0.2\nrpo_alfa: 1.0\n")
    argv = ["train", "dpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "o"),
            "--config", str(config)]
    assert main(argv) == 2
    assert "rpo_alfa: did you mean rpo_alpha?" in capsys.readouterr().err


def test_an_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path, capsys):
    argv = ["train", "dpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path), "zzzz=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "known: " in err and "beta" in err


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fastalign", *argv], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "usage: fastalign" in result.stdout, result.stderr
    return elapsed


@pytest.mark.parametrize("argv", [["--help"], ["train", "dpo", "--help"]], ids=" ".join)
def test_help_answers_in_well_under_two_seconds(argv):
    median = statistics.median(_seconds(argv) for _ in range(3))
    assert median < HELP_SECONDS, f"fastalign {' '.join(argv)}: median {median:.2f} s of 3"


def test_the_cli_and_the_configs_import_no_torch():
    code = ("import sys, fastalign, fastalign.cli, fastalign.train, fastalign.train.config, "
            "fastalign.cli_help; print(sorted(m for m in ('torch', 'transformers', 'datasets') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
