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


def reward_model_reward(reward_model, tokenizer, *, token_budget: int = 4096) -> RewardFn:
    """Scores of a trained ``RewardModel`` (``fastalign.models``): each completion is tokenized
    the way the reward model's training data was (answer + EOS), packed, and scored at its
    last token."""
    import torch

    from fastalign.data.encoding import RowEncoder, tokenizer_adds_bos
    from fastalign.packing import pack_completion_examples

    if not hasattr(reward_model, "sequence_scores"):
        raise ValueError("reward_model must be a fastalign RewardModel")
    encoder = RowEncoder(tokenizer, boundary="separate", add_bos=tokenizer_adds_bos(tokenizer), add_eos=True)

    @torch.no_grad()
    def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        device = next(reward_model.parameters()).device
        prompt_ids, answers = encoder.rows(prompts, {"completion": completions})
        answer_ids = answers["completion"]
        scores = torch.zeros(len(prompts))
        for row in pack_completion_examples(prompt_ids, answer_ids, token_budget=token_budget, on_overflow="truncate"):
            scores[row.example_index] = reward_model.sequence_scores(row.to(device)).chosen.float().cpu()
        return scores.tolist()

    return reward
