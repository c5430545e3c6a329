"""Format adapters through ``load_preference_data`` / ``load_sft_data``: detection, override,
HH splitting, ranked pairs, chat rendering, multi-turn SFT, malformed rows."""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset

from fastalign.data import (
    byte_tokenizer,
    detect_preference_format,
    load_preference_data,
    load_sft_data,
    loading_stats,
)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def _rows(dataset: Dataset) -> list[dict]:
    return dataset.to_list()


def _chat(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_explicit_strings_pass_through():
    data = [{"prompt": "2+2=", "chosen": "4", "rejected": "5", "extra": 1}]
    out = load_preference_data(data)
    assert out.column_names == ["prompt", "chosen", "rejected"]
    assert _rows(out) == [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    assert loading_stats(out).format == "explicit"


def test_hh_transcripts_split_at_last_assistant_turn():
    prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    data = [{"chosen": prefix + " fine, thanks", "rejected": prefix + " go away"}]
    out = load_preference_data(data)
    assert loading_stats(out).format == "hh"
    # The prompt keeps earlier assistant turns and ends with the last marker; the answers keep
    # their leading space (it belongs to the first answer token).
    assert _rows(out) == [{"prompt": prefix, "chosen": " fine, thanks", "rejected": " go away"}]


def test_hh_prefix_mismatch_names_row_and_field():
    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    bad = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: X\n\nAssistant: c"}
    with pytest.raises(ValueError, match=r"row 1: field 'rejected'.*differs"):
        load_preference_data([good, bad])
    with pytest.raises(ValueError, match=r"row 0: field 'chosen'.*Assistant"):
        load_preference_data([{"chosen": "no turns here", "rejected": "\n\nHuman: a\n\nAssistant: c"}])


def test_ranked_replies_give_all_better_worse_pairs():
    data = [{"prompt": "p", "responses": ["ok", "best", "worst"], "ranks": [1, 0, 2]}]
    out = load_preference_data(data)
    assert loading_stats(out).format == "ranked"
    pairs = [(r["chosen"], r["rejected"]) for r in _rows(out)]
    assert pairs == [("best", "ok"), ("best", "worst"), ("ok", "worst")]
    capped = load_preference_data(data, max_pairs_per_prompt=2)
    assert [(r["chosen"], r["rejected"]) for r in _rows(capped)] == pairs[:2]


def test_ranked_scores_dicts_and_ties():
    # Higher score is better; equal scores make no pair.
    data = [{"prompt": "p", "replies": [{"text": "a", "score": 1.0}, {"text": "b", "score": 3.0},
                                        {"text": "c", "score": 1.0}]}]
    out = load_preference_data(data)
    assert [(r["chosen"], r["rejected"]) for r in _rows(out)] == [("b", "a"), ("b", "c")]
    with pytest.raises(ValueError, match=r"row 0: field 'responses'.*different ranks"):
        load_preference_data([{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 0]}])
    with pytest.raises(ValueError, match=r"field 'ranks'.*one value per reply"):
        load_preference_data([{"prompt": "p", "responses": ["a", "b"], "ranks": [0]}])


def test_conversational_preference_rendered_with_chat_template(tokenizer):
    prompt = [_chat("user", "hi")]
    data = [{"prompt": prompt, "chosen": [_chat("assistant", "hello")], "rejected": [_chat("assistant", "bye")]}]
    out = load_preference_data(data, tokenizer=tokenizer)
    assert loading_stats(out).format == "conversational"
    assert _rows(out) == [{"prompt": "<bos>user: hi\nassistant: ", "chosen": "hello<eos>", "rejected": "bye<eos>"}]
    # Implicit prompt: all messages but the last, equal in both conversations.
    implicit = [{"chosen": prompt + [_chat("assistant", "hello")], "rejected": prompt + [_chat("assistant", "bye")]}]
    assert _rows(load_preference_data(implicit, tokenizer=tokenizer)) == _rows(out)
    with pytest.raises(ValueError, match="pass tokenizer="):
        load_preference_data(data)


def test_conversational_malformed_messages(tokenizer):
    base = {"prompt": [_chat("user", "hi")], "chosen": [_chat("assistant", "a")], "rejected": [_chat("assistant", "b")]}
    with pytest.raises(ValueError, match=r"row 0: field 'chosen\[0\].role'"):
        load_preference_data([{**base, "chosen": [_chat("user", "a")]}], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"row 0: field 'rejected'.*empty answer"):
        load_preference_data([{**base, "rejected": [_chat("assistant", "  ")]}], tokenizer=tokenizer)
    diverging = {"chosen": [_chat("user", "x"), _chat("assistant", "a")],
                 "rejected": [_chat("user", "y"), _chat("assistant", "b")]}
    with pytest.raises(ValueError, match=r"row 0: field 'rejected'"):
        load_preference_data([diverging], tokenizer=tokenizer)


def test_detection_and_override():
    assert detect_preference_format(Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])) == "explicit"
    assert detect_preference_format(Dataset.from_list([{"chosen": "a", "rejected": "b"}])) == "hh"
    with pytest.raises(ValueError, match="cannot detect"):
        load_preference_data([{"question": "q", "answer": "a"}])
    # Override: HH-shaped strings read as explicit need a prompt column, named in the error.
    with pytest.raises(ValueError, match=r"format 'explicit' needs column\(s\) \['prompt'\]"):
        load_preference_data([{"chosen": "a", "rejected": "b"}], format="explicit")
    # Override: an explicit dataset whose strings are HH transcripts, split as HH.
    row = {"prompt": "ignored", "chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}
    out = load_preference_data([row], format="hh")
    assert _rows(out) == [{"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"}]
    with pytest.raises(ValueError, match="format must be"):
        load_preference_data([row], format="nope")
    with pytest.raises(ValueError, match="on_error must be"):
        load_preference_data([row], on_error="ignore")
    with pytest.raises(ValueError, match="max_pairs_per_prompt"):
        load_preference_data([row], max_pairs_per_prompt=0)


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"prompt": "p", "chosen": None, "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "p", "chosen": "a", "rejected": ""}, "rejected", "empty answer"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty"),
    ],
)
def test_malformed_row_raises_naming_row_and_field(row, field, reason):
    data = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2 + [row]
    with pytest.raises(ValueError, match=rf"row 2: field '{field}': {reason}"):
        load_preference_data(data)


def test_wrong_type_names_field():
    dataset = Dataset.from_dict({"prompt": ["p", "p"], "chosen": ["a", "a"], "rejected": [1, 2]})
    with pytest.raises(ValueError, match=r"row 0: field 'rejected': expected a string, got int"):
        load_preference_data(dataset, format="explicit")


def test_skip_counts_and_logs(caplog):
    data = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": " ", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": None, "chosen": "a", "rejected": "b"},
    ]
    with caplog.at_level(logging.WARNING, logger="fastalign"):
        out = load_preference_data(data, on_error="skip")
    assert len(out) == 2
    stats = loading_stats(out)
    assert (stats.source_rows, stats.examples, stats.skipped) == (4, 2, 2)
    assert stats.skipped_examples == ((1, "chosen", "empty answer"), (3, "prompt", "missing"))
    assert [r.message for r in caplog.records if "skipped" in r.message] == [
        "preference data: skipped 2 of 4 malformed rows, e.g. row 1 (chosen: empty answer), row 3 (prompt: missing)"
    ]
    # The record survives later maps (tokenization).
    assert loading_stats(out.map(lambda r: r)).skipped == 2
    assert loading_stats(Dataset.from_list(data)) is None


# ----------------------------------------------------------------------------- SFT


def test_sft_prompt_completion_and_detection():
    out = load_sft_data([{"prompt": "q", "completion": "a"}])
    assert _rows(out) == [{"prompt": "q", "completion": "a"}]
    assert loading_stats(out).format == "prompt_completion"
    with pytest.raises(ValueError, match=r"row 0: field 'completion': empty answer"):
        load_sft_data([{"prompt": "q", "completion": ""}])


def test_sft_multi_turn_one_example_per_assistant_turn(tokenizer):
    messages = [_chat("system", "be brief"), _chat("user", "hi"), _chat("assistant", "hello"),
                _chat("user", "bye"), _chat("assistant", "ciao")]
    out = load_sft_data([{"messages": messages}], tokenizer=tokenizer)
    assert loading_stats(out).format == "messages"
    rows = _rows(out)
    assert rows == [
        {"prompt": "<bos>system: be brief\nuser: hi\nassistant: ", "completion": "hello<eos>"},
        {"prompt": "<bos>system: be brief\nuser: hi\nassistant: hello<eos>\nuser: bye\nassistant: ",
         "completion": "ciao<eos>"},
    ]
    # Each example is the conversation up to that turn: only assistant text is ever a completion.
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rows[-1]["prompt"] + rows[-1]["completion"] == full


def test_sft_multi_turn_malformed(tokenizer):
    with pytest.raises(ValueError, match=r"row 0: field 'messages': no assistant turn"):
        load_sft_data([{"messages": [_chat("user", "hi")]}], tokenizer=tokenizer)
    bad = [_chat("user", "hi"), _chat("assistant", "")]
    with pytest.raises(ValueError, match=r"row 0: field 'messages\[1\].content': empty answer"):
        load_sft_data([{"messages": bad}], tokenizer=tokenizer)
    out = load_sft_data([{"messages": bad}, {"messages": [_chat("user", "a"), _chat("assistant", "b")]}],
                        tokenizer=tokenizer, on_error="skip")
    assert len(out) == 1 and loading_stats(out).skipped == 1


def test_sft_conversational_prompt_completion(tokenizer):
    row = {"prompt": [_chat("user", "hi")], "completion": [_chat("assistant", "yo")]}
    out = load_sft_data([row], tokenizer=tokenizer)
    assert loading_stats(out).format == "conversational"
    assert _rows(out) == [{"prompt": "<bos>user: hi\nassistant: ", "completion": "yo<eos>"}]
    with pytest.raises(ValueError, match="cannot detect the SFT format"):
        load_sft_data([{"text": "x"}])
    with pytest.raises(ValueError, match=r"needs column\(s\) \['messages'\]"):
        load_sft_data([row], format="messages", tokenizer=tokenizer)
