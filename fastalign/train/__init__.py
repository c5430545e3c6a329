"""Trainers: SFT, DPO, reward model, PPO and GRPO on packed rows, with config dataclasses and
resumable checkpoints.

The names below are imported on first use (PEP 562), so that the config modules
(``fastalign.train.config``, ``fastalign.train.rl_config``), which the CLI's help reads, load
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "CheckpointError": "fastalign.train.checkpoint_io",
    "CheckpointWriteError": "fastalign.train.checkpoint_io",
    "UnsafeCheckpointError": "fastalign.train.checkpoint_io",
    "TrainConfig": "fastalign.train.config",
    "SFTConfig": "fastalign.train.config",
    "DPOConfig": "fastalign.train.config",
    "RewardConfig": "fastalign.train.config",
    "DPOTrainer": "fastalign.train.dpo",
    "RunDirectoryError": "fastalign.train.lifecycle",
    "TrainingInterrupted": "fastalign.train.lifecycle",
    "NonFiniteError": "fastalign.train.nonfinite",
    "RewardTrainer": "fastalign.train.reward",
    "SFTTrainer": "fastalign.train.sft",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastalign.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
