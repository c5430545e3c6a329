"""Held-out preference accuracy of a policy on packed preference rows.

Two numbers: ``logp_accuracy`` — how often the policy gives the chosen answer a higher summed
log-prob than the rejected one (meaningful for any model, SFT included) — and, when a
reference is given, ``reward_accuracy`` — how often DPO's implicit reward
``β[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))]`` is positive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fastalign.models.policy import PolicyModel, packed_logprobs
from fastalign.packing.batch import PackedBatch

ReferenceFn = Callable[[PackedBatch], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def preference_accuracy(
    policy: PolicyModel,
    rows: Iterable[PackedBatch],
    *,
    reference: ReferenceFn | None = None,
    beta: float = 0.1,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Accuracy and mean margins over every example of ``rows`` (``PackedBatch`` list).

    Returns ``pairs``, ``logp_accuracy``, ``logp_margin`` (mean of log π(c) − log π(r)), and
    with a reference ``reward_accuracy`` and ``reward_margin`` (mean implicit-reward margin).
    """
    if not isinstance(policy, PolicyModel):
        raise ValueError(f"policy must be a PolicyModel, got {type(policy).__name__}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    was_training = policy.training
    policy.eval()
    logp_margins, reward_margins = [], []
    try:
        for row in rows:
            if device is not None:
                row = row.to(device)
            out = packed_logprobs(policy, row)
            logp_margins.append((out.chosen - out.rejected).float().cpu())
            if reference is not None:
                ref_chosen, ref_rejected = reference(row)
                delta = (out.chosen - ref_chosen) - (out.rejected - ref_rejected)
                reward_margins.append(beta * delta.float().cpu())
    finally:
        policy.train(was_training)
    if not logp_margins:
        raise ValueError("rows must hold at least one packed row")
    margins = torch.cat(logp_margins)
    result = {"pairs": float(margins.numel()), "logp_accuracy": float((margins > 0).float().mean()),
              "logp_margin": float(margins.mean())}
    if reward_margins:
        rewards = torch.cat(reward_margins)
        result.update(reward_accuracy=float((rewards > 0).float().mean()), reward_margin=float(rewards.mean()))
    return result
