"""KTO: preference learning from unpaired desirable / undesirable answers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastalign.losses._checks import check_choice, check_logps, check_positive, normalizer
from fastalign.losses.outputs import PreferenceLossOutput

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point ``z = max(0, mean(log π(y'|x) - log π_ref(y'|x)))`` over mismatched
    (prompt, answer) pairs, detached (TRL 1.16 ``KTOTrainer``)."""
    check_logps(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    *,
    kl: torch.Tensor | float | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
    num_examples: float | torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """KTO (Ethayarajh et al. 2024, 2402.01306, Eq. 7) with TRL 1.16 semantics.

    With ``Δ = log π(y) - log π_ref(y)`` and reference point ``z`` (``kl``; see
    ``kto_kl_estimate``; 0 if ``None``): desirable ``λ_D (1 - σ(β(Δ - z)))``, undesirable
    ``λ_U (1 - σ(β(z - Δ)))``. ``loss_type="apo_zero_unpaired"``: ``1 - σ(βΔ)`` / ``σ(βΔ)``
    (APO, 2408.06266) and no reference point. The loss is the mean over all examples.

    Args:
        policy_logps, ref_logps: ``[B]`` summed answer log-probs.
        desirable: ``[B]`` bool, True for desirable answers.

    Returns:
        ``PreferenceLossOutput``: per-example ``losses`` (in input order); chosen/rejected
        rewards are ``βΔ`` of the desirable / undesirable examples (different lengths);
        margins = mean chosen - mean rejected reward; accuracies unused (empty);
        ``metrics['kl']`` is ``z``.
    """
    check_logps(policy_logps=policy_logps, ref_logps=ref_logps)
    check_positive("beta", beta)
    check_positive("desirable_weight", desirable_weight)
    check_positive("undesirable_weight", undesirable_weight)
    check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
    if not isinstance(desirable, torch.Tensor) or desirable.shape != policy_logps.shape:
        raise ValueError(f"desirable must be a bool tensor shaped like policy_logps {tuple(policy_logps.shape)}")
    desirable = desirable.to(device=policy_logps.device, dtype=torch.bool)
    z = torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
    if loss_type == "kto" and kl is not None:
        z = torch.as_tensor(kl, dtype=policy_logps.dtype, device=policy_logps.device).detach().reshape(())
        if not bool(torch.isfinite(z)):
            raise ValueError("kl must be finite")
    logratios = policy_logps - ref_logps
    if loss_type == "kto":
        chosen_losses = 1 - F.sigmoid(beta * (logratios - z))
        rejected_losses = 1 - F.sigmoid(beta * (z - logratios))
    else:
        chosen_losses = 1 - F.sigmoid(beta * logratios)
        rejected_losses = F.sigmoid(beta * logratios)
    losses = torch.where(desirable, desirable_weight * chosen_losses, undesirable_weight * rejected_losses)
    loss = losses.sum() / normalizer("num_examples", num_examples, losses.new_tensor(float(max(losses.shape[0], 1))))
    rewards = (beta * logratios).detach()
    chosen_rewards, rejected_rewards = rewards[desirable], rewards[~desirable]
    margin = (chosen_rewards.mean() if chosen_rewards.numel() else z) - (
        rejected_rewards.mean() if rejected_rewards.numel() else z
    )
    return PreferenceLossOutput(
        loss=loss, losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
        margins=margin.reshape(1), accuracies=rewards.new_empty(0), metrics=dict(kl=z.detach()),
    )
