"""Tokenize loaded string columns into token-id lists and hand them to the packer.

The rules (special tokens parsed, BOS at most once, EOS only where an answer does not already
end its turn, the prompt/answer ``boundary``) are those of ``fastalign.data.encoding`` and are
the same for preference and SFT data, explicit and chat-rendered rows. The trainers and
``fastalign eval`` tokenize text through these functions with their defaults, so the default
``boundary="joint"`` (TRL 1.16's rule) is also what the TRL drop-in, which keeps TRL's own
tokenization, does.

Empty token lists raise ``ValueError`` naming the row: the packer needs every part non-empty.
Truncation to length limits is the packer's job (``max_prompt_length`` etc. in
``pack_dataset``), so tokenized datasets stay reusable across budgets.
"""

from __future__ import annotations

from typing import Any

import datasets
from datasets import Dataset, Features, Value

from fastalign.choices import PROMPT_BOUNDARIES
from fastalign.data.encoding import RowEncoder, tokenizer_adds_bos
from fastalign.packing import PackedRows, pack_completion_examples, pack_preference_examples

__all__ = ["pack_dataset", "tokenize_preference_data", "tokenize_sft_data", "tokenizer_adds_bos"]

PREFERENCE_TEXT = ("prompt", "chosen", "rejected")
SFT_TEXT = ("prompt", "completion")


def _check(
    dataset: Any, tokenizer: Any, columns: tuple[str, ...], add_eos: bool, add_bos: bool | None, boundary: str
) -> None:
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset lacks column(s) {missing} (has {dataset.column_names}); load it with fastalign.data")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise ValueError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
    if not isinstance(add_eos, bool):
        raise ValueError(f"add_eos must be a bool, got {add_eos!r}")
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id; set one or pass add_eos=False")
    if add_bos is not None and not isinstance(add_bos, bool):
        raise ValueError(f"add_bos must be None or a bool, got {add_bos!r}")
    if add_bos and tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    if boundary not in PROMPT_BOUNDARIES:
        raise ValueError(f"boundary must be one of {PROMPT_BOUNDARIES}, got {boundary!r}")


class _Tokenize:
    """Batched ``map`` function: one prompt column plus answer columns to ``*_ids``."""

    def __init__(self, encoder: RowEncoder, answers: tuple[str, ...]) -> None:
        self.encoder, self.answers = encoder, answers

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list[list[int]]]:
        prompts, answers = self.encoder.rows(batch["prompt"], {name: batch[name] for name in self.answers})
        out = {"prompt_ids": prompts, **{f"{name}_ids": ids for name, ids in answers.items()}}
        for name, lists in out.items():
            for index, tokens in zip(indices, lists):
                if not tokens:
                    hint = ""
                    if name == "prompt_ids" and self.encoder.boundary == "joint":
                        hint = " (boundary='joint': its tokens merged into the answer's; try boundary='separate')"
                    raise ValueError(f"row {index}: {name[:-4]!r} tokenizes to no tokens{hint}")
        return out


def _tokenize(
    dataset: Dataset, tokenizer: Any, answers: tuple[str, ...], *, add_eos: bool, add_bos: bool | None,
    boundary: str, batch_size: int, num_proc: int | None,
) -> Dataset:
    _check(dataset, tokenizer, ("prompt", *answers), add_eos, add_bos, boundary)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be None or an int >= 1, got {num_proc!r}")
    bos = tokenizer_adds_bos(tokenizer) if add_bos is None else add_bos
    encoder = RowEncoder(tokenizer, boundary=boundary, add_bos=bos, add_eos=add_eos)
    ids = datasets.Sequence(Value("int32"))  # vocabularies stay far below 2**31
    features = Features({**dataset.features, "prompt_ids": ids, **{f"{name}_ids": ids for name in answers}})
    return dataset.map(
        _Tokenize(encoder, answers),
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        num_proc=num_proc,
        features=features,
        desc="fastalign: tokenize",
    )


def tokenize_preference_data(
    dataset: Dataset,
    tokenizer: Any,
    *,
    add_eos: bool = True,
    add_bos: bool | None = None,
    boundary: str = "joint",
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> Dataset:
    """Add ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (int32 lists) to a preference dataset.

    The rules are ``fastalign.data.encoding``'s: special tokens written in the text are parsed,
    BOS comes at most once, each answer ends its turn exactly once.

    Args:
        dataset: string columns ``prompt``, ``chosen``, ``rejected`` (``load_preference_data``);
            other columns are kept.
        tokenizer: a transformers tokenizer.
        add_eos: end each answer with ``eos_token_id`` unless it already ends with EOS or with
            the chat template's end-of-turn token (chat-rendered answers do).
        add_bos: prepend BOS to prompts (once): ``None`` = when the tokenizer adds one itself.
        boundary: where the prompt ends: ``"joint"`` (TRL 1.16: tokenize prompt + answer
            jointly, the prompt is the common token prefix of both answers' tokenizations) or
            ``"separate"`` (prompt and answers tokenized on their own).
        batch_size, num_proc: passed to ``Dataset.map`` (cached when the dataset is file-backed).
    """
    return _tokenize(dataset, tokenizer, ("chosen", "rejected"), add_eos=add_eos, add_bos=add_bos,
                     boundary=boundary, batch_size=batch_size, num_proc=num_proc)


def tokenize_sft_data(
    dataset: Dataset,
    tokenizer: Any,
    *,
    add_eos: bool = True,
    add_bos: bool | None = None,
    boundary: str = "joint",
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> Dataset:
    """Add ``prompt_ids``, ``completion_ids`` to an SFT dataset (``prompt``, ``completion``).

    Same rules and arguments as ``tokenize_preference_data``; the loss covers
    ``completion_ids`` only (for ``messages`` rows: one assistant turn each)."""
    return _tokenize(dataset, tokenizer, ("completion",), add_eos=add_eos, add_bos=add_bos,
                     boundary=boundary, batch_size=batch_size, num_proc=num_proc)


def pack_dataset(
    tokenized: Dataset,
    *,
    token_budget: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    on_overflow: str = "error",
    share_prompt: bool = True,
    vocab_size: int | None = None,
) -> PackedRows:
    """Pack a whole tokenized dataset: ``pack_preference_examples`` when it has
    ``chosen_ids``/``rejected_ids``, else ``pack_completion_examples`` over ``completion_ids``.

    ``share_prompt`` applies to preference data only. The rows' ``example_index`` values are
    dataset row indices. For data that does not fit in memory, pack ``tokenized.select(...)``
    chunks instead (a trainer packs one step's examples at a time).
    """
    if not isinstance(tokenized, Dataset):
        raise ValueError(f"tokenized must be a datasets.Dataset, got {type(tokenized).__name__}")
    columns = set(tokenized.column_names)
    limits = dict(token_budget=token_budget, max_prompt_length=max_prompt_length,
                  max_completion_length=max_completion_length, on_overflow=on_overflow, vocab_size=vocab_size)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:
        data = tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
        return pack_preference_examples(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"],
                                        share_prompt=share_prompt, **limits)
    if {"prompt_ids", "completion_ids"} <= columns:
        data = tokenized.select_columns(["prompt_ids", "completion_ids"]).to_dict()
        return pack_completion_examples(data["prompt_ids"], data["completion_ids"], **limits)
    raise ValueError(
        f"tokenized has columns {sorted(columns)}: expected prompt_ids with chosen_ids/rejected_ids "
        "or completion_ids (use tokenize_preference_data / tokenize_sft_data)"
    )
