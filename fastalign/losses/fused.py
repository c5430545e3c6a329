"""Fused drop-in preference layers: LM-head weight + hidden states in, loss out, no logits.

Constructors, ``forward`` arguments and return values follow Liger-Kernel 0.8.5's
``LigerFusedLinear{DPO,SimPO,CPO,ORPO}Loss`` so that swapping the import is enough:
``_input [2B, T, H]`` holds the chosen rows then the rejected rows, ``target [2B, T]`` is
aligned with it (no shift; ``ignore_index`` marks unscored positions). ``compiled`` and
``chunk_size`` are accepted for compatibility and unused: the fused op never builds logits.
The returned per-sequence log-probs, logits means and rewards are detached metrics, like
Liger's; the loss carries the gradient to ``_input``, ``lin_weight`` and ``bias``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastalign.losses._checks import normalizer
from fastalign.losses.fused_base import FusedLayerBase, check_layer_inputs, mean_logits, token_mean_nll
from fastalign.losses.preference import LOSS_TYPES, dpo_loss
from fastalign.losses.reference_free import cpo_loss, orpo_loss, simpo_loss


class _PairedLayer(FusedLayerBase):
    def _policy(self, weight, hidden, target, bias):
        check_layer_inputs(weight, hidden, target, paired=True)
        stats = self.stats(weight, hidden, target, bias)
        half = hidden.shape[0] // 2
        nll = token_mean_nll(stats.token_logps[:half], stats.lengths[:half])
        means = (mean_logits(hidden[:half], weight, bias), mean_logits(hidden[half:], weight, bias))
        return stats, half, nll, means

    def _nll_from(self, weight, hidden, nll_target, bias, half):
        """NLL on a separate target (e.g. prompt + answer) for the chosen rows."""
        if tuple(nll_target.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"nll_target shape {tuple(nll_target.shape)} must equal {tuple(hidden.shape[:2])}")
        stats = self.stats(weight, hidden[:half], nll_target[:half], bias)
        return token_mean_nll(stats.token_logps, stats.lengths)


class FusedLinearDPOLoss(_PairedLayer):
    """DPO (and every ``dpo_loss`` loss type) on top of the fused linear log-prob op.

    Liger-compatible: ``loss = alpha * NLL(chosen) * compute_nll_loss + preference loss`` and
    ``forward`` returns ``(loss, (chosen_logps, rejected_logps, chosen_logits_mean,
    rejected_logits_mean, nll_loss, chosen_rewards, rejected_rewards))``. Extra keywords:
    ``impl``; any further ``dpo_loss`` option (``f_divergence_type``, ``loss_weights``, ...)
    via ``dpo_kwargs``; in ``forward``, ``ref_logps=(ref_chosen, ref_rejected)`` for
    precomputed reference log-probs, ``pair_weights`` and ``num_pairs``. The reference runs
    under ``torch.no_grad`` through the forward-only path.
    """

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0,
                 compute_nll_loss: bool = False, compiled: bool = True, use_ref_model: bool = True,
                 average_log_prob: bool = False, chunk_size: int = 1,
                 loss_type: str | Sequence[str] = "sigmoid", label_smoothing: float = 0.0,
                 discopop_tau: float = 0.05, *, impl: str = "auto", **dpo_kwargs):
        super().__init__(ignore_index, impl)
        loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        unknown = [t for t in loss_types if t not in LOSS_TYPES]
        if unknown:
            raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {unknown[0]!r}")
        self.beta, self.alpha, self.compute_nll_loss = beta, alpha, compute_nll_loss
        self.use_ref_model, self.average_log_prob = use_ref_model, average_log_prob
        self.loss_type, self.label_smoothing, self.discopop_tau = loss_type, label_smoothing, discopop_tau
        self.dpo_kwargs = dpo_kwargs
        self.compiled, self.chunk_size = compiled, chunk_size

    def _reference(self, ref_input, ref_weight, ref_bias, target, ref_logps):
        if ref_logps is not None:
            chosen, rejected = ref_logps if isinstance(ref_logps, (tuple, list)) else ref_logps.chunk(2)
            return chosen.detach(), rejected.detach()
        if not self.use_ref_model:
            return None, None
        if ref_input is None or ref_weight is None:
            raise ValueError("use_ref_model=True needs ref_input and ref_weight (or pass ref_logps=)")
        check_layer_inputs(ref_weight, ref_input, target, paired=True, names=("ref_weight", "ref_input", "target"))
        with torch.no_grad():
            stats = self.stats(ref_weight, ref_input, target, ref_bias)
        return stats.row_logps(self.average_log_prob).chunk(2)

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None,
                *, ref_logps=None, pair_weights=None, num_pairs=None):
        stats, half, nll, (chosen_mean, rejected_mean) = self._policy(lin_weight, _input, target, bias)
        logps = stats.row_logps(self.average_log_prob)
        ref_chosen, ref_rejected = self._reference(ref_input, ref_weight, ref_bias, target, ref_logps)
        out = dpo_loss(
            logps[:half], logps[half:], ref_chosen, ref_rejected,
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
            discopop_tau=self.discopop_tau, chosen_lengths=stats.lengths[:half],
            rejected_lengths=stats.lengths[half:], pair_weights=pair_weights, num_pairs=num_pairs,
            **self.dpo_kwargs,
        )
        nll_loss = nll if self.compute_nll_loss else torch.zeros_like(nll)
        loss = self.alpha * nll_loss + out.loss
        return loss, (logps[:half].detach(), logps[half:].detach(), chosen_mean, rejected_mean,
                      nll_loss.detach(), out.chosen_rewards, out.rejected_rewards)


class FusedLinearSimPOLoss(_PairedLayer):
    """SimPO with Liger's ``LigerFusedLinearSimPOLoss`` interface (length-averaged log-probs;
    ``loss = alpha * NLL * compute_nll_loss + SimPO``; ``x = β(a_c - a_r) - γ``)."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0,
                 label_smoothing: float = 0.0, compute_nll_loss: bool = True, compiled: bool = True,
                 gamma: float = 0.5, chunk_size: int = 1, *, impl: str = "auto"):
        super().__init__(ignore_index, impl)
        self.beta, self.alpha, self.label_smoothing = beta, alpha, label_smoothing
        self.compute_nll_loss, self.gamma = compute_nll_loss, gamma
        self.compiled, self.chunk_size = compiled, chunk_size

    def forward(self, lin_weight, _input, target, bias=None, *, num_pairs=None):
        stats, half, nll, (chosen_mean, rejected_mean) = self._policy(lin_weight, _input, target, bias)
        out = simpo_loss(stats.sums[:half], stats.sums[half:], stats.lengths[:half], stats.lengths[half:],
                         beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing,
                         num_pairs=num_pairs)
        nll_loss = nll if self.compute_nll_loss else torch.zeros_like(nll)
        averaged = stats.row_logps(average=True).detach()
        return self.alpha * nll_loss + out.loss, (
            averaged[:half], averaged[half:], chosen_mean, rejected_mean, nll_loss.detach(),
            out.chosen_rewards, out.rejected_rewards,
        )


class FusedLinearCPOLoss(_PairedLayer):
    """CPO with Liger's ``LigerFusedLinearCPOLoss`` interface (summed log-probs by default;
    ``loss = alpha * NLL * compute_nll_loss + mean((1-ε)(-log σ(βd)) + ε(-log σ(-βd)))``)."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0,
                 label_smoothing: float = 0.0, compute_nll_loss: bool = True, compiled: bool = True,
                 average_log_prob: bool = False, chunk_size: int = 1, *, impl: str = "auto",
                 loss_type: str = "sigmoid"):
        super().__init__(ignore_index, impl)
        self.beta, self.alpha, self.label_smoothing = beta, alpha, label_smoothing
        self.compute_nll_loss, self.average_log_prob, self.loss_type = compute_nll_loss, average_log_prob, loss_type
        self.compiled, self.chunk_size = compiled, chunk_size

    def forward(self, lin_weight, _input, target, bias=None, *, num_pairs=None):
        stats, half, nll, (chosen_mean, rejected_mean) = self._policy(lin_weight, _input, target, bias)
        logps = stats.row_logps(self.average_log_prob)
        out = cpo_loss(logps[:half], logps[half:], beta=self.beta, alpha=0.0,
                       label_smoothing=self.label_smoothing, loss_type=self.loss_type, num_pairs=num_pairs)
        nll_loss = nll if self.compute_nll_loss else torch.zeros_like(nll)
        return self.alpha * nll_loss + out.loss, (
            logps[:half].detach(), logps[half:].detach(), chosen_mean, rejected_mean, nll_loss.detach(),
            out.chosen_rewards, out.rejected_rewards,
        )


class FusedLinearORPOLoss(_PairedLayer):
    """ORPO with Liger's ``LigerFusedLinearORPOLoss`` interface; returns Liger's extra
    ``log_odds_ratio`` and ``log_odds_chosen`` after the rewards. ``nll_target`` scores the NLL
    term on another target (e.g. prompt and answer)."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, compute_nll_loss: bool = True,
                 compiled: bool = True, chunk_size: int = 1, *, impl: str = "auto"):
        super().__init__(ignore_index, impl)
        self.beta, self.compute_nll_loss = beta, compute_nll_loss
        self.compiled, self.chunk_size = compiled, chunk_size

    def forward(self, lin_weight, _input, target, bias=None, nll_target=None, *, num_pairs=None):
        stats, half, nll, (chosen_mean, rejected_mean) = self._policy(lin_weight, _input, target, bias)
        if nll_target is not None:
            nll = self._nll_from(lin_weight, _input, nll_target, bias, half)
        out = orpo_loss(stats.sums[:half], stats.sums[half:], stats.lengths[:half], stats.lengths[half:],
                        beta=self.beta, num_pairs=num_pairs)
        # orpo_loss's per-pair values include the chosen NLL; keep only the odds-ratio term.
        odds_term = (out.losses - out.nll_loss).sum() / normalizer(
            "num_pairs", num_pairs, out.losses.new_tensor(float(half))
        )
        nll_loss = nll if self.compute_nll_loss else torch.zeros_like(nll)
        averaged = stats.row_logps(average=True).detach()
        return nll_loss + odds_term, (
            averaged[:half], averaged[half:], chosen_mean, rejected_mean, nll_loss.detach(),
            out.chosen_rewards, out.rejected_rewards, out.metrics["log_odds_ratio"], out.metrics["log_odds_chosen"],
        )
