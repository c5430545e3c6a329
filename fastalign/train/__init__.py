"""Trainers: SFT, DPO, reward model, PPO and GRPO on packed rows, with config dataclasses and
resumable checkpoints.

Every config class lives in ``fastalign.train.config``, every trainer in
``fastalign.train.<method>``. The names below are imported on first use (PEP 562), so that the
configs, which the CLI's help reads, load without torch.
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
    "RolloutConfig": "fastalign.train.config",
    "PPOConfig": "fastalign.train.config",
    "GRPOConfig": "fastalign.train.config",
    "GRPOTrainer": "fastalign.train.grpo",
    "PPOTrainer": "fastalign.train.ppo",
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
