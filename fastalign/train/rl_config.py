"""Configurations of the RL trainers (PPO, GRPO): sampling options and each method's own.

Torch-free like ``config.py``, so that ``fastalign train ppo --help`` lists these options
without importing the trainers. The trainers re-export them (``fastalign.train.ppo.PPOConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastalign.choices import ADVANTAGE_SCALING, AGGREGATIONS, KL_ESTIMATORS
from fastalign.train.config import TrainConfig, _choice
from fastalign.train.options import option


@dataclass
class RolloutConfig(TrainConfig):
    """Sampling options shared by PPO and GRPO."""

    learning_rate: float = 1e-5
    prompts_per_step: int = option(8, "data", "prompts sampled per optimizer step (rollout batch)")
    max_new_tokens: int = option(32, "method", "longest sampled completion in tokens")
    temperature: float = option(1.0, "method", "sampling temperature (the loss scores tokens at the same temperature)")
    top_p: float = option(1.0, "method", "nucleus sampling: keep the smallest token set of this probability")
    generation_batch_size: int = option(64, "method", "prompts per generate() call")

    def validate(self) -> None:
        super().validate()
        for name in ("prompts_per_step", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass
class PPOConfig(RolloutConfig):
    """PPO with a critic: clipped surrogate, clipped value loss, KL-shaped rewards, GAE."""

    ppo_epochs: int = option(2, "method", "optimizer passes over each rollout batch")
    clip_eps: float = option(0.2, "method", "clip range of the policy ratio")
    value_clip_eps: float | None = option(0.2, "method", "clip range of the value update (None: unclipped)")
    vf_coef: float = option(0.5, "method", "weight of the value loss")
    entropy_coef: float = option(0.0, "method", "weight of the entropy bonus")
    kl_coef: float = option(0.05, "method", "per-token KL penalty to the reference in the reward")
    kl_estimator: str = option("k1", "method", f"KL estimator of the penalty: {', '.join(KL_ESTIMATORS)}")
    kl_target: float | None = option(None, "method", "adaptive KL controller's target (None: fixed kl_coef)")
    kl_horizon: int = option(10_000, "method", "adaptive KL controller's horizon in samples")
    gamma: float = option(1.0, "method", "GAE discount")
    lam: float = option(0.95, "method", "GAE lambda")
    whiten_advantages: bool = option(True, "method", "normalize advantages to mean 0, std 1 per rollout")

    def validate(self) -> None:
        super().validate()
        if self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        for name in ("vf_coef", "entropy_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target must be None or > 0, got {self.kl_target}")
        if self.value_clip_eps is not None and self.value_clip_eps <= 0:
            raise ValueError(f"value_clip_eps must be None or > 0, got {self.value_clip_eps}")
        if self.kl_horizon < 1:
            raise ValueError(f"kl_horizon must be >= 1, got {self.kl_horizon}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)


@dataclass
class GRPOConfig(RolloutConfig):
    """``beta``: weight of the k3 KL-to-reference loss term (0: no reference model at all)."""

    num_generations: int = option(8, "method", "completions sampled per prompt (one group)")
    beta: float = option(0.04, "method", "weight of the k3 KL-to-reference loss term (0: no reference model)")
    clip_eps: float = option(0.2, "method", "clip range of the policy ratio")
    clip_eps_high: float | None = option(None, "method", "upper clip range (DAPO's clip-higher; None: clip_eps)")
    scale_rewards: str = option("std", "method", f"group advantages: {' or '.join(ADVANTAGE_SCALING)} "
                                                 "(none: Dr. GRPO)")
    aggregation: str = option("seq_mean_token_mean", "method", f"loss reduction: {', '.join(AGGREGATIONS)}")

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations!r}")
        if self.num_generations < 2 and self.scale_rewards == "std":
            raise ValueError("num_generations must be >= 2 to normalize rewards within a group")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            raise ValueError(f"clip_eps_high must be None or > 0, got {self.clip_eps_high}")
        _choice("scale_rewards", self.scale_rewards, ADVANTAGE_SCALING)
        _choice("aggregation", self.aggregation, AGGREGATIONS)

