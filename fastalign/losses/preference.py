"""The DPO family on sequence log-probs, with TRL 1.16 ``DPOTrainer`` semantics.

Inputs are per-sequence log-probs (token sums over the answer) of the policy and the
reference for the chosen and the rejected answer of each pair, all ``[B]`` floating point.
With ``Δ_c = log π(c) - log π_ref(c)``, ``Δ_r`` likewise, ``d = Δ_c - Δ_r`` and ``β = beta``:

==============  ============================================================  =========================
loss_type       per-pair loss                                                  paper
==============  ============================================================  =========================
sigmoid         -log σ(β d)  (+ cDPO label smoothing, see below)               DPO, 2305.18290
hinge           relu(1 - β d)                                                  SLiC, 2305.10425
ipo             (d̄ - 1/(2β))², d̄ = Δ_c/|c| - Δ_r/|r| (token-normalized)        IPO, 2310.12036
robust          ((1-ε)(-log σ(βd)) - ε(-log σ(-βd))) / (1 - 2ε)                rDPO, 2403.00409
exo_pair        σ(βd)(log σ(βd) - log(1-ε)) + σ(-βd)(log σ(-βd) - log ε)       EXO, 2402.00856
nca_pair        -log σ(βΔ_c) - ½ log σ(-βΔ_c) - ½ log σ(-βΔ_r)                 NCA, 2402.05369
bco_pair        -log σ(βΔ_c) - log σ(-βΔ_r)                                    BCO, 2404.04656
sppo_hard       (Δ_c - 1/(2β))² + (Δ_r + 1/(2β))²                              SPPO, 2405.00675
aot             sigmoid loss on sorted(log π(c)-log π(r)) - sorted(ref ...)    AOT, 2406.05882
aot_unpaired    sigmoid loss on sorted(Δ_c) - sorted(Δ_r)                      AOT, 2406.05882
apo_zero        (1 - σ(βΔ_c)) + σ(βΔ_r)                                        APO, 2408.06266
apo_down        σ(βΔ_c) + (1 - σ(β(Δ_c - Δ_r)))                                APO, 2408.06266
discopop        (1-m)(-log σ(βd)) + m e^{-βd}, m = σ(βd/τ)                     DiscoPOP, 2406.08414
sft             -Σ log π(c) / Σ |c|  (token-mean NLL of the chosen answers)    (RPO/MPO term)
sigmoid_norm    -log σ(β d̄)  (token-normalized d, like ipo)                    TRL
==============  ============================================================  =========================

``Δ`` may first go through an f-divergence (``f_divergence_type``: ``reverse_kl`` = plain,
``forward_kl``: 1 - e^{-Δ}, ``js_divergence``: log 2 + log σ(Δ), ``alpha_divergence``:
(e^{(α-1)Δ} - 1)/(α-1); f-PO, 2309.16240) — exactly as TRL, which applies it to the ``d`` of
every loss type except those built on ``Δ`` directly. Numerics: ``forward_kl`` is computed as
``-expm1(-Δ)``, and a ``Δ`` so negative that ``e^{-Δ}`` overflows (below about -88 in float32)
raises ``ValueError``, since the loss would be infinite; ``alpha_divergence`` keeps TRL's clamp
of the exponent (80 in float32, 11 in float16). DiscoPOP's ``e^{-βd} m`` is one exponential,
finite where the two factors are ``inf · 0``.

Where fastalign differs from TRL 1.16, on purpose: ``label_smoothing`` with
``loss_type="sigmoid"`` gives conservative DPO (cDPO, Mitchell 2023:
``(1-ε)(-log σ(βd)) + ε(-log σ(-βd))``); TRL 1.16 ignores it for sigmoid. With ε = 0 they agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastalign.choices import LOSS_TYPES  # torch-free: the CLI's help lists them too
from fastalign.losses._checks import (
    check_choice,
    check_lengths,
    check_logps,
    check_number,
    check_positive,
    check_range,
    check_weights,
    normalizer,
)
from fastalign.losses.outputs import PreferenceLossOutput, reward_summary

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
_NEEDS_LENGTHS = {"ipo": "both", "sigmoid_norm": "both", "sft": "chosen"}


def _forward_kl_scores(logratios: torch.Tensor, name: str) -> torch.Tensor:
    """``1 - e^{-Δ}``, computed as ``-expm1(-Δ)`` (exact near Δ = 0, where ``1 - exp`` cancels).

    For ``Δ`` below about -88 (float32; -709 in float64) ``e^{-Δ}`` is not representable and the
    loss would be infinite: that is refused, naming the log-ratio, rather than returned (one
    device sync, only with ``forward_kl``).
    """
    scores = -torch.expm1(-logratios)
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0])
        raise ValueError(
            f"f_divergence_type='forward_kl': the {name} log-ratio (policy - reference log-prob) of pair "
            f"{index} is {logratios[index].item():.6g}, and exp(-log-ratio) overflows {logratios.dtype}: the "
            "loss would be infinite (the policy is far from the reference; check the inputs, or use "
            "'reverse_kl' / 'js_divergence', which stay finite)"
        )
    return scores


def _f_divergence_scores(logratios: torch.Tensor, kind: str, alpha: float, name: str) -> torch.Tensor:
    """f'(e^Δ) of the chosen f-divergence (TRL's ``f_divergence_type``)."""
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return logratios
    if kind == "forward_kl":
        return _forward_kl_scores(logratios, name)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    clamp_max = {torch.float16: 11.0}.get(logratios.dtype, 80.0)
    scaled = torch.clamp(((alpha - 1.0) * logratios).float(), max=clamp_max)
    return (torch.exp(scaled) - 1.0).to(logratios.dtype) / (alpha - 1.0)


def _smoothed_sigmoid(x: torch.Tensor, eps: float) -> torch.Tensor:
    return -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


def _per_pair_loss(loss_type: str, p: dict) -> torch.Tensor:
    beta, eps = p["beta"], p["label_smoothing"]
    delta = p["chosen_scores"] - p["rejected_scores"]
    chosen_lr, rejected_lr = p["chosen_logratios"], p["rejected_logratios"]
    if loss_type == "sigmoid":
        return _smoothed_sigmoid(beta * delta, eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type in ("ipo", "sigmoid_norm"):
        chosen_len = p["chosen_lengths"].to(delta.dtype).clamp(min=1.0)
        rejected_len = p["rejected_lengths"].to(delta.dtype).clamp(min=1.0)
        normalized = p["chosen_scores"] / chosen_len - p["rejected_scores"] / rejected_len
        if loss_type == "ipo":
            return (normalized - 1 / (2 * beta)) ** 2
        return -F.logsigmoid(beta * normalized)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    if loss_type == "exo_pair":
        x = beta * delta
        return torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps)) + torch.sigmoid(-x) * (
            F.logsigmoid(-x) - math.log(eps)
        )
    if loss_type == "nca_pair":
        c, r = beta * chosen_lr, beta * rejected_lr
        return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_lr) - F.logsigmoid(-beta * rejected_lr)
    if loss_type == "sppo_hard":
        return (chosen_lr - 0.5 / beta) ** 2 + (rejected_lr + 0.5 / beta) ** 2
    if loss_type == "aot":
        policy_sorted, _ = torch.sort(p["policy_chosen"] - p["policy_rejected"], dim=0)
        ref_sorted, _ = torch.sort(p["ref_chosen"] - p["ref_rejected"], dim=0)
        return _smoothed_sigmoid(beta * (policy_sorted - ref_sorted), eps)
    if loss_type == "aot_unpaired":
        chosen_sorted, _ = torch.sort(chosen_lr, dim=0)
        rejected_sorted, _ = torch.sort(rejected_lr, dim=0)
        return _smoothed_sigmoid(beta * (chosen_sorted - rejected_sorted), eps)
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_lr)) + torch.sigmoid(beta * rejected_lr)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen_lr) + (1 - torch.sigmoid(beta * (chosen_lr - rejected_lr)))
    if loss_type == "discopop":
        x = beta * delta
        tau = p["discopop_tau"]
        # e^{-x} σ(x/τ) as one exponential: for x << 0 the product is inf · 0 = NaN in two parts.
        return -F.logsigmoid(x) * torch.sigmoid(-x / tau) + torch.exp(F.logsigmoid(x / tau) - x)
    if loss_type == "sft":
        return p["chosen_nll"].expand(delta.shape[0])
    raise AssertionError(loss_type)  # unreachable: validated before


def chosen_nll(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor,
               num_tokens: float | torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean NLL of the chosen answers: ``-Σ_i log π(c_i) / Σ_i |c_i|`` (0 if no tokens)."""
    total = chosen_lengths.to(policy_chosen_logps.dtype).sum().clamp(min=1.0)
    return -policy_chosen_logps.sum() / normalizer("num_tokens", num_tokens, total)


def _loss_types(loss_type: str | Sequence[str]) -> list[str]:
    if isinstance(loss_type, str):
        return [loss_type]
    if not isinstance(loss_type, Sequence):
        raise ValueError(f"loss_type must be a string or a list of them, got {type(loss_type).__name__}")
    if not loss_type:
        raise ValueError("loss_type must name at least one loss")
    return list(loss_type)


def _validate(loss_types, beta, label_smoothing, f_divergence_type, discopop_tau):
    check_positive("beta", beta)
    check_choice("f_divergence_type", f_divergence_type, F_DIVERGENCES)
    check_positive("discopop_tau", discopop_tau)
    for loss_type in loss_types:
        check_choice("loss_type", loss_type, LOSS_TYPES)
    if "robust" in loss_types:
        check_range("label_smoothing", label_smoothing, 0.0, 0.5)
    elif "exo_pair" in loss_types:
        check_range("label_smoothing", label_smoothing, 0.0, 1.0, low_open=True)
    else:
        check_range("label_smoothing", label_smoothing, 0.0, 1.0)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    discopop_tau: float = 0.05,
    rpo_alpha: float | None = None,
    pair_weights: torch.Tensor | None = None,
    num_pairs: float | torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """DPO-family loss of a batch of preference pairs (see the module docstring for formulas).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` summed answer log-probs of the policy.
        ref_chosen_logps, ref_rejected_logps: ``[B]`` of the frozen reference; ``None`` means
            reference-free (zeros), as TRL's ``reference_free=True``.
        beta: ``β > 0``.
        loss_type: one of ``LOSS_TYPES``, or several (MPO, 2411.10442) combined with
            ``loss_weights``: a list of finite numbers >= 0, one per loss type (default 1 each).
        label_smoothing: ``ε``: robust (in [0, 0.5)), exo_pair (in (0, 1)), aot, and cDPO for sigmoid.
        chosen_lengths, rejected_lengths: ``[B]`` answer token counts; required by ``ipo``,
            ``sigmoid_norm`` (both) and ``sft``/``rpo_alpha`` (chosen).
        f_divergence_type, f_alpha_divergence_coef: see the module docstring (α: a finite number).
        discopop_tau: DiscoPOP's τ.
        rpo_alpha: adds ``rpo_alpha * NLL(chosen)`` (RPO, 2404.19733) — the same as adding
            ``"sft"`` to ``loss_type`` with that weight.
        pair_weights: ``[B]`` per-pair weights (WPO, 2406.11827: ``exp`` of the mean aligned
            token log-prob of each answer, multiplied for the pair — detach them yourself).
        num_pairs: divide the summed per-pair loss by this (the global pair count of the
            optimizer step under accumulation / data parallel) instead of taking the mean; a
            finite number > 0 or a one-element tensor holding one.

    Returns:
        ``PreferenceLossOutput`` with per-pair ``losses`` (weighted sum over loss types),
        rewards ``β Δ`` (detached), margins, accuracies and ``nll_loss`` when an NLL term is used.
    """
    loss_types = _loss_types(loss_type)
    _validate(loss_types, beta, label_smoothing, f_divergence_type, discopop_tau)
    weights = [1.0] * len(loss_types) if loss_weights is None else check_weights("loss_weights", loss_weights,
                                                                                len(loss_types))
    alpha = check_number("f_alpha_divergence_coef", f_alpha_divergence_coef)
    if rpo_alpha is not None:
        check_positive("rpo_alpha", rpo_alpha)
    check_logps(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
        pair_weights=pair_weights,
    )
    if (ref_chosen_logps is None) != (ref_rejected_logps is None):
        raise ValueError("ref_chosen_logps and ref_rejected_logps must both be given or both be None")
    batch = policy_chosen_logps.shape[0]
    needs = {_NEEDS_LENGTHS[t] for t in loss_types if t in _NEEDS_LENGTHS}
    if rpo_alpha is not None:
        needs.add("chosen")
    why = ", ".join(t for t in loss_types if t in _NEEDS_LENGTHS) or "rpo_alpha"
    check_lengths("chosen_lengths", chosen_lengths, batch, why if needs else None)
    check_lengths("rejected_lengths", rejected_lengths, batch, why if "both" in needs else None)

    zeros = torch.zeros_like(policy_chosen_logps)
    ref_chosen = ref_chosen_logps if ref_chosen_logps is not None else zeros
    ref_rejected = ref_rejected_logps if ref_rejected_logps is not None else zeros
    chosen_logratios = policy_chosen_logps - ref_chosen
    rejected_logratios = policy_rejected_logps - ref_rejected
    nll = chosen_nll(policy_chosen_logps, chosen_lengths) if chosen_lengths is not None else None
    parts = dict(
        beta=beta, label_smoothing=label_smoothing, discopop_tau=discopop_tau,
        chosen_logratios=chosen_logratios, rejected_logratios=rejected_logratios,
        chosen_scores=_f_divergence_scores(chosen_logratios, f_divergence_type, alpha, "chosen"),
        rejected_scores=_f_divergence_scores(rejected_logratios, f_divergence_type, alpha, "rejected"),
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, chosen_nll=nll,
        policy_chosen=policy_chosen_logps, policy_rejected=policy_rejected_logps,
        ref_chosen=ref_chosen, ref_rejected=ref_rejected,
    )
    losses = zeros
    for name, weight in zip(loss_types, weights):
        per_pair = _per_pair_loss(name, parts)
        if pair_weights is not None:
            per_pair = per_pair * pair_weights
        losses = losses + weight * per_pair
    if rpo_alpha is not None:
        losses = losses + rpo_alpha * nll
    loss = losses.sum() / normalizer("num_pairs", num_pairs, zeros.new_tensor(float(max(batch, 1))))
    return PreferenceLossOutput(
        loss=loss, losses=losses,
        nll_loss=nll if ("sft" in loss_types or rpo_alpha is not None) else None,
        **reward_summary(beta * chosen_logratios, beta * rejected_logratios),
    )
