"""fastalign tokenizes rows as TRL 1.16 does (issue 19), with the realistic BPE chat tokenizers of
``tests/data/chat_tokenizers.py``: conversational and explicit preference rows (TRL's
``DPOTrainer``, also through fastalign's drop-in, and fastalign's trainer / ``fastalign eval``
path), and SFT prompt/completion and multi-turn ``messages`` rows with assistant-only loss (TRL's
``SFTTrainer``). The one intended difference: a template that never ends a turn (``plain``) gets
EOS from fastalign, none from TRL. Mutation twins: the rules the issue reported must differ."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from fastalign.data import (  # noqa: E402
    load_preference_data,
    load_sft_data,
    tokenize_preference_data,
    tokenize_sft_data,
)
from fastalign.data.encoding import RowEncoder  # noqa: E402
from fastalign.data.token_lists import preference_token_lists  # noqa: E402
from fastalign.integrations.trl import DPOTrainer as FastDPOTrainer  # noqa: E402
from tests.data.chat_tokenizers import FLAVORS, TURN_END, chat_tokenizer  # noqa: E402
from tests.data.test_chat_tokenization import CONVERSATION, PAIRS  # noqa: E402

EXPLICIT = [  # the first pair merges `?"` across the boundary when tokenized jointly
    {"prompt": "What did the sign say?", "chosen": '"Closed on Sundays."', "rejected": '"Open all night."'},
    {"prompt": "How many legs does a spider have?", "chosen": " Eight.", "rejected": " Six, I think."},
]
COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# RowEncoder.ends_turn replaced by a wrong rule, keyed by "the template ends no turn": EOS
# appended unconditionally, or (where EOS is due) never.
_WRONG_EOS_RULE = {False: lambda self, ids: False, True: lambda self, ids: True}


def _model(tokenizer) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=256))


def _args(config_class, tmp_path, **extra):
    return config_class(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                        disable_tqdm=True, **extra)


def _dpo_lists(trainer_class, tokenizer, tmp_path) -> dict[str, list]:
    """TRL's token lists of PAIRS (conversational) and EXPLICIT, from the trainer's datasets."""
    trainer = trainer_class(model=_model(tokenizer), ref_model=_model(tokenizer), args=_args(trl.DPOConfig, tmp_path),
                            train_dataset=Dataset.from_list(PAIRS),
                            eval_dataset={"explicit": Dataset.from_list(EXPLICIT)}, processing_class=tokenizer)
    chat, explicit = trainer.train_dataset, trainer.eval_dataset["explicit"]
    return {"chat": [chat[c] for c in COLUMNS], "explicit": [explicit[c] for c in COLUMNS]}


def _ours(name: str, tokenizer, **options) -> dict[str, list]:
    chat = tokenize_preference_data(load_preference_data(PAIRS, tokenizer=tokenizer), tokenizer, **options)
    explicit = tokenize_preference_data(load_preference_data(EXPLICIT), tokenizer, **options)
    return {"chat": [chat[c] for c in COLUMNS], "explicit": [explicit[c] for c in COLUMNS]}


def _as_trl(name: str, tokenizer, ids: list[int]) -> list[int]:
    """A fastalign chat answer as TRL has it: the same, but without the EOS that fastalign (and
    not TRL) must add where the template never ends a turn."""
    if TURN_END[name] is not None:
        return ids
    if ids[-1:] != [tokenizer.eos_token_id]:
        return [*ids, -1]  # -1 is no token id: an answer missing its EOS never compares equal
    return ids[:-1]


def _trl_view(name: str, tokenizer, lists: dict[str, list]) -> dict[str, list]:
    prompts, *answers = lists["chat"]
    return {**lists, "chat": [prompts, *[[_as_trl(name, tokenizer, ids) for ids in column] for column in answers]]}


@pytest.fixture(scope="module", params=FLAVORS)
def flavor(request, tmp_path_factory):
    tokenizer = chat_tokenizer(request.param)
    return request.param, tokenizer, _dpo_lists(trl.DPOTrainer, tokenizer, tmp_path_factory.mktemp("dpo"))


def test_preference_rows_equal_trl(flavor, tmp_path):
    name, tokenizer, theirs = flavor
    ours = _ours(name, tokenizer)
    assert _trl_view(name, tokenizer, ours) == theirs
    # fastalign's own trainer and `fastalign eval` read text through preference_token_lists.
    data = load_preference_data(EXPLICIT)
    assert [list(column) for column in preference_token_lists(data, tokenizer, "data")] == ours["explicit"]
    # The drop-in keeps TRL's tokenization, so it is fastalign's default rule too.
    assert _dpo_lists(FastDPOTrainer, tokenizer, tmp_path) == theirs


def test_trl_comparison_twins_differ(flavor, monkeypatch):
    name, tokenizer, theirs = flavor
    # The other boundary rule differs on the pair whose prompt and answer merge (`?"`).
    separate = _ours(name, tokenizer, boundary="separate")
    assert separate["explicit"] != theirs["explicit"]
    assert [column[1] for column in separate["explicit"]] == [column[1] for column in theirs["explicit"]]
    # The bug, EOS on top of the template's own end of turn (and for the template that
    # ends no turn, a missing EOS), must differ.
    monkeypatch.setattr(RowEncoder, "ends_turn", _WRONG_EOS_RULE[TURN_END[name] is None])
    assert _trl_view(name, tokenizer, _ours(name, tokenizer))["chat"] != theirs["chat"]


def _sft_lists(tokenizer, tmp_path) -> tuple[dict, dict]:
    trainer = trl.SFTTrainer(model=_model(tokenizer), args=_args(trl.SFTConfig, tmp_path, assistant_only_loss=True),
                             train_dataset=Dataset.from_list([{"messages": CONVERSATION}]),
                             eval_dataset=Dataset.from_list([{"prompt": CONVERSATION[:3],
                                                              "completion": CONVERSATION[3:]}]),
                             processing_class=tokenizer)
    return trainer.train_dataset[0], trainer.eval_dataset[0]


@pytest.mark.parametrize("name", FLAVORS)
def test_sft_rows_equal_trl(name, tmp_path, monkeypatch):
    tokenizer = chat_tokenizer(name)
    messages, prompt_completion = _sft_lists(tokenizer, tmp_path)

    def check() -> list[str]:
        problems = []
        turns = tokenize_sft_data(load_sft_data([{"messages": CONVERSATION}], tokenizer=tokenizer), tokenizer)
        scored = [False] * len(messages["input_ids"])
        for row in turns:  # each assistant turn: its history as prompt, the turn as completion
            prompt, completion = row["prompt_ids"], _as_trl(name, tokenizer, row["completion_ids"])
            if messages["input_ids"][:len(prompt) + len(completion)] != prompt + completion:
                problems.append("turn not a prefix of TRL's conversation")
            scored[len(prompt):len(prompt) + len(completion)] = [True] * len(completion)
        if scored != [label != -100 for label in messages["labels"]]:
            problems.append("assistant-only tokens differ from TRL's labels")
        row = tokenize_sft_data(load_sft_data([{"prompt": CONVERSATION[:3], "completion": CONVERSATION[3:]}],
                                              tokenizer=tokenizer), tokenizer)[0]
        completion = _as_trl(name, tokenizer, row["completion_ids"])
        if row["prompt_ids"] + completion != prompt_completion["input_ids"]:
            problems.append("prompt + completion differ from TRL's")
        if prompt_completion["completion_mask"] != [0] * len(row["prompt_ids"]) + [1] * len(completion):
            problems.append("completion mask differs from TRL's")
        return problems

    assert check() == []
    # Twin: appending EOS unconditionally (never, for the template that ends no turn) must differ.
    monkeypatch.setattr(RowEncoder, "ends_turn", _WRONG_EOS_RULE[TURN_END[name] is None])
    assert "assistant-only tokens differ from TRL's labels" in check()
