"""Trainers: SFT and DPO on packed rows, with config dataclasses and resumable checkpoints."""

from fastalign.train.config import DPOConfig, SFTConfig, TrainConfig
from fastalign.train.dpo import DPOTrainer
from fastalign.train.reward import RewardConfig, RewardTrainer
from fastalign.train.sft import SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "RewardConfig", "RewardTrainer", "SFTConfig", "SFTTrainer", "TrainConfig"]
