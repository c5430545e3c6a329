"""Reward-model and SFT losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastalign.losses._checks import check_logps, check_range, normalizer


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
    num_pairs: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley–Terry pairwise loss of a reward model: ``-log σ(r_c - r_r - m)``.

    ``margin [B]`` (Llama 2's graded preference margin) defaults to 0. With
    ``center_rewards_coefficient = c`` adds ``c (r_c + r_r)²`` per pair (Eisenstein et al. 2023),
    keeping rewards centered at 0 — both as TRL's ``RewardTrainer``. Mean over pairs, or the
    sum divided by ``num_pairs``.
    """
    check_logps(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_rewards_coefficient is not None:
        check_range("center_rewards_coefficient", center_rewards_coefficient, 0.0, float("inf"))
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards).square()
    return losses.sum() / normalizer("num_pairs", num_pairs, losses.new_tensor(float(max(losses.shape[0], 1))))


def sft_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-mean negative log-likelihood ``-Σ log p · m / Σ m`` (or ``/ num_tokens``, the global
    count of the optimizer step). 0 when nothing is masked in."""
    if not isinstance(token_logps, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise ValueError("token_logps and mask must be tensors")
    if token_logps.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal token_logps shape {tuple(token_logps.shape)}")
    weights = mask.to(token_logps.dtype)
    return -(token_logps * weights).sum() / normalizer("num_tokens", num_tokens, weights.sum().clamp(min=1.0))
