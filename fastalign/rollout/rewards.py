"""Reward functions for RL trainers: ``reward_fn(prompts, completions) -> list[float]``.

A verifier (the embedded task's exact-match check) or a trained reward model; any Python
callable with that signature works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]


def verifier_reward(verify: Callable[[str, str], bool | float], *, correct: float = 1.0, wrong: float = 0.0) -> RewardFn:
    """Reward ``correct`` when ``verify(prompt, completion)`` holds, else ``wrong``; a verifier
    that returns a float score (a graded one) is mapped linearly: ``wrong + score·(correct − wrong)``."""
    if not callable(verify):
        raise ValueError("verify must be a callable (prompt, completion) -> bool")

    def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [wrong + float(verify(p, c)) * (correct - wrong) for p, c in zip(prompts, completions)]

    return reward
