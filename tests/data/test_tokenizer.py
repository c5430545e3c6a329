"""The byte tokenizer: ids, exact round trip, save/load with AutoTokenizer, chat template."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from fastalign.data import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_ids_are_bytes_then_specials(tokenizer):
    assert (PAD_ID, BOS_ID, EOS_ID, VOCAB_SIZE) == (256, 257, 258, 259)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert len(tokenizer) == VOCAB_SIZE
    text = "é a\n\x00"
    assert tokenizer(text)["input_ids"] == list(text.encode("utf-8")), "one id per byte, no BOS added"
    # Special tokens only when asked to parse them (what fastalign.data does with rendered rows);
    # plain text, "<eos>" included, is bytes.
    assert tokenizer("<bos>x<eos>", split_special_tokens=False)["input_ids"] == [BOS_ID, ord("x"), EOS_ID]
    assert tokenizer("<bos>x<eos>")["input_ids"] == list(b"<bos>x<eos>")


@functools.cache
def _shared():
    # hypothesis does not reset fixtures between examples; build the tokenizer once instead.
    return byte_tokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(text):
    tokenizer = _shared()
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", ["", "  two  spaces . ,", "tab\tnew\nline\r\n", "🌍 中文 ÿ Ġ Ċ", "<eos> literal"])
def test_round_trip_edge_cases(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template(tokenizer):
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos>user: Hi\nassistant: Hello<eos>\nuser: Bye\nassistant: "
    # The generation prompt is a prefix of the conversation that continues with the answer,
    # and the difference is exactly answer + <eos>.
    answered = tokenizer.apply_chat_template(MESSAGES + [{"role": "assistant", "content": "Ciao"}], tokenize=False)
    assert answered == prompt + "Ciao<eos>"
    assert tokenizer(prompt, split_special_tokens=False)["input_ids"][0] == BOS_ID
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                        tokenizer_kwargs={"split_special_tokens": False})["input_ids"]
    assert ids[0] == BOS_ID and ids.count(EOS_ID) == 1


def test_save_and_load_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, len(loaded)) == (256, 257, 258, 259)
    text = "héllo <eos> 🌍"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"] == list(text.encode("utf-8"))
    assert loaded.decode(loaded(text)["input_ids"]) == text
    render = dict(tokenize=False, add_generation_prompt=True)
    assert loaded.apply_chat_template(MESSAGES, **render) == tokenizer.apply_chat_template(MESSAGES, **render)
    assert loaded.decode([ord("a"), EOS_ID, PAD_ID], skip_special_tokens=True) == "a"
