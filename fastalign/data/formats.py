"""Format adapters: one source row in, zero or more ``prompt``/answer string rows out.

Preference formats (output ``prompt``, ``chosen``, ``rejected``):
    ``explicit``        ``prompt``, ``chosen``, ``rejected`` strings.
    ``conversational``  ``chosen``/``rejected`` lists of ``{"role", "content"}`` messages, with
                        an optional ``prompt`` message list (without it the prompt is every
                        message before the last one, which must be equal in both); rendered
                        with the tokenizer's chat template.
    ``hh``              Anthropic-HH: ``chosen``/``rejected`` full transcripts; the prompt is
                        everything up to and including the last ``"\\n\\nAssistant:"``.
    ``ranked``          OpenAssistant-style: ``prompt`` plus replies (``responses`` /
                        ``replies`` / ``completions``), ranked by a parallel ``ranks`` (lower
                        is better) or ``scores`` (higher is better) list, or given as dicts
                        ``{"text", "rank"|"score"}``; every (better, worse) pair becomes a row.
SFT formats (output ``prompt``, ``completion``):
    ``prompt_completion``  ``prompt``, ``completion`` strings.
    ``conversational``     ``prompt``, ``completion`` message lists (chat template).
    ``messages``           multi-turn ``messages``: one row per assistant turn, prompt = the
                           rendered history before it, completion = that turn.

Chat rows (``conversational``, ``messages``): the prompt is the chat template's rendering of
the prompt messages with ``add_generation_prompt=True``; each answer is the rendering of
``prompt + answer`` minus that prefix (the continuation), so it carries the template's own
end-of-turn text (``<|im_end|>\n``, ``<|eot_id|>``; ``<eos>`` with the byte tokenizer) and
tokenization adds EOS only where the template wrote no end of turn (``encoding.py``). A template
whose rendering of ``prompt + answer`` does not start with its rendering of the prompt cannot be
split that way: such a row is malformed (the error shows where the two renderings part) rather
than split at a guess. Malformed rows raise ``MalformedRow`` naming the field; the loader adds
the row index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

PREFERENCE_FORMATS = ("explicit", "conversational", "hh", "ranked")
SFT_FORMATS = ("prompt_completion", "conversational", "messages")
CHAT_FORMATS = ("conversational", "messages")
HH_MARKER = "\n\nAssistant:"
REPLY_COLUMNS = ("responses", "replies", "completions")

Row = Mapping[str, Any]
Rows = list[dict[str, str]]


class MalformedRow(ValueError):
    """A row that cannot be converted; ``field`` names the offending column (or item)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def _text(row: Row, field: str, *, answer: bool = False) -> str:
    value = row.get(field)
    if value is None:
        raise MalformedRow(field, "missing")
    if not isinstance(value, str):
        raise MalformedRow(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise MalformedRow(field, "empty answer" if answer else "empty")
    return value


def _messages(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        raise MalformedRow(field, "missing")
    if not isinstance(value, list) or not value:
        raise MalformedRow(field, f"expected a non-empty list of messages, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise MalformedRow(f"{field}[{i}]", f"expected a message dict, got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise MalformedRow(f"{field}[{i}].{key}", "missing or not a string")
        # Arrow fills keys a row lacks with None (a file mixing message shapes); drop them so a
        # template testing `'name' in message` sees what the user wrote.
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def render_answer(tokenizer: Any, prompt: list[dict], answer: list[dict], field: str) -> tuple[str, str]:
    """``(head, continuation)``: ``prompt`` rendered with the generation prompt, and the rest of
    the rendering of ``prompt + answer``; ``MalformedRow`` when the first is not a prefix of it."""
    if answer[0]["role"] != "assistant":
        raise MalformedRow(f"{field}[0].role", f"an answer starts with an assistant message, got {answer[0]['role']!r}")
    if not any(m["content"].strip() for m in answer):
        raise MalformedRow(field, "empty answer")
    try:
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    except Exception as err:  # jinja raises its own types (e.g. templates enforcing alternation)
        raise MalformedRow(field, f"chat template failed: {type(err).__name__}: {err}") from err
    if not full.startswith(head):
        at = len(os.path.commonprefix([head, full]))
        raise MalformedRow(
            field,
            "the chat template does not render the prompt as a prefix of prompt + answer: after "
            f"{head[max(0, at - 30):at]!r} the prompt goes on {head[at:at + 30]!r} but prompt + answer "
            f"goes on {full[at:at + 30]!r}",
        )
    return head, full[len(head):]


# ----------------------------------------------------------------------------- preference


def explicit_row(row: Row, tokenizer: Any = None) -> Rows:
    return [{"prompt": _text(row, "prompt"), "chosen": _text(row, "chosen", answer=True),
             "rejected": _text(row, "rejected", answer=True)}]


def _split_hh(row: Row, field: str) -> tuple[str, str]:
    text = _text(row, field, answer=True)
    cut = text.rfind(HH_MARKER)
    if cut < 0:
        raise MalformedRow(field, f"no {HH_MARKER!r} turn in the transcript")
    cut += len(HH_MARKER)
    if not text[cut:].strip():
        raise MalformedRow(field, "empty answer")
    return text[:cut], text[cut:]


def hh_row(row: Row, tokenizer: Any = None) -> Rows:
    prompt, chosen = _split_hh(row, "chosen")
    other, rejected = _split_hh(row, "rejected")
    if other != prompt:
        raise MalformedRow("rejected", "its conversation before the last assistant turn differs from 'chosen'")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def conversational_preference_row(row: Row, tokenizer: Any) -> Rows:
    chosen = _messages(row.get("chosen"), "chosen")
    rejected = _messages(row.get("rejected"), "rejected")
    if row.get("prompt") is not None:
        prompt = _messages(row["prompt"], "prompt")
    else:  # implicit prompt: both conversations share everything but the final answer
        if chosen[:-1] != rejected[:-1]:
            raise MalformedRow("rejected", "without a 'prompt' column, all but the last message must equal 'chosen'")
        if len(chosen) < 2:
            raise MalformedRow("chosen", "without a 'prompt' column a conversation needs a prompt message")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    head, chosen_text = render_answer(tokenizer, prompt, chosen, "chosen")
    _, rejected_text = render_answer(tokenizer, prompt, rejected, "rejected")
    return [{"prompt": head, "chosen": chosen_text, "rejected": rejected_text}]


def _ranked_replies(row: Row) -> tuple[str, list[str], list[float]]:
    """Reply texts and sort keys (lower = better) of one ranked row."""
    column = next((c for c in REPLY_COLUMNS if c in row), REPLY_COLUMNS[0])
    replies = row.get(column)
    if not isinstance(replies, list):
        raise MalformedRow(column, f"expected a list of replies, got {type(replies).__name__}")
    parallel = {name: row.get(name) for name in ("ranks", "scores") if row.get(name) is not None}
    texts, keys = [], []
    for i, reply in enumerate(replies):
        item = f"{column}[{i}]"
        if isinstance(reply, Mapping):
            text = next((reply[k] for k in ("text", "content", "response") if reply.get(k) is not None), None)
            rank, score = reply.get("rank"), reply.get("score")
        else:
            text, rank, score = reply, None, None
        if "ranks" in parallel or "scores" in parallel:
            name = "ranks" if "ranks" in parallel else "scores"
            values = parallel[name]
            if not isinstance(values, list) or len(values) != len(replies):
                raise MalformedRow(name, f"expected one value per reply ({len(replies)})")
            rank, score = (values[i], None) if name == "ranks" else (None, values[i])
        if not isinstance(text, str) or not text.strip():
            raise MalformedRow(item, "empty answer" if isinstance(text, str) else "missing reply text")
        key = rank if rank is not None else (-score if isinstance(score, (int, float)) else None)
        if isinstance(key, bool) or not isinstance(key, (int, float)):
            raise MalformedRow(item, "no numeric rank or score")
        texts.append(text)
        keys.append(float(key))
    return column, texts, keys


def ranked_row(row: Row, tokenizer: Any = None, max_pairs_per_prompt: int | None = None) -> Rows:
    prompt = _text(row, "prompt")
    column, texts, keys = _ranked_replies(row)
    order = sorted(range(len(texts)), key=lambda i: keys[i])  # stable: ties keep input order
    # Best reply against every worse one first, then the second best, ...; ties give no pair.
    pairs = [(a, b) for n, a in enumerate(order) for b in order[n + 1:] if keys[a] < keys[b]]
    if not pairs:
        raise MalformedRow(column, "needs at least two replies with different ranks")
    if max_pairs_per_prompt is not None:
        pairs = pairs[:max_pairs_per_prompt]
    return [{"prompt": prompt, "chosen": texts[a], "rejected": texts[b]} for a, b in pairs]


# ----------------------------------------------------------------------------- SFT


def prompt_completion_row(row: Row, tokenizer: Any = None) -> Rows:
    return [{"prompt": _text(row, "prompt"), "completion": _text(row, "completion", answer=True)}]


def conversational_sft_row(row: Row, tokenizer: Any) -> Rows:
    prompt = _messages(row.get("prompt"), "prompt")
    completion = _messages(row.get("completion"), "completion")
    head, text = render_answer(tokenizer, prompt, completion, "completion")
    return [{"prompt": head, "completion": text}]


def messages_row(row: Row, tokenizer: Any) -> Rows:
    messages = _messages(row.get("messages"), "messages")
    out = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if not message["content"].strip():
            raise MalformedRow(f"messages[{k}].content", "empty answer")
        head, text = render_answer(tokenizer, messages[:k], [message], f"messages[{k}]")
        out.append({"prompt": head, "completion": text})
    if not out:
        raise MalformedRow("messages", "no assistant turn")
    return out


PREFERENCE_ADAPTERS: dict[str, Callable[..., Rows]] = {
    "explicit": explicit_row,
    "conversational": conversational_preference_row,
    "hh": hh_row,
    "ranked": ranked_row,
}
SFT_ADAPTERS: dict[str, Callable[..., Rows]] = {
    "prompt_completion": prompt_completion_row,
    "conversational": conversational_sft_row,
    "messages": messages_row,
}
