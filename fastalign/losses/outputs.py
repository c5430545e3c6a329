"""Result types of the preference losses."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PreferenceLossOutput:
    """What every preference loss returns.

    ``loss``: scalar to backpropagate. ``losses``: per-pair (per-example for KTO) values
    before reduction. ``chosen_rewards``/``rejected_rewards``: implicit rewards (detached),
    ``margins`` = chosen - rejected, ``accuracies`` = 1.0 where chosen > rejected.
    ``nll_loss``: the chosen-answer NLL term where the loss has one (else ``None``).
    ``metrics``: loss-specific extras (e.g. ORPO's log-odds), detached.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor
    nll_loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def reward_summary(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    return dict(
        chosen_rewards=chosen,
        rejected_rewards=rejected,
        margins=chosen - rejected,
        accuracies=(chosen > rejected).to(chosen.dtype),
    )
