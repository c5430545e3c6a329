"""Tokenization (EOS, BOS rules, caching) and the packer consuming its output."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from fastalign.data import (
    EOS_ID,
    byte_tokenizer,
    load_preference_data,
    load_sft_data,
    make_preference_task,
    make_sft_task,
    pack_dataset,
    tokenize_preference_data,
    tokenize_sft_data,
)
from fastalign.data.tokenize import tokenizer_adds_bos
from fastalign.packing import CHOSEN, REJECTED


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_preference_ids_and_eos(tokenizer):
    data = Dataset.from_list([{"prompt": "p: x\n", "chosen": "X", "rejected": "Y<eos>"}])
    out = tokenize_preference_data(data, tokenizer)
    row = out[0]
    assert row["prompt_ids"] == _bytes("p: x\n"), "no BOS: the byte tokenizer adds none itself"
    assert row["chosen_ids"] == [ord("X"), EOS_ID]
    assert row["rejected_ids"] == [ord("Y"), EOS_ID], "an answer already ending in EOS gets no second one"
    assert row["prompt"] == "p: x\n", "text columns are kept"
    plain = tokenize_preference_data(data, tokenizer, add_eos=False)[0]
    assert plain["chosen_ids"] == [ord("X")]


def test_bos_only_when_the_tokenizer_adds_one(tokenizer):
    assert not tokenizer_adds_bos(tokenizer)
    data = Dataset.from_list([{"prompt": "q", "completion": "a"}, {"prompt": "<bos>q", "completion": "a"}])
    out = tokenize_sft_data(data, tokenizer, add_bos=True)
    # BOS is added once, also to text that (chat-templated) already starts with it.
    assert out["prompt_ids"][:] == [[257, ord("q")], [257, ord("q")]]


def test_empty_tokens_and_bad_arguments(tokenizer):
    data = Dataset.from_dict({"prompt": ["q", ""], "completion": ["a", "b"]})
    with pytest.raises(ValueError, match=r"row 1: 'prompt' tokenizes to no tokens"):
        tokenize_sft_data(data, tokenizer)
    with pytest.raises(ValueError, match="lacks column"):
        tokenize_preference_data(data, tokenizer)
    with pytest.raises(ValueError, match="tokenizer must be"):
        tokenize_sft_data(data, "gpt2")
    with pytest.raises(ValueError, match="add_eos"):
        tokenize_sft_data(data, tokenizer, add_eos=1)
    with pytest.raises(ValueError, match="batch_size"):
        tokenize_sft_data(data, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="tokenized must be"):
        pack_dataset([], token_budget=8)
    with pytest.raises(ValueError, match="expected prompt_ids"):
        pack_dataset(data, token_budget=8)


def test_chat_sft_tokens_end_with_single_eos(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    out = tokenize_sft_data(load_sft_data([{"messages": messages}], tokenizer=tokenizer), tokenizer)
    row = out[0]
    assert row["completion_ids"] == _bytes("yo") + [EOS_ID]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    # The template's <bos>/<eos> text is parsed into the special tokens.
    assert row["prompt_ids"] + row["completion_ids"] == tokenizer(full, split_special_tokens=False)["input_ids"]


def test_packer_accepts_preference_output(tokenizer):
    data = make_preference_task(40, 0, seed=1)["train"]
    tokenized = tokenize_preference_data(data, tokenizer)
    rows = pack_dataset(tokenized, token_budget=96, vocab_size=len(tokenizer))
    assert rows.stats.kept == 40 and rows.stats.dropped == 0
    for row in rows:
        for local, index in enumerate(row.example_index.tolist()):
            picked = row.label_example == local
            chosen = row.targets[picked & (row.label_segment == CHOSEN)].tolist()
            rejected = row.targets[picked & (row.label_segment == REJECTED)].tolist()
            assert chosen == tokenized[index]["chosen_ids"] and chosen[-1] == EOS_ID
            assert rejected == tokenized[index]["rejected_ids"]


def test_packer_accepts_sft_output(tokenizer):
    tokenized = tokenize_sft_data(make_sft_task(30, 0, seed=2)["train"], tokenizer)
    rows = pack_dataset(tokenized, token_budget=64, max_completion_length=4, on_overflow="truncate")
    assert rows.stats.kept == 30 and all(row.mode == "completion" for row in rows)
    assert sum(int(row.targets.numel()) for row in rows) == 30 * 4 - sum(
        max(0, 4 - len(ids)) for ids in tokenized["completion_ids"][:]
    )


def test_file_backed_tokenization_is_cached(tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_preference_task(20, 0, seed=5)["train"]))
    first = tokenize_preference_data(load_preference_data(path), tokenizer)
    second = tokenize_preference_data(load_preference_data(path), tokenizer)
    assert first.cache_files and first.cache_files == second.cache_files
    assert first.to_list() == second.to_list()
