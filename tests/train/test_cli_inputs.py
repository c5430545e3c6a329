"""Bad CLI / config input gives exit status 2, one line on stderr naming the option (or the file
and line), and writes nothing; a hypothesis test over ``key=value`` overrides: every value is
either accepted with every option type-correct, or rejected that way — never a traceback.

``fastalign.cli.main`` runs in-process; for accepted values the model loading is replaced by a
stop (``Accepted``), so no training happens.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fastalign.app.recipes as recipes
from fastalign.cli import main
from fastalign.train import DPOConfig

BOMB = """lora_target_modules: &a0 [q_proj, q_proj, q_proj, q_proj, q_proj, q_proj, q_proj, q_proj, q_proj]
x1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
x2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
"""

# (argv after `fastalign`, config file text or None, what stderr must say)
BAD_INPUTS = [
    (["train", "dpo", "max_prompt_length=abc"], None, "option max_prompt_length must be an int or None, got 'abc'"),
    (["train", "dpo", "adam_betas=[0.9]"], None, "option adam_betas must be a list of 2 finite numbers, got [0.9]"),
    (["train", "dpo", "adam_betas=[0.9, 1.5]"], None, "adam_betas must be two numbers in [0, 1)"),
    (["train", "dpo", "device=tpu"], None, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"),
    (["train", "dpo", "learning_rate=.inf"], None, "option learning_rate must be a finite number, got inf"),
    (["train", "dpo", "learning_rate=.nan"], None, "option learning_rate must be a finite number, got nan"),
    (["train", "dpo", "max_steps=1e40"], None, "option max_steps must be an int"),
    (["train", "dpo", "on_nonfinite=ignore"], None, "on_nonfinite must be one of ('stop', 'skip'), got 'ignore'"),
    (["train", "dpo", "beta"], None, "override 'beta' must look like key=value"),
    (["train", "dpo", "beta=[1, *x]"], None, "override beta line 1 column 5: YAML aliases (*x) are not allowed"),
    (["train", "dpo", "1beta=2"], None, "override '1beta=2' must look like key=value"),
    (["train", "dpo", "no_such_option=1"], None, "unknown DPOConfig option(s) ['no_such_option']"),
    (["train", "dpo", "--config"], "beta: [1, 2\nloss_type: sigmoid\n", "line 2 column 10"),
    (["train", "dpo", "--config"], "beta: !!python/object/apply:os.system ['touch pwned']\n",
     "tag !!python/object/apply:os.system is not allowed (plain YAML values only)"),
    (["train", "dpo", "--config"], "beta: !!python/name:os.system\n", "tag !!python/name:os.system is not allowed"),
    (["train", "dpo", "--config"], BOMB, "line 2 column 10: YAML aliases (*a0) are not allowed"),
    (["train", "dpo", "--config"], "beta: 0.1\nbeta: 0.2\n", "line 2 column 1: duplicate key 'beta'"),
    (["train", "dpo", "--config"], "lora_target_modules: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 16"),
    (["train", "dpo", "--config"], "- beta\n- 0.1\n", "must hold a mapping of options"),
    (["train", "dpo", "--config"], b"beta: \xff\xfe\n", "is not UTF-8 text"),
    (["train", "dpo", "--resume", "--overwrite"], None, "argument --overwrite: not allowed with argument --resume"),
    (["demo", "--sft-steps", "-1"], None, "--sft-steps must be an int >= 1, got -1"),
    (["demo", "--dpo-steps", "0"], None, "--dpo-steps must be an int >= 1, got 0"),
    (["demo", "--seed", "-3"], None, "--seed must be an int >= 0, got -3"),
]


def _argv(argv: list[str], out, config_path) -> list[str]:
    argv = list(argv)
    if argv[0] == "train":
        argv[2:2] = ["--model", "tiny", "--data", "synthetic", "--output-dir", str(out)]
        if "--config" in argv:
            argv.insert(argv.index("--config") + 1, str(config_path))
    else:
        argv[1:1] = ["--output-dir", str(out)]
    return argv


@pytest.mark.parametrize("argv, config, message", BAD_INPUTS, ids=[" ".join(a) for a, _, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, config, message):
    monkeypatch.chdir(tmp_path)  # a payload that ran would write here
    config_path = tmp_path / "config.yaml"
    if config is not None:
        config_path.write_bytes(config if isinstance(config, bytes) else config.encode())
    out = tmp_path / "out"
    code = main(_argv(argv, out, config_path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "pwned").exists()


class Accepted(Exception):
    """Raised in place of loading the model: the options were accepted."""


def conforms(value, hint) -> bool:
    """Whether ``value`` is exactly of type ``hint`` (floats finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        return type(value) is tuple and len(value) == len(args) and all(map(conforms, value, args))
    if origin is list:
        return type(value) is list and all(conforms(item, args[0]) for item in value)
    if hint is float:
        return type(value) is float and math.isfinite(value)
    return type(value) is hint


FIELDS = [field.name for field in dataclasses.fields(DPOConfig)]
SPECIAL = [".inf", "-.inf", ".nan", "1e-4", "1e400", "-0", "0x10", "1_000", "true", "no", "null", "~", "", "[]",
           "[0.9]", "[0.9, 0.99]", "[0.9, 0.99, 0.1]", "[a, b]", "[1, [2]]", "{a: 1}", "&a [1]", "*a", "!!binary aGk=",
           "!!python/name:os.system", "2024-01-01", "'quoted'", "a: b", "- x", "---", "|\n text", "[" * 30 + "]" * 30,
           "\x00", "é", "9" * 30, "-1", "0", "1.5", "nan", "inf"]
VALUES = st.one_of(st.sampled_from(SPECIAL), st.integers(0, 8).map(str), st.floats(0, 1).map(repr),
                   st.sampled_from(["sigmoid", "ipo", "none", "cpu", "auto", "skip", "[sigmoid, sft]", "[q_proj]"]),
                   st.integers(-2**70, 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12),
                   st.lists(st.sampled_from(["1", "0.5", "a", "-2", "true", ".inf"]), max_size=3)
                   .map(lambda items: "[" + ", ".join(items) + "]"))
OPTION_NAMES = st.sampled_from([name for name in FIELDS if name != "output_dir"])
KEYS = st.one_of(OPTION_NAMES, OPTION_NAMES, OPTION_NAMES, st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True))


DEFAULTS = DPOConfig()


def near_default(name: str) -> list[str]:
    """The YAML text of the option's default and of neighbours of it (mostly valid values)."""
    value = getattr(DEFAULTS, name)
    if isinstance(value, bool):
        return ["true", "false"]
    if isinstance(value, (int, float)):
        return [repr(value), repr(value * 2 + 1), repr(type(value)(1)), repr(-value - 1)]
    if isinstance(value, (list, tuple)):
        return ["[" + ", ".join(map(str, value)) + "]", "[]"]
    if value is None:
        return ["null", "1", "0.5", "[1.0]", "x"]
    return [str(value), f"{value}x"]


PAIRS = st.one_of(st.tuples(KEYS, VALUES),
                  OPTION_NAMES.flatmap(lambda name: st.tuples(st.just(name), st.sampled_from(near_default(name)))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(PAIRS, min_size=1, max_size=3))
def test_any_key_value_is_accepted_type_correct_or_rejected_with_exit_2(tmp_path, capsys, pairs):
    out = tmp_path / "out"
    seen = {}

    def stop(*args, **kwargs):
        raise Accepted()

    real = DPOConfig.from_dict.__func__

    def spy(cls, values):
        seen["config"] = real(cls, values)
        return seen["config"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipes, "load_model", stop)
        patch.setattr(DPOConfig, "from_dict", classmethod(spy))
        argv = ["train", "dpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(out)]
        try:
            code = main(argv + [f"{key}={value}" for key, value in pairs])
        except Accepted:
            code = None
    err = capsys.readouterr().err
    assert "Traceback" not in err
    event("accepted" if code is None else "rejected")
    if code is None:
        config = seen["config"]
        hints = typing.get_type_hints(DPOConfig)
        for field in dataclasses.fields(config):
            assert conforms(getattr(config, field.name), hints[field.name]), (field.name, getattr(config, field.name))
    else:
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (pairs, code, err)
    assert not out.exists()
