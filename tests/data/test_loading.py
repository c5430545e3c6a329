"""Sources: local JSONL / JSON / Parquet files, saved datasets, DatasetDict splits, the Hub."""

from __future__ import annotations

import json

import datasets
import pytest
from datasets import Dataset, DatasetDict

from fastalign.data import byte_tokenizer, load_preference_data, load_sft_data, loading_stats

ROWS = [
    {"prompt": "a", "chosen": "b", "rejected": "c"},
    {"prompt": "d", "chosen": "", "rejected": "f"},  # malformed: empty answer
    {"prompt": "g", "chosen": "h", "rejected": "i"},
]
GOOD = [ROWS[0], ROWS[2]]


def test_jsonl_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    with pytest.raises(ValueError, match=r"row 1: field 'chosen': empty answer"):
        load_preference_data(path)
    out = load_preference_data(str(path), on_error="skip")
    assert out.to_list() == GOOD
    assert loading_stats(out).skipped == 1
    assert out.cache_files, "a file source stays file-backed, so later maps are cached"


def test_json_array_with_messages(tmp_path):
    path = tmp_path / "chat.json"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path.write_text(json.dumps([{"messages": messages}]))
    out = load_sft_data(path, tokenizer=byte_tokenizer())
    assert out.to_list() == [{"prompt": "<bos>user: hi\nassistant: ", "completion": "yo<eos>"}]


def test_parquet_file(tmp_path):
    path = tmp_path / "pairs.parquet"
    Dataset.from_list(GOOD).to_parquet(str(path))
    assert load_preference_data(path).to_list() == GOOD


def test_saved_dataset_dict_and_split(tmp_path):
    splits = DatasetDict({"train": Dataset.from_list(GOOD), "test": Dataset.from_list(GOOD[:1])})
    assert load_preference_data(splits, split="test").to_list() == GOOD[:1]
    with pytest.raises(ValueError, match=r"split='validation' is not in the DatasetDict"):
        load_preference_data(splits, split="validation")
    splits.save_to_disk(str(tmp_path / "saved"))
    assert load_preference_data(tmp_path / "saved", split="train").to_list() == GOOD


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_preference_data(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no such file or folder"):
        load_preference_data("./not/here")
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_preference_data(tmp_path / "pairs.csv")
    with pytest.raises(ValueError, match="source must be"):
        load_preference_data(42)
    with pytest.raises(ValueError, match="split must be"):
        load_preference_data(GOOD, split="")


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    calls = []

    def offline(name, **kwargs):
        calls.append((name, kwargs))
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"source='someone/pairs' is not a local path.*Offline\?"):
        load_preference_data("someone/pairs", split="test")
    assert calls == [("someone/pairs", {"split": "test"})]


def test_hub_name_loads_through_datasets(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: Dataset.from_list(GOOD))
    assert load_preference_data("someone/pairs").to_list() == GOOD
