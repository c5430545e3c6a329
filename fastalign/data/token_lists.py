"""A trainer's data argument as token-id lists for the packer.

Accepted: a ``datasets.Dataset`` with token-id columns (used as they are) or with text
columns (tokenized through ``fastalign.data`` with the trainer's tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence


def _columns(data, name: str) -> Sequence[str]:
    columns = getattr(data, "column_names", None)
    if columns is None or not hasattr(data, "map"):
        raise ValueError(f"{name} must be a datasets.Dataset, got {type(data).__name__}")
    if isinstance(columns, dict):
        raise ValueError(f"{name} is a DatasetDict; pass one split, e.g. data['train']")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    return columns


def preference_token_lists(data, tokenizer, name: str, boundary: str = "joint") -> tuple[list, list, list]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` lists of token-id lists (text tokenized with the
    prompt ``boundary`` of ``fastalign.data.encoding``)."""
    wanted = ("prompt_ids", "chosen_ids", "rejected_ids")
    if not set(wanted) <= set(_columns(data, name)):
        if tokenizer is None:
            raise ValueError(f"{name} holds text but no tokenizer was given")
        from fastalign.data import tokenize_preference_data

        data = tokenize_preference_data(data, tokenizer, boundary=boundary)
    return tuple(data[column] for column in wanted)


def sft_token_lists(data, tokenizer, name: str, boundary: str = "joint") -> tuple[list, list]:
    """``(prompt_ids, completion_ids)`` lists of token-id lists (text tokenized with the prompt
    ``boundary`` of ``fastalign.data.encoding``)."""
    wanted = ("prompt_ids", "completion_ids")
    if not set(wanted) <= set(_columns(data, name)):
        if tokenizer is None:
            raise ValueError(f"{name} holds text but no tokenizer was given")
        from fastalign.data import tokenize_sft_data

        data = tokenize_sft_data(data, tokenizer, boundary=boundary)
    return tuple(data[column] for column in wanted)
