"""The embedded verifiable task: determinism, disjoint splits, sizes, verifier."""

from __future__ import annotations

import pytest

from fastalign.data import make_preference_task, make_sft_task, verify


def test_deterministic_from_seed_and_split_disjoint():
    first = make_preference_task(300, 100, seed=3)
    again = make_preference_task(300, 100, seed=3)
    other = make_preference_task(300, 100, seed=4)
    assert first["train"].to_list() == again["train"].to_list()
    assert first["test"].to_list() == again["test"].to_list()
    assert first["train"]["prompt"] != other["train"]["prompt"]
    assert (len(first["train"]), len(first["test"])) == (300, 100)
    train, test = set(first["train"]["prompt"]), set(first["test"]["prompt"])
    assert len(train) == 300 and len(test) == 100 and not train & test
    # The test split does not move with num_train; SFT and preference share prompts.
    assert make_preference_task(10, 100, seed=3)["test"]["prompt"] == first["test"]["prompt"]
    sft = make_sft_task(300, 100, seed=3)
    assert sft["train"]["prompt"] == first["train"]["prompt"]
    assert sft["train"]["completion"] == first["train"]["chosen"]
    assert sft["train"].column_names == ["prompt", "completion"]


@pytest.mark.parametrize("task", ["upper", "reverse", "mix"])
def test_chosen_verifies_and_rejected_does_not(task):
    data = make_preference_task(400, 50, seed=0, task=task, min_length=1, max_length=11)
    for row in data["train"].to_list() + data["test"].to_list():
        assert len(row["prompt"].encode()) < 24 and len(row["chosen"].encode()) < 12
        assert row["prompt"].startswith(task if task != "mix" else ("upper", "reverse"))
        assert verify(row["prompt"], row["chosen"])
        assert not verify(row["prompt"], row["rejected"]), row
        assert row["rejected"] != row["chosen"]
    if task == "mix":
        operations = {row["prompt"].split(":")[0] for row in data["train"]}
        assert operations == {"upper", "reverse"}


def test_verify_cuts_at_eos_and_strips_whitespace():
    assert verify("reverse: abc\n", "cba")
    assert verify("reverse: abc\n", " cba\n<eos>junk after eos")
    assert verify("upper: abc\n", "ABC<eos><eos>")
    assert not verify("upper: abc\n", "ABCD<eos>")
    assert not verify("upper: abc\n", "abc")
    assert not verify("upper: abc\n", "ABC\nmore")
    assert verify("upper: abc\n", "ABC</s>x", eos_token="</s>")
    with pytest.raises(ValueError, match="not a synthetic-task prompt"):
        verify("what is 2+2?", "4")


def test_argument_validation():
    with pytest.raises(ValueError, match="task must be"):
        make_preference_task(1, 1, task="sort")
    with pytest.raises(ValueError, match="num_train"):
        make_sft_task(-1, 1)
    with pytest.raises(ValueError, match="max_length"):
        make_sft_task(1, 1, max_length=12)
    with pytest.raises(ValueError, match="min_length"):
        make_sft_task(1, 1, min_length=5, max_length=4)
    with pytest.raises(ValueError, match="num_train \\+ num_test"):
        make_sft_task(20, 0, task="upper", min_length=1, max_length=1)
