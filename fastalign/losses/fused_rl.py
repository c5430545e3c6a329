"""Fused PPO / GRPO layers: hidden states of sampled tokens in, policy loss out.

Log-probs and entropies of the sampled tokens come from one pass of the fused kernel at the
sampling temperature; no ``[tokens, vocab]`` logits exist at any point.
"""

from __future__ import annotations

import torch

from fastalign.losses._checks import check_choice, check_range
from fastalign.losses.aggregation import aggregate
from fastalign.losses.fused_base import FusedLayerBase, check_layer_inputs
from fastalign.losses.rl import KL_ESTIMATORS, kl_estimate, ppo_policy_loss
from fastalign.ops.head import FusedHead

GRPO_LOSS_TYPES = {
    "grpo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dapo": "token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
}


class FusedLinearPPOLoss(FusedLayerBase):
    """PPO policy objective on the LM head: clipped surrogate (optional dual clip), minus an
    entropy bonus, plus a KL-to-reference term.

    ``forward(_input [B, T, H], lin_weight [V, H], selected_token_ids [B, T], attention_mask
    [B, T], advantages [B] or [B, T], bias=None, ref_per_token_logps=None,
    old_per_token_logps=None, num_items_in_batch=None)`` → ``(loss, metrics)`` where metrics
    (detached) has ``policy_loss``, ``entropy``, ``kl``, ``clip_fraction``, ``approx_kl`` and
    the per-token ``logprobs`` (to store as next epoch's old log-probs). Without
    ``old_per_token_logps`` the ratio is 1 (single on-policy step). ``num_items_in_batch`` is
    the global token (or sequence, for sequence aggregations) count of the optimizer step.
    """

    def __init__(self, *, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                 dual_clip: float | None = None, entropy_coef: float = 0.0, kl_coef: float = 0.0,
                 kl_estimator: str = "k3", aggregation: str = "token_mean", temperature: float = 1.0,
                 max_completion_length: int | None = None, impl: str = "auto"):
        super().__init__(-100, impl)
        check_range("entropy_coef", entropy_coef, 0.0, float("inf"))
        check_range("kl_coef", kl_coef, 0.0, float("inf"))
        check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
        self.clip_eps, self.clip_eps_high, self.dual_clip = clip_eps, clip_eps_high, dual_clip
        self.entropy_coef, self.kl_coef, self.kl_estimator = entropy_coef, kl_coef, kl_estimator
        self.aggregation, self.temperature, self.max_completion_length = aggregation, temperature, max_completion_length

    def _counts(self, num_items):
        if num_items is None:
            return {}
        return {"num_tokens": num_items} if self.aggregation == "token_mean" else {"num_sequences": num_items}

    def forward(self, _input, lin_weight, selected_token_ids, attention_mask, advantages, bias=None,
                ref_per_token_logps=None, old_per_token_logps=None, num_items_in_batch=None):
        check_layer_inputs(lin_weight, _input, selected_token_ids, paired=False,
                           names=("lin_weight", "_input", "selected_token_ids"))
        if attention_mask.shape != selected_token_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal "
                             f"selected_token_ids shape {tuple(selected_token_ids.shape)}")
        mask = attention_mask.bool()
        targets = selected_token_ids.masked_fill(~mask, self.ignore_index)
        logps, entropy = FusedHead(lin_weight, bias).logprobs(_input, targets, temperature=self.temperature,
                                                              return_entropy=True, impl=self.impl)
        old = logps.detach() if old_per_token_logps is None else old_per_token_logps
        counts = self._counts(num_items_in_batch)
        surrogate = ppo_policy_loss(
            logps, old, advantages, mask, clip_eps=self.clip_eps, clip_eps_high=self.clip_eps_high,
            dual_clip=self.dual_clip, aggregation=self.aggregation, max_tokens=self.max_completion_length, **counts,
        )
        loss = surrogate.loss
        mean_entropy = aggregate(entropy, mask, self.aggregation, max_tokens=self.max_completion_length, **counts)
        if self.entropy_coef > 0:
            loss = loss - self.entropy_coef * mean_entropy
        kl = torch.zeros((), device=logps.device)
        if self.kl_coef > 0 or ref_per_token_logps is not None:
            if ref_per_token_logps is None:
                raise ValueError("kl_coef > 0 needs ref_per_token_logps")
            kl = aggregate(kl_estimate(logps, ref_per_token_logps, self.kl_estimator), mask, self.aggregation,
                           max_tokens=self.max_completion_length, **counts)
            loss = loss + self.kl_coef * kl
        metrics = dict(policy_loss=surrogate.loss.detach(), entropy=mean_entropy.detach(), kl=kl.detach(),
                       clip_fraction=surrogate.clip_fraction, approx_kl=surrogate.approx_kl,
                       logprobs=logps.detach())
        return loss, metrics


class FusedLinearGRPOLoss(FusedLinearPPOLoss):
    """GRPO on the LM head with Liger-Kernel's constructor names (``beta`` = KL coefficient with
    the k3 estimator, ``epsilon_low``/``epsilon_high``, ``loss_type`` in ``grpo``, ``bnpo``,
    ``dapo``, ``dr_grpo``, ``max_completion_length`` for ``dr_grpo``, ``temperature``).
    ``compiled``, ``chunk_size`` and ``use_ref_model`` are accepted and unused."""

    def __init__(self, beta: float = 0.04, compiled: bool = True, use_ref_model: bool = True,
                 chunk_size: int = 1, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                 loss_type: str = "dapo", max_completion_length: int | None = None, temperature: float = 1.0,
                 *, impl: str = "auto"):
        check_choice("loss_type", loss_type, list(GRPO_LOSS_TYPES))
        if loss_type == "dr_grpo" and max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        super().__init__(clip_eps=epsilon_low, clip_eps_high=epsilon_high, kl_coef=beta, kl_estimator="k3",
                         aggregation=GRPO_LOSS_TYPES[loss_type], temperature=temperature,
                         max_completion_length=max_completion_length, impl=impl)
        self.loss_type = loss_type
        self.compiled, self.chunk_size, self.use_ref_model = compiled, chunk_size, use_ref_model
