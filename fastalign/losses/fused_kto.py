"""Fused KTO layer (unpaired preferences) with Liger-Kernel 0.8.5's interface."""

from __future__ import annotations

import torch

from fastalign.losses.fused_base import FusedLayerBase, check_layer_inputs
from fastalign.losses.kto import kto_loss


class FusedLinearKTOLoss(FusedLayerBase):
    """KTO on hidden states ``[B, T, H]`` of B unpaired answers with ``preference_labels [B]``.

    ``forward(_input, lin_weight, target, bias, preference_labels, ref_input, ref_weight,
    ref_bias, kl)`` (Liger's order: hidden first) returns ``(loss, (chosen_logps_sum,
    rejected_logps_sum, chosen_logits_sum, rejected_logits_sum, chosen_rewards_sum,
    rejected_rewards_sum))`` — sums over the desirable / undesirable examples, as Liger.
    ``kl`` is KTO's reference point (see ``kto_kl_estimate``); extra keywords:
    ``desirable_weight``, ``undesirable_weight``, ``impl``; ``ref_logps=`` in ``forward``.
    """

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, compiled: bool = True,
                 use_ref_model: bool = False, average_log_prob: bool = False, chunk_size: int = 1,
                 *, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, impl: str = "auto"):
        super().__init__(ignore_index, impl)
        self.beta, self.use_ref_model, self.average_log_prob = beta, use_ref_model, average_log_prob
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.compiled, self.chunk_size = compiled, chunk_size

    def forward(self, _input, lin_weight, target, bias=None, preference_labels=None, ref_input=None,
                ref_weight=None, ref_bias=None, kl=None, *, ref_logps=None, num_examples=None):
        check_layer_inputs(lin_weight, _input, target, paired=False)
        if preference_labels is None:
            raise ValueError("preference_labels [B] (True = desirable) is required")
        labels = torch.as_tensor(preference_labels, device=_input.device).bool()
        if labels.shape != (_input.shape[0],):
            raise ValueError(f"preference_labels must have shape ({_input.shape[0]},), got {tuple(labels.shape)}")
        stats = self.stats(lin_weight, _input, target, bias)
        logps = stats.row_logps(self.average_log_prob)
        if ref_logps is not None:
            ref = ref_logps.detach()
        elif self.use_ref_model:
            if ref_input is None or ref_weight is None:
                raise ValueError("use_ref_model=True needs ref_input and ref_weight (or pass ref_logps=)")
            with torch.no_grad():
                ref = self.stats(ref_weight, ref_input, target, ref_bias).row_logps(self.average_log_prob)
        else:
            ref = torch.zeros_like(logps)
        out = kto_loss(logps, ref, labels, kl=kl, beta=self.beta, desirable_weight=self.desirable_weight,
                       undesirable_weight=self.undesirable_weight, num_examples=num_examples)
        with torch.no_grad():
            row_logit_sums = _input.float().sum(dim=1) @ lin_weight.float().sum(dim=0)
            if bias is not None:
                row_logit_sums = row_logit_sums + _input.shape[1] * bias.float().sum()
        detached = logps.detach()
        return out.loss, (
            detached[labels].sum(), detached[~labels].sum(), row_logit_sums[labels].sum(),
            row_logit_sums[~labels].sum(), out.chosen_rewards.sum(), out.rejected_rewards.sum(),
        )
