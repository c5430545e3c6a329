"""Drive TRL 1.16's own loss code with controlled log-probs (no model, no tokenizer).

TRL computes its DPO/KTO losses inside ``_compute_loss`` from a model's fused-head outputs.
These stubs stand in for the trainer (attributes the method reads) and the model (returns
the per-token log-probs we chose), so the exact TRL code path runs on our numbers.
"""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = __import__("pytest").importorskip("trl")


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x

    def unwrap_model(self, model):
        return model


def _trainer(**attrs):
    base = dict(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=True, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    base.update(attrs)
    return SimpleNamespace(**base)


class _FusedHeadModel:
    """Returns the given per-token log-probs for whatever input ids it is called with."""

    def __init__(self, by_input: dict[int, torch.Tensor]):
        self.by_input = by_input

    def __call__(self, input_ids, labels=None, fused_lm_head=False, **kwargs):
        log_probs = self.by_input[id(input_ids)]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(log_probs, dtype=torch.bool))


def trl_dpo_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, *, beta, loss_types,
                 loss_weights=None, label_smoothing=0.0, f_divergence_type="reverse_kl",
                 f_alpha_divergence_coef=1.0, discopop_tau=0.05):
    """TRL's ``DPOTrainer._compute_loss`` on ``per_token_logps [2B, T-1]`` (chosen rows first)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    input_ids = torch.zeros(completion_mask.shape, dtype=torch.long)
    trainer = _trainer(
        ld_alpha=None, f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef, loss_types=list(loss_types),
        loss_weights=list(loss_weights or [1.0] * len(loss_types)), beta=beta,
        label_smoothing=label_smoothing, args=SimpleNamespace(discopop_tau=discopop_tau),
        use_weighting=False,
    )
    inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                  completion_mask=completion_mask, ref_chosen_logps=ref_chosen,
                  ref_rejected_logps=ref_rejected)
    loss = DPOTrainer._compute_loss(trainer, _FusedHeadModel({id(input_ids): per_token_logps}), inputs, False)
    return loss, trainer._metrics["train"]


def trl_kto_loss(per_token_logps, completion_mask, labels, ref_logps, kl_per_token_logps, ref_kl_logps,
                 *, beta, desirable_weight=1.0, undesirable_weight=1.0, loss_type="kto"):
    from trl.trainer.kto_trainer import KTOTrainer

    input_ids = torch.zeros(completion_mask.shape, dtype=torch.long)
    kl_input_ids = torch.zeros(completion_mask.shape, dtype=torch.long)
    trainer = _trainer(
        calculate_KL=loss_type == "kto", loss_type=loss_type, beta=beta,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
    )
    batch = dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), completion_mask=completion_mask,
        KL_input_ids=kl_input_ids, KL_attention_mask=torch.ones_like(kl_input_ids),
        KL_completion_mask=completion_mask, label=labels, ref_logps=ref_logps, ref_KL_logps=ref_kl_logps,
    )
    model = _FusedHeadModel({id(input_ids): per_token_logps, id(kl_input_ids): kl_per_token_logps})
    trainer._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(trainer, m, b)
    loss = KTOTrainer._compute_loss(trainer, model, batch, False)
    return loss, trainer._metrics["train"]


def trl_cpo_losses(chosen, rejected, *, beta, loss_type, label_smoothing=0.0, simpo_gamma=0.5):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    trainer = _trainer(alpha=0.0, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                       simpo_gamma=simpo_gamma)
    return CPOTrainer.cpo_loss(trainer, chosen, rejected)


def trl_orpo_losses(chosen_avg, rejected_avg, *, beta):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    return ORPOTrainer.odds_ratio_loss(_trainer(beta=beta), chosen_avg, rejected_avg)


def trl_reward_loss(chosen, rejected, *, margin=None, center_rewards_coefficient=None):
    from trl.trainer.reward_trainer import RewardTrainer

    trainer = _trainer(args=SimpleNamespace(center_rewards_coefficient=center_rewards_coefficient))
    logits = torch.cat([chosen, rejected])[:, None]
    inputs = dict(attention_mask=torch.ones(logits.shape[0], 3, dtype=torch.long))
    if margin is not None:
        inputs["margin"] = margin

    def model(**kwargs):
        return SimpleNamespace(logits=logits)

    return RewardTrainer.compute_loss(trainer, model, inputs)
