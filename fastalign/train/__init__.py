"""Trainers: SFT and DPO on packed rows, with config dataclasses and resumable checkpoints."""

from fastalign.train.checkpoint_io import CheckpointError, CheckpointWriteError, UnsafeCheckpointError
from fastalign.train.config import DPOConfig, SFTConfig, TrainConfig
from fastalign.train.dpo import DPOTrainer
from fastalign.train.lifecycle import RunDirectoryError, TrainingInterrupted
from fastalign.train.nonfinite import NonFiniteError
from fastalign.train.reward import RewardConfig, RewardTrainer
from fastalign.train.sft import SFTTrainer

__all__ = ["CheckpointError", "CheckpointWriteError", "DPOConfig", "DPOTrainer", "NonFiniteError", "RewardConfig",
           "RewardTrainer", "RunDirectoryError", "SFTConfig", "SFTTrainer", "TrainConfig", "TrainingInterrupted",
           "UnsafeCheckpointError"]
