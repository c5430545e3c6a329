"""Load preference / SFT data from anywhere ``datasets`` reads and convert it to string columns.

The conversion is one batched ``Dataset.map`` (so a file-backed source stays file-backed and
the tokenization that follows is cached by ``datasets``). It always recomputes rather than
reading its own cache: the skip count is gathered while it runs.

Skipped rows (``on_error="skip"``) are logged in one line and recorded in the returned
dataset's ``info.description``; ``loading_stats(dataset)`` reads them back as ``LoadStats``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value
from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.exceptions import DatasetGenerationError

from fastalign.data.file_checks import check_data_file, describe_problem
from fastalign.data.formats import (
    CHAT_FORMATS,
    PREFERENCE_ADAPTERS,
    PREFERENCE_FORMATS,
    REPLY_COLUMNS,
    SFT_ADAPTERS,
    SFT_FORMATS,
    MalformedRow,
    ranked_row,
)

logger = logging.getLogger("fastalign")
ON_ERROR = ("raise", "skip")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
STATS_PREFIX = "fastalign.data.LoadStats "
MAX_RECORDED_SKIPS = 20
# What datasets raises on a bad file (StopIteration: an empty JSON Lines file; RecursionError:
# nesting too deep for its Python fallback). Not OSError: a full disk is not bad input.
LOAD_ERRORS = (DatasetGenerationError, pa.ArrowException, ValueError, StopIteration, RecursionError)


@dataclass(frozen=True)
class LoadStats:
    """What a loader did. ``skipped_examples`` holds (row, field, reason) of the first 20 skips."""

    format: str
    source_rows: int
    examples: int
    skipped: int
    skipped_examples: tuple[tuple[int, str, str], ...] = field(default=())


def loading_stats(dataset: Dataset) -> LoadStats | None:
    """The ``LoadStats`` a loader recorded in ``dataset.info.description`` (``None`` if none).

    ``datasets`` copies ``info`` through ``map``/``filter``, so this also works on the
    tokenized dataset.
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    description = dataset.info.description or ""
    if not description.startswith(STATS_PREFIX):
        return None
    record = json.loads(description[len(STATS_PREFIX):])
    record["skipped_examples"] = tuple(tuple(item) for item in record["skipped_examples"])
    return LoadStats(**record)


# ----------------------------------------------------------------------------- sources


def _looks_like_path(text: str) -> bool:
    return Path(text).suffix in FILE_BUILDERS or text.startswith(("/", ".", "~")) or "\\" in text


def _folder_files(folder: Path) -> list[Path]:
    """The data files ``datasets`` reads from a local folder, by its own file patterns: those of
    every split, since it prepares them all whichever split is asked for."""
    try:
        splits = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except FileNotFoundError:  # no data files: load_dataset says so itself
        return []
    return [Path(name) for files in splits.values() for name in files if Path(name).suffix in FILE_BUILDERS]


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


def _load_local(path: Path, files: Sequence[Path], load: Callable[[], Dataset]) -> Dataset:
    """Run ``load`` (``datasets.load_dataset`` on ``path``) after checking ``files``; turn its
    failure into a ``ValueError`` naming the file and line when one can be found."""
    for file in files:
        check_data_file(file)  # before: some bad files crash the process inside datasets
    try:
        return load()
    except LOAD_ERRORS as err:
        for file in files:
            problem = describe_problem(file)
            if problem is not None:
                raise ValueError(f"{file}: {problem}") from None
        cause = _root_cause(err)
        raise ValueError(f"{path}: could not be loaded ({type(cause).__name__}: {cause})") from err


def resolve_source(source: Any, split: str = "train") -> Dataset:
    """Turn ``source`` (a ``Dataset``, ``DatasetDict``, list of dicts, local file or folder,
    or a Hub name) into one ``Dataset``. Only strings that do not look like a path go to the Hub."""
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        if split not in source:
            raise ValueError(f"split={split!r} is not in the DatasetDict (has {sorted(source)})")
        return source[split]
    if isinstance(source, list) and all(isinstance(item, dict) for item in source):
        return Dataset.from_list(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "source must be a datasets.Dataset/DatasetDict, a list of dicts, a .jsonl/.json/"
            f".parquet path, a folder or a Hub dataset name; got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"source={str(source)!r}: unsupported file type (use {sorted(FILE_BUILDERS)})")
        return _load_local(path, [path], partial(datasets.load_dataset, builder, data_files=str(path), split="train"))
    if path.is_dir():
        if any((path / name).exists() for name in ("state.json", "dataset_dict.json")):
            return resolve_source(datasets.load_from_disk(str(path)), split)  # save_to_disk output
        return _load_local(path, _folder_files(path), partial(datasets.load_dataset, str(path), split=split))
    if isinstance(source, os.PathLike) or _looks_like_path(source):
        raise ValueError(f"source={str(source)!r}: no such file or folder")
    try:
        return datasets.load_dataset(source, split=split)
    except (ConnectionError, OSError) as err:  # offline: datasets raises ConnectionError (an OSError)
        raise ValueError(
            f"source={source!r} is not a local path and could not be loaded from the Hugging Face "
            f"Hub ({type(err).__name__}: {err}). Offline? Pass a local .jsonl/.parquet file or a "
            "datasets.Dataset instead."
        ) from err


# ----------------------------------------------------------------------------- detection


def _kind(dataset: Dataset, column: str) -> str:
    feature = dataset.features.get(column)
    if isinstance(feature, Value):
        return "string" if feature.dtype in ("string", "large_string") else "other"
    if isinstance(feature, (list, datasets.Sequence)) or type(feature).__name__ in ("List", "LargeList"):
        return "list"
    return "other" if feature is not None else "absent"


def detect_preference_format(dataset: Dataset) -> str:
    """Guess the preference format from column names and Arrow types."""
    columns = set(dataset.column_names)
    if {"chosen", "rejected"} <= columns:
        if _kind(dataset, "chosen") == "list":
            return "conversational"
        return "explicit" if "prompt" in columns else "hh"
    if "prompt" in columns and columns & set(REPLY_COLUMNS):
        return "ranked"
    raise ValueError(
        f"cannot detect the preference format of columns {sorted(columns)}: expected "
        "prompt/chosen/rejected, chosen/rejected (HH transcripts or message lists), or prompt + "
        f"one of {REPLY_COLUMNS} (ranked); pass format= explicitly"
    )


def detect_sft_format(dataset: Dataset) -> str:
    """Guess the SFT format from column names and Arrow types."""
    columns = set(dataset.column_names)
    if "messages" in columns:
        return "messages"
    if {"prompt", "completion"} <= columns:
        return "conversational" if _kind(dataset, "completion") == "list" else "prompt_completion"
    raise ValueError(
        f"cannot detect the SFT format of columns {sorted(columns)}: expected prompt/completion "
        "(strings or message lists) or messages; pass format= explicitly"
    )


# ----------------------------------------------------------------------------- conversion


class _Converter:
    """The batched ``map`` function: adapts rows, raises or counts malformed ones."""

    def __init__(self, adapter: Callable[..., list[dict]], outputs: Sequence[str], on_error: str) -> None:
        self.adapter, self.outputs, self.on_error = adapter, tuple(outputs), on_error
        self.skipped: list[tuple[int, str, str]] = []
        self.skip_count = 0

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.outputs}
        keys = list(batch)
        for index, values in zip(indices, zip(*batch.values())):
            try:
                rows = self.adapter(dict(zip(keys, values)))
            except MalformedRow as err:
                if self.on_error == "raise":
                    raise ValueError(f"row {index}: {err} (pass on_error='skip' to drop such rows)") from None
                self.skip_count += 1
                if len(self.skipped) < MAX_RECORDED_SKIPS:
                    self.skipped.append((index, err.field, err.reason))
                continue
            for row in rows:
                for name in self.outputs:
                    out[name].append(row[name])
        return out


def _convert(
    dataset: Dataset, adapter: Callable[..., list[dict]], outputs: Sequence[str], *, fmt: str, on_error: str, kind: str
) -> Dataset:
    converter = _Converter(adapter, outputs, on_error)
    converted = dataset.map(
        converter,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=Features({name: Value("string") for name in outputs}),
        load_from_cache_file=False,  # counting skips needs the function to run
        desc=f"fastalign: {kind} data ({fmt})",
    )
    stats = LoadStats(fmt, len(dataset), len(converted), converter.skip_count, tuple(converter.skipped))
    if stats.skipped:
        first = ", ".join(f"row {i} ({name}: {why})" for i, name, why in stats.skipped_examples[:3])
        logger.warning("%s data: skipped %d of %d malformed rows, e.g. %s",
                       kind, stats.skipped, stats.source_rows, first)
    converted.info.description = STATS_PREFIX + json.dumps(asdict(stats))  # map gave it its own info
    return converted


def _check_arguments(fmt: str, formats: Sequence[str], on_error: str) -> None:
    if fmt != "auto" and fmt not in formats:
        raise ValueError(f"format must be 'auto' or one of {tuple(formats)}, got {fmt!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _check_format(dataset: Dataset, resolved: str, required: Sequence[str], tokenizer: Any) -> None:
    missing = [name for name in required if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"format {resolved!r} needs column(s) {missing}; the dataset has {dataset.column_names}"
        )
    if resolved in CHAT_FORMATS:
        if tokenizer is None:
            raise ValueError(f"format {resolved!r} holds chat messages: pass tokenizer= (one with a chat template)")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer has no chat_template, needed to render {resolved!r} data")


def load_preference_data(
    source: Any,
    *,
    format: str = "auto",
    split: str = "train",
    tokenizer: Any = None,
    on_error: str = "raise",
    max_pairs_per_prompt: int | None = None,
) -> Dataset:
    """Load preference data as a ``Dataset`` with string columns ``prompt``, ``chosen``, ``rejected``.

    Args:
        source: ``Dataset``, ``DatasetDict`` (``split`` picked), list of dicts, ``.jsonl`` /
            ``.json`` / ``.parquet`` file, folder, or a Hub name (only for non-paths).
        format: ``"auto"`` (from column names/types) or one of ``PREFERENCE_FORMATS``.
        tokenizer: renders ``conversational`` rows with its chat template (required for them):
            the prompt is the rendering of the prompt messages with the generation prompt, each
            answer the rest of the rendering of prompt + answer, with the template's own end of
            turn (tokenization adds no second one; see ``fastalign.data.encoding``). A template
            that does not render the prompt as a prefix of prompt + answer makes the row malformed.
        on_error: a malformed row: ``"raise"`` (``ValueError`` naming row and field) or
            ``"skip"`` (dropped, counted; see ``loading_stats``).
        max_pairs_per_prompt: ``ranked`` only: keep the first this-many pairs per prompt (best
            reply against each worse one first).

    Returns:
        The converted ``Dataset`` (one row per pair) whose ``info.description`` records
        ``LoadStats``.
    """
    if max_pairs_per_prompt is not None and (
        isinstance(max_pairs_per_prompt, bool) or not isinstance(max_pairs_per_prompt, int) or max_pairs_per_prompt < 1
    ):
        raise ValueError(f"max_pairs_per_prompt must be None or an int >= 1, got {max_pairs_per_prompt!r}")
    _check_arguments(format, PREFERENCE_FORMATS, on_error)
    dataset = resolve_source(source, split)
    fmt = detect_preference_format(dataset) if format == "auto" else format
    replies = next((c for c in REPLY_COLUMNS if c in dataset.column_names), REPLY_COLUMNS[0])
    required = {"explicit": ("prompt", "chosen", "rejected"), "ranked": ("prompt", replies)}
    _check_format(dataset, fmt, required.get(fmt, ("chosen", "rejected")), tokenizer)
    if fmt == "ranked":
        adapter = partial(ranked_row, max_pairs_per_prompt=max_pairs_per_prompt)
    else:
        adapter = partial(PREFERENCE_ADAPTERS[fmt], tokenizer=tokenizer)
    return _convert(dataset, adapter, ("prompt", "chosen", "rejected"), fmt=fmt, on_error=on_error, kind="preference")


def load_sft_data(
    source: Any,
    *,
    format: str = "auto",
    split: str = "train",
    tokenizer: Any = None,
    on_error: str = "raise",
) -> Dataset:
    """Load SFT data as a ``Dataset`` with string columns ``prompt``, ``completion``.

    ``messages`` rows give one example per assistant turn (prompt = rendered history before
    it with the generation prompt, completion = the rest of the rendering up to and including
    that turn), so the loss covers assistant text only; ``conversational`` rows are rendered
    as in ``load_preference_data``. Other arguments as in ``load_preference_data``.
    """
    _check_arguments(format, SFT_FORMATS, on_error)
    dataset = resolve_source(source, split)
    fmt = detect_sft_format(dataset) if format == "auto" else format
    _check_format(dataset, fmt, ("messages",) if fmt == "messages" else ("prompt", "completion"), tokenizer)
    adapter = partial(SFT_ADAPTERS[fmt], tokenizer=tokenizer)
    return _convert(dataset, adapter, ("prompt", "completion"), fmt=fmt, on_error=on_error, kind="sft")
