"""Generation for evaluation and RL rollouts (Hugging Face ``generate`` by default)."""

from fastalign.rollout.generate import Rollout, generate

__all__ = ["Rollout", "generate"]
