"""Chat rows are tokenized exactly as the chat template renders them (issue 19), with realistic
BPE tokenizers (``chat_tokenizers.py``): the prompt is ``apply_chat_template(prompt,
add_generation_prompt=True)``, each answer the continuation of ``apply_chat_template(prompt +
answer)``, EOS only where the template ends no turn, no answer with two end tokens, BOS at most
once. Each check has a mutation twin: the broken rule must fail the same check."""

from __future__ import annotations

import pytest
from datasets import Dataset

from fastalign.data import load_preference_data, load_sft_data, tokenize_preference_data, tokenize_sft_data
from fastalign.data.encoding import RowEncoder
from tests.data.chat_tokenizers import FLAVORS, TURN_END, chat_tokenizer


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


PAIRS = [
    {"prompt": [_msg("user", "What did the sign say?")],
     "chosen": [_msg("assistant", "Closed on Sundays.")], "rejected": [_msg("assistant", "It said nothing at all.")]},
    {"prompt": [_msg("system", "Answer briefly."), _msg("user", "How many legs does a spider have?")],
     "chosen": [_msg("assistant", "Eight.")], "rejected": [_msg("assistant", "A spider has six legs.")]},
    {"prompt": [_msg("user", "Is it raining?"), _msg("assistant", "No, the sun is out."),
                _msg("user", "Can you help me?")],
     "chosen": [_msg("assistant", "Yes, of course!")], "rejected": [_msg("assistant", " No.\n")]},
]
CONVERSATION = [_msg("user", "Where is the station?"), _msg("assistant", "Down the road, past the bakery."),
                _msg("user", "Thank you for the help!"), _msg("assistant", "You are welcome, have a nice day.")]


@pytest.fixture(scope="module", params=FLAVORS)
def flavor(request) -> tuple[str, object]:
    return request.param, chat_tokenizer(request.param)


def _template_split(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], list[int]]:
    """The token lists of ``apply_chat_template``: prompt with the generation prompt, and the
    continuation of prompt + answer after it."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + answer)["input_ids"]
    assert full[:len(head)] == head, "the template's tokens of the prompt are a prefix"
    return head, full[len(head):]


def _problems(name: str, tokenizer, prompt_ids: list[int], answer_ids: list[int],
              head: list[int], continuation: list[int]) -> list[str]:
    """What is wrong with fastalign's ``(prompt_ids, answer_ids)`` against the template's split."""
    expected = continuation if TURN_END[name] else [*continuation, tokenizer.eos_token_id]
    ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(TURN_END[name] or tokenizer.eos_token)}
    problems = []
    if prompt_ids != head:
        problems.append("prompt differs from apply_chat_template")
    if answer_ids != expected:
        problems.append("answer differs from the template's continuation")
    if sum(token in ends for token in answer_ids) != 1:
        problems.append("answer does not hold exactly one end token")
    if tokenizer.bos_token_id is not None and (prompt_ids + answer_ids).count(tokenizer.bos_token_id) > 1:
        problems.append("BOS more than once")
    return problems


def _preference_problems(name: str, tokenizer, boundary: str = "joint") -> list[str]:
    tokenized = tokenize_preference_data(load_preference_data(PAIRS, tokenizer=tokenizer), tokenizer,
                                         boundary=boundary)
    problems = []
    for pair, row in zip(PAIRS, tokenized):
        for answer in ("chosen", "rejected"):
            head, continuation = _template_split(tokenizer, pair["prompt"], pair[answer])
            problems += _problems(name, tokenizer, row["prompt_ids"], row[f"{answer}_ids"], head, continuation)
    return problems


def _sft_problems(name: str, tokenizer) -> list[str]:
    rows = tokenize_sft_data(load_sft_data([{"messages": CONVERSATION}], tokenizer=tokenizer), tokenizer)
    assert len(rows) == 2, "one example per assistant turn"
    problems = []
    for turn, row in zip((1, 3), rows):  # assistant-only loss: the completion is that turn alone
        head, continuation = _template_split(tokenizer, CONVERSATION[:turn], CONVERSATION[turn:turn + 1])
        problems += _problems(name, tokenizer, row["prompt_ids"], row["completion_ids"], head, continuation)
    conversational = [{"prompt": CONVERSATION[:3], "completion": CONVERSATION[3:]}]
    row = tokenize_sft_data(load_sft_data(conversational, tokenizer=tokenizer), tokenizer)[0]
    head, continuation = _template_split(tokenizer, CONVERSATION[:3], CONVERSATION[3:])
    return problems + _problems(name, tokenizer, row["prompt_ids"], row["completion_ids"], head, continuation)


@pytest.mark.parametrize("boundary", ["joint", "separate"])
def test_preference_rows_follow_the_template(flavor, boundary):
    assert _preference_problems(*flavor, boundary=boundary) == []


def test_sft_rows_follow_the_template(flavor):
    assert _sft_problems(*flavor) == []


def _always_eos(self, ids):
    return False


def _never_eos(self, ids):
    return True


def _eos_unless_last(self, ids):  # the rule before issue 19: blind to the template's end token
    return ids[-1:] == [self.eos]


def test_mutation_twins_fail(flavor, monkeypatch):
    name, tokenizer = flavor
    # A template that ends turns must not get EOS on top; one that never does must get it.
    monkeypatch.setattr(RowEncoder, "ends_turn", _never_eos if TURN_END[name] is None else _always_eos)
    broken = _preference_problems(name, tokenizer) + _sft_problems(name, tokenizer)
    assert "answer differs from the template's continuation" in broken
    if TURN_END[name] is not None:
        assert "answer does not hold exactly one end token" in broken
    if name in ("chatml", "llama3"):  # EOS is not the last token these templates write
        monkeypatch.setattr(RowEncoder, "ends_turn", _eos_unless_last)
        assert "answer does not hold exactly one end token" in _preference_problems(name, tokenizer)
    if tokenizer.bos_token_id is not None:  # the template writes BOS and the tokenizer adds one
        monkeypatch.undo()
        monkeypatch.setattr(RowEncoder, "_with_bos", lambda self, ids: [self.bos, *ids])
        assert "BOS more than once" in _preference_problems(name, tokenizer)


def test_template_not_prefix_names_the_row():
    # Qwen3-style: the generation prompt opens an empty thought block that a rendered answer lacks.
    tokenizer = chat_tokenizer("chatml")
    generation_prompt = "{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    assert generation_prompt in tokenizer.chat_template
    tokenizer.chat_template = tokenizer.chat_template.replace(
        generation_prompt, "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}")
    with pytest.raises(ValueError, match=r"row 0: field 'chosen': the chat template does not render the prompt as a "
                                         r"prefix.*goes on '<think>"):
        load_preference_data(PAIRS, tokenizer=tokenizer)


def test_explicit_rows_boundary_rules():
    # A prompt ending in `?` and answers starting with `"`: the BPE merges `?"` when tokenized jointly.
    tokenizer = chat_tokenizer("llama3")
    data = Dataset.from_list([{"prompt": "What did the sign say?", "chosen": '"Closed on Sundays."',
                               "rejected": '"Open all night."'}])
    merged, quote, question = (tokenizer.convert_tokens_to_ids(t) for t in ('?"', '"', "?"))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    joint = tokenize_preference_data(data, tokenizer)[0]  # the default
    alone = tokenizer("What did the sign say?")["input_ids"]
    assert alone[0] == bos and alone[-1] == question
    # joint (TRL 1.16): the prompt is the common prefix; the merged token starts both answers.
    assert joint["prompt_ids"] == alone[:-1]
    assert joint["chosen_ids"][0] == joint["rejected_ids"][0] == merged
    assert joint["prompt_ids"] + joint["chosen_ids"] == tokenizer('What did the sign say?"Closed on Sundays."')[
        "input_ids"] + [eos]
    separate = tokenize_preference_data(data, tokenizer, boundary="separate")[0]
    assert separate["prompt_ids"] == alone
    assert separate["chosen_ids"][0] == quote and separate["chosen_ids"][-1] == eos
    with pytest.raises(ValueError, match="boundary must be one of"):
        tokenize_preference_data(data, tokenizer, boundary="trl")


def test_explicit_prerendered_answers_get_no_second_end_token():
    # Explicit strings that already hold the template's end of turn (pre-rendered chat text).
    tokenizer = chat_tokenizer("chatml")
    data = Dataset.from_list([{"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                               "chosen": "Hello!<|im_end|>\n", "rejected": "Go away."}])
    row = tokenize_preference_data(data, tokenizer)[0]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert row["chosen_ids"].count(end) == 1 and row["chosen_ids"][-2:] == [end, tokenizer("\n")["input_ids"][0]]
    assert row["rejected_ids"][-1] == end and row["rejected_ids"].count(end) == 1


def test_joint_prompt_merged_away_names_the_row():
    # A one-token prompt that merges into the answer leaves no prompt token under "joint".
    tokenizer = chat_tokenizer("chatml")
    data = Dataset.from_list([{"prompt": "Why not?", "chosen": " Yes.", "rejected": " No."},
                              {"prompt": "?", "chosen": '"Closed."', "rejected": '"Open."'}])
    with pytest.raises(ValueError, match=r"row 1: 'prompt' tokenizes to no tokens \(boundary='joint'"):
        tokenize_preference_data(data, tokenizer)
    assert tokenize_preference_data(data, tokenizer, boundary="separate")[1]["prompt_ids"] == tokenizer("?")["input_ids"]
