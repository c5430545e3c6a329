"""RL losses on per-token log-probs: PPO (clipped, dual-clip), value loss, KL estimators,
entropy bonus, GAE, and GRPO's group-normalized advantages.

All per-token tensors are ``[B, T]`` with a ``mask [B, T]`` of the positions that count
(sampled answer tokens). Scalars come out through ``aggregate`` (see ``aggregation.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastalign.choices import ADVANTAGE_SCALING, KL_ESTIMATORS  # torch-free, for the CLI's help
from fastalign.losses._checks import check_choice, check_positive, check_range
from fastalign.losses.aggregation import aggregate


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor
    per_token: torch.Tensor  # [B, T], zero outside the mask
    clip_fraction: torch.Tensor  # share of masked tokens where clipping was active
    approx_kl: torch.Tensor  # mean over masked tokens of k3(old || new)
    ratio_mean: torch.Tensor


def _check_token_tensors(**tensors: torch.Tensor) -> None:
    shape = None
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if shape is None:
            shape, first = value.shape, name
        elif value.shape != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)} but {first} has {tuple(shape)}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(x.dtype)
    return (x * weights).sum() / weights.sum().clamp(min=1.0)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from samples of π (Schulman 2020, "Approximating KL").

    ``k1 = log π - log π_ref`` (unbiased, high variance, can be negative), ``k2 = ½ (log π -
    log π_ref)²``, ``k3 = e^{log π_ref - log π} - (log π_ref - log π) - 1`` (unbiased, ≥ 0).
    """
    check_choice("kind", kind, KL_ESTIMATORS)
    _check_token_tensors(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    return torch.expm1(-log_ratio) + log_ratio


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> PolicyLossOutput:
    """PPO's clipped surrogate (Schulman et al. 2017), per token.

    ``r = exp(log π - log π_old)``; ``L = max(-A r, -A clip(r, 1 - ε, 1 + ε_high))``
    (``ε_high`` defaults to ``ε``; DAPO's clip-higher sets it larger). With ``dual_clip = c > 1``
    (Ye et al. 2020) negative-advantage tokens are additionally capped at ``-A c``.
    ``advantages`` may be ``[B, T]`` or ``[B]`` (one per sequence, broadcast).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    _check_token_tensors(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    check_range("clip_eps", clip_eps, 0.0, 1.0, low_open=True)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    check_positive("clip_eps_high", high)
    if dual_clip is not None and not (isinstance(dual_clip, (int, float)) and dual_clip > 1.0):
        raise ValueError(f"dual_clip must be > 1, got {dual_clip!r}")
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * dual_clip), per_token)
    per_token = per_token * mask.to(per_token.dtype)
    with torch.no_grad():
        clip_fraction = _masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        approx_kl = _masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        ratio_mean = _masked_mean(ratio, mask)
    loss = aggregate(per_token, mask, aggregation, num_tokens=num_tokens,
                     num_sequences=num_sequences, max_tokens=max_tokens)
    return PolicyLossOutput(loss, per_token, clip_fraction, approx_kl, ratio_mean)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float | None = 0.2,
    aggregation: str = "token_mean",
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Critic loss ``½ max((V - R)², (V_clip - R)²)``, ``V_clip = V_old + clip(V - V_old, ±ε)``
    (PPO2 value clipping; ``clip_eps=None`` gives plain ``½ (V - R)²``)."""
    _check_token_tensors(values=values, old_values=old_values, returns=returns, mask=mask)
    squared = (values - returns).square()
    if clip_eps is not None:
        check_positive("clip_eps", clip_eps)
        clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        squared = torch.maximum(squared, (clipped_values - returns).square())
    return aggregate(0.5 * squared, mask, aggregation, num_tokens=num_tokens, num_sequences=num_sequences)


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, coef: float, *, aggregation: str = "token_mean",
    num_tokens: float | torch.Tensor | None = None, num_sequences: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``-coef · aggregate(entropy)``: add it to the loss to encourage exploration."""
    check_range("coef", coef, 0.0, float("inf"))
    return -coef * aggregate(entropy, mask, aggregation, num_tokens=num_tokens, num_sequences=num_sequences)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over ``[B, T]`` answers.

    ``δ_t = r_t + γ V_{t+1} m_{t+1} - V_t``, ``A_t = δ_t + γλ m_{t+1} A_{t+1}`` (the value after
    the last valid token is 0: episodes end with the answer). Returns ``(advantages, returns =
    A + V)``, zero outside the mask, without gradient. Vectorized over the batch; the scan over
    T is sequential by nature.
    """
    _check_token_tensors(rewards=rewards, values=values, mask=mask)
    check_range("gamma", gamma, 0.0, 1.0, high_open=False)
    check_range("lam", lam, 0.0, 1.0, high_open=False)
    with torch.no_grad():
        weights = mask.to(values.dtype)
        values = values * weights
        advantages = torch.zeros_like(values)
        running = torch.zeros_like(values[:, 0])
        next_value = torch.zeros_like(values[:, 0])
        next_valid = torch.zeros_like(values[:, 0])
        for t in range(values.shape[1] - 1, -1, -1):
            delta = rewards[:, t] + gamma * next_value * next_valid - values[:, t]
            running = delta + gamma * lam * next_valid * running
            advantages[:, t] = running * weights[:, t]
            next_value, next_valid = values[:, t], weights[:, t]
        return advantages, (advantages + values) * weights


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalize ``x`` to unit variance (and zero mean) over masked positions (reward/advantage whitening)."""
    _check_token_tensors(x=x, mask=mask)
    weights = mask.to(x.dtype)
    count = weights.sum().clamp(min=1.0)
    mean = (x * weights).sum() / count
    var = ((x - mean).square() * weights).sum() / count
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * weights


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "std", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO (Shao et al. 2024, 2402.03300) advantages: ``(r - mean_group) / (std_group + eps)``.

    ``rewards [P * G]`` holds G consecutive samples per prompt. ``scale="none"`` only centers
    (Dr. GRPO, Liu et al. 2025, 2503.20783). ``std`` is the unbiased sample std, as TRL.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError("rewards must be a 1-d tensor [num_prompts * group_size]")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a multiple of group_size={group_size}")
    check_choice("scale", scale, ADVANTAGE_SCALING)
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centered[:, :1])
        centered = centered / (std + eps)
    return centered.reshape(-1)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "seq_mean_token_mean",
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> PolicyLossOutput:
    """GRPO per-token objective: PPO's clipped surrogate plus ``β · k3(π || π_ref)`` as a loss term.

    ``aggregation``: ``seq_mean_token_mean`` (GRPO), ``token_mean`` (DAPO/BNPO),
    ``seq_mean_token_sum_norm`` (Dr. GRPO). ``advantages`` ``[B]`` or ``[B, T]``.
    """
    check_range("beta", beta, 0.0, float("inf"))
    surrogate = ppo_policy_loss(
        logprobs, old_logprobs, advantages, mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
        aggregation=aggregation, num_tokens=num_tokens, num_sequences=num_sequences, max_tokens=max_tokens,
    )
    if beta == 0.0:
        return surrogate
    if ref_logprobs is None:
        raise ValueError("ref_logprobs is required when beta > 0")
    per_token = surrogate.per_token + beta * kl_estimate(logprobs, ref_logprobs, "k3") * mask.to(logprobs.dtype)
    loss = aggregate(per_token, mask, aggregation, num_tokens=num_tokens, num_sequences=num_sequences,
                     max_tokens=max_tokens)
    return surrogate._replace(loss=loss, per_token=per_token)
