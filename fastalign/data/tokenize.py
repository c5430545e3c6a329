"""Tokenize loaded string columns into token-id lists and hand them to the packer.

Rules (the same for preference and SFT data):
- prompt: tokenized without special tokens, then BOS prepended when the tokenizer itself adds
  one (``add_bos=None``) unless the text already starts with it (chat templates write BOS).
  Tokenizing with ``add_special_tokens=True`` instead would give a doubled BOS on templated
  text and, with tokenizers that append EOS, an EOS inside the prompt.
- answers: tokenized without special tokens; with ``add_eos`` exactly one EOS ends each one
  (appended unless the text already ends in it, as chat-templated answers may).
- empty token lists raise ``ValueError`` naming the row: the packer needs every part non-empty.
Truncation to length limits is the packer's job (``max_prompt_length`` etc. in
``pack_dataset``), so tokenized datasets stay reusable across budgets.
"""

from __future__ import annotations

from typing import Any

import datasets
from datasets import Dataset, Features, Value

from fastalign.packing import PackedRows, pack_completion_examples, pack_preference_examples

PREFERENCE_TEXT = ("prompt", "chosen", "rejected")
SFT_TEXT = ("prompt", "completion")


def _check(dataset: Any, tokenizer: Any, columns: tuple[str, ...], add_eos: bool, add_bos: bool | None) -> None:
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


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` puts BOS first on its own (Llama/Gemma style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return special[:1] == [bos] and plain[:1] != [bos]


class _Tokenize:
    """Batched ``map`` function: one prompt column plus answer columns to ``*_ids``."""

    def __init__(self, tokenizer: Any, answers: tuple[str, ...], add_eos: bool, add_bos: bool) -> None:
        self.tokenizer, self.answers, self.add_eos, self.add_bos = tokenizer, answers, add_eos, add_bos

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list[list[int]]]:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        prompts = self._ids(batch["prompt"])
        if self.add_bos:
            prompts = [ids if ids[:1] == [bos] else [bos, *ids] for ids in prompts]
        out = {"prompt_ids": prompts}
        for name in self.answers:
            ids = self._ids(batch[name])
            if self.add_eos:
                ids = [tokens if tokens[-1:] == [eos] else [*tokens, eos] for tokens in ids]
            out[f"{name}_ids"] = ids
        for name, lists in out.items():
            for index, tokens in zip(indices, lists):
                if not tokens:
                    raise ValueError(f"row {index}: {name[:-4]!r} tokenizes to no tokens")
        return out


def _tokenize(
    dataset: Dataset, tokenizer: Any, answers: tuple[str, ...], *, add_eos: bool, add_bos: bool | None,
    batch_size: int, num_proc: int | None,
) -> Dataset:
    _check(dataset, tokenizer, ("prompt", *answers), add_eos, add_bos)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be None or an int >= 1, got {num_proc!r}")
    bos = tokenizer_adds_bos(tokenizer) if add_bos is None else add_bos
    ids = datasets.Sequence(Value("int32"))  # vocabularies stay far below 2**31
    features = Features({**dataset.features, "prompt_ids": ids, **{f"{name}_ids": ids for name in answers}})
    return dataset.map(
        _Tokenize(tokenizer, answers, add_eos, bos),
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
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> Dataset:
    """Add ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (int32 lists) to a preference dataset.

    Args:
        dataset: string columns ``prompt``, ``chosen``, ``rejected`` (``load_preference_data``);
            other columns are kept.
        tokenizer: a transformers tokenizer.
        add_eos: end each answer with exactly one ``eos_token_id``.
        add_bos: prepend BOS to prompts: ``None`` = when the tokenizer adds one itself.
        batch_size, num_proc: passed to ``Dataset.map`` (cached when the dataset is file-backed).
    """
    return _tokenize(dataset, tokenizer, ("chosen", "rejected"), add_eos=add_eos, add_bos=add_bos,
                     batch_size=batch_size, num_proc=num_proc)


def tokenize_sft_data(
    dataset: Dataset,
    tokenizer: Any,
    *,
    add_eos: bool = True,
    add_bos: bool | None = None,
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> Dataset:
    """Add ``prompt_ids``, ``completion_ids`` to an SFT dataset (``prompt``, ``completion``).
    Arguments as in ``tokenize_preference_data``."""
    return _tokenize(dataset, tokenizer, ("completion",), add_eos=add_eos, add_bos=add_bos,
                     batch_size=batch_size, num_proc=num_proc)


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
