"""Data: loading (HF ``datasets``, JSONL/Parquet), format adapters, tokenization, the byte
tokenizer and the embedded verifiable task. Knows nothing about models."""

from fastalign.data.formats import PREFERENCE_FORMATS, SFT_FORMATS, MalformedRow
from fastalign.data.loading import (
    LoadStats,
    detect_preference_format,
    detect_sft_format,
    load_preference_data,
    load_sft_data,
    loading_stats,
)
from fastalign.data.synthetic import TASKS, make_preference_task, make_sft_task, verify, verify_score
from fastalign.data.tokenize import pack_dataset, tokenize_preference_data, tokenize_sft_data
from fastalign.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PREFERENCE_FORMATS",
    "SFT_FORMATS",
    "TASKS",
    "VOCAB_SIZE",
    "LoadStats",
    "MalformedRow",
    "byte_tokenizer",
    "detect_preference_format",
    "detect_sft_format",
    "load_preference_data",
    "load_sft_data",
    "loading_stats",
    "make_preference_task",
    "make_sft_task",
    "pack_dataset",
    "tokenize_preference_data",
    "tokenize_sft_data",
    "verify",
    "verify_score",
]
