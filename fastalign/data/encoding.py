"""How the texts of one row become token ids: the rules every row kind shares.

A loaded row is text: ``prompt`` plus answers (``chosen``/``rejected`` or ``completion``). For
chat rows the loader has already rendered them with the chat template (``formats.py``): the
prompt is the rendering of the prompt messages with the generation prompt, each answer the rest
of the rendering of prompt + answer. Then:

- **Special tokens in the text are parsed** (``split_special_tokens=False``): control tokens a
  chat template (or a user pre-rendering chat text) wrote become their ids, as in
  ``apply_chat_template(tokenize=True)`` and TRL. The tokenizer adds none of its own
  (``add_special_tokens=False``).
- **BOS at most once**: prepended when the tokenizer adds one itself (Llama style) and the text
  does not already start with it (chat templates write it).
- **End of an answer**: EOS is appended unless the answer already ends, trailing whitespace
  aside, with EOS or with a control token the tokenizer's chat template closes an assistant turn
  with (``<|im_end|>``, ``<|eot_id|>``, ...). A chat-rendered answer thus keeps exactly the
  template's tokens, and gets EOS only from a template that never ends a turn.
- **Prompt/answer boundary** (``boundary``):
  ``"joint"`` (default; TRL 1.16's rule): tokenize the prompt and each prompt + answer; the
  prompt is the common token prefix of the tokenized prompt and every tokenized prompt + answer
  of the row, the answers are the rest. Where BPE merges across the boundary (a prompt ending
  ``?`` and an answer starting ``"`` give one ``?"`` token), the merged token starts the
  answers and the prompt loses its last character.
  ``"separate"``: prompt and answers tokenized on their own: the prompt's tokens are exactly
  those a model is given at generation time.
  Chat templates end the prompt on a control token or a newline, where both rules agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastalign.choices import PROMPT_BOUNDARIES

# A one-turn conversation rendered to find the control tokens after an assistant message.
_PROBE = ({"role": "user", "content": "Which way is north?"}, {"role": "assistant", "content": "Up the hill."})


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of ``texts`` with the special tokens written in them parsed and none added."""
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=False)["input_ids"]


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` puts BOS first on its own (Llama/Gemma style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return special[:1] == [bos] and plain[:1] != [bos]


def special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (named ones and added tokens marked special)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return frozenset(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """EOS plus the special tokens the chat template writes after an assistant message."""
    ids = {tokenizer.eos_token_id} - {None}
    if not getattr(tokenizer, "chat_template", None):
        return frozenset(ids)
    try:
        rendered = tokenizer.apply_chat_template(list(_PROBE), tokenize=False)
    except Exception:  # noqa: BLE001 - jinja raises its own types; a template refusing the probe ends turns with EOS
        return frozenset(ids)
    answer = _PROBE[1]["content"]
    cut = rendered.rfind(answer)
    if cut < 0:  # the template rewrote the content: only EOS is known to end a turn
        return frozenset(ids)
    tail = encode_texts(tokenizer, [rendered[cut + len(answer):]])[0]
    return frozenset(ids | (set(tail) & special_ids(tokenizer)))


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """Number of leading tokens ``ids`` and ``other`` share."""
    length = 0
    for token, other_token in zip(ids, other):
        if token != other_token:
            break
        length += 1
    return length


class RowEncoder:
    """Applies the module's rules to batches of rows (see the module docstring).

    Args:
        tokenizer: a transformers tokenizer.
        boundary: ``"joint"`` or ``"separate"``.
        add_bos: prepend BOS to prompts that do not start with it.
        add_eos: end every answer that does not end its turn with EOS.
    """

    def __init__(self, tokenizer: Any, *, boundary: str, add_bos: bool, add_eos: bool) -> None:
        if boundary not in PROMPT_BOUNDARIES:
            raise ValueError(f"boundary must be one of {PROMPT_BOUNDARIES}, got {boundary!r}")
        self.tokenizer, self.boundary = tokenizer, boundary
        self.bos = tokenizer.bos_token_id if add_bos else None
        self.eos = tokenizer.eos_token_id if add_eos else None
        self.end_ids = end_of_turn_ids(tokenizer) if add_eos else frozenset()
        self.specials = special_ids(tokenizer)
        self._blank: dict[int, bool] = {}

    def prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompts on their own (generation, ``boundary="separate"``)."""
        return [self._with_bos(ids) for ids in encode_texts(self.tokenizer, texts)]

    def rows(
        self, prompts: Sequence[str], answers: dict[str, Sequence[str]]
    ) -> tuple[list[list[int]], dict[str, list[list[int]]]]:
        """``(prompt_ids, {name: answer_ids})`` of rows ``prompts[i]`` + ``answers[name][i]``."""
        if self.boundary == "separate":
            heads = self.prompts(prompts)
            tails = {name: encode_texts(self.tokenizer, texts) for name, texts in answers.items()}
        else:
            heads, tails = self._joint(prompts, answers)
        return heads, {name: [self.finish(ids) for ids in lists] for name, lists in tails.items()}

    def finish(self, ids: list[int]) -> list[int]:
        """``ids`` with EOS appended unless they already end the turn (or EOS is not wanted)."""
        if self.eos is None or self.ends_turn(ids):
            return ids
        return [*ids, self.eos]

    def ends_turn(self, ids: Sequence[int]) -> bool:
        """Whether ``ids`` end with an end-of-turn token, trailing whitespace tokens aside."""
        end = len(ids)
        while end and ids[end - 1] not in self.end_ids and self._is_blank(ids[end - 1]):
            end -= 1
        return end > 0 and ids[end - 1] in self.end_ids

    def _is_blank(self, token: int) -> bool:
        if token not in self._blank:
            text = self.tokenizer.decode([token])
            self._blank[token] = token not in self.specials and not text.strip()
        return self._blank[token]

    def _with_bos(self, ids: list[int]) -> list[int]:
        return ids if self.bos is None or ids[:1] == [self.bos] else [self.bos, *ids]

    def _joint(self, prompts: Sequence[str], answers: dict[str, Sequence[str]]) -> tuple[list, dict[str, list]]:
        heads = self.prompts(prompts)
        fulls = {name: self.prompts([p + a for p, a in zip(prompts, texts)]) for name, texts in answers.items()}
        tails: dict[str, list[list[int]]] = {name: [] for name in answers}
        for row, head in enumerate(heads):
            # One cut for all answers of the row: the packer shares one prompt between them.
            cut = min(common_prefix_length(head, full[row]) for full in fulls.values())
            heads[row] = head[:cut]
            for name, full in fulls.items():
                tails[name].append(full[row][cut:])
        return heads, tails
