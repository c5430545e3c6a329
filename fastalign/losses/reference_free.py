"""Reference-free preference losses: SimPO, CPO, ORPO (no reference model in memory).

Inputs are per-sequence summed answer log-probs ``[B]`` plus answer token counts where a
length normalization or an NLL term needs them. Semantics follow TRL 1.16's experimental
``CPOTrainer`` (``cpo``, ``simpo``) and ``ORPOTrainer``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastalign.losses._checks import check_choice, check_lengths, check_logps, check_positive, check_range, normalizer
from fastalign.losses.outputs import PreferenceLossOutput, reward_summary
from fastalign.losses.preference import chosen_nll

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def _mean(losses: torch.Tensor, num_pairs) -> torch.Tensor:
    return losses.sum() / normalizer("num_pairs", num_pairs, losses.new_tensor(float(max(losses.shape[0], 1))))


def _average(logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return logps / lengths.to(logps.dtype).clamp(min=1.0)


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    sft_weight: float = 0.0,
    num_pairs: float | torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """SimPO (Meng et al. 2024, 2405.14734): length-normalized rewards with a target margin.

    ``x = β (log π(c)/|c| - log π(r)/|r|) - γ``; loss ``-log σ(x)`` (``(1-ε)(-log σ(x)) +
    ε(-log σ(-x))`` with label smoothing ε; TRL's ``CPOTrainer(loss_type="simpo")``) or
    ``relu(1 - x)`` (``loss_type="hinge"``, a fastalign extension). ``sft_weight`` adds the chosen token-mean NLL
    (CPO-SimPO). Defaults are the paper's (β=2, γ=1 i.e. γ/β=0.5); TRL's ``simpo_gamma`` is γ.
    Rewards are ``β log π / |y|``.
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    batch = policy_chosen_logps.shape[0]
    check_lengths("chosen_lengths", chosen_lengths, batch, "simpo")
    check_lengths("rejected_lengths", rejected_lengths, batch, "simpo")
    check_positive("beta", beta)
    check_range("gamma", gamma, 0.0, float("inf"))
    check_range("label_smoothing", label_smoothing, 0.0, 0.5)
    check_choice("loss_type", loss_type, ("sigmoid", "hinge"))
    check_range("sft_weight", sft_weight, 0.0, float("inf"))
    chosen_avg = _average(policy_chosen_logps, chosen_lengths)
    rejected_avg = _average(policy_rejected_logps, rejected_lengths)
    x = beta * (chosen_avg - rejected_avg) - gamma
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(x) * (1 - label_smoothing) - F.logsigmoid(-x) * label_smoothing
    else:
        losses = torch.relu(1 - x)
    nll = None
    if sft_weight > 0:
        nll = chosen_nll(policy_chosen_logps, chosen_lengths)
        losses = losses + sft_weight * nll
    return PreferenceLossOutput(
        loss=_mean(losses, num_pairs), losses=losses, nll_loss=nll,
        **reward_summary(beta * chosen_avg, beta * rejected_avg),
    )


def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    num_pairs: float | torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """CPO (Xu et al. 2024, 2401.08417): DPO without the reference, plus a behavior-cloning NLL.

    ``d = log π(c) - log π(r)``; ``sigmoid``: ``(1-ε)(-log σ(βd)) + ε(-log σ(-βd))``,
    ``hinge``: ``relu(1 - βd)``, ``ipo``: ``(d - 1/(2β))²``; plus ``alpha * NLL(chosen)``
    (token mean; needs ``chosen_lengths`` when ``alpha > 0``). TRL adds the NLL to the mean loss;
    here it is added per pair, which gives the same mean. Rewards are ``β log π``.
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    check_positive("beta", beta)
    check_range("alpha", alpha, 0.0, float("inf"))
    check_range("label_smoothing", label_smoothing, 0.0, 0.5)
    check_choice("loss_type", loss_type, CPO_LOSS_TYPES)
    batch = policy_chosen_logps.shape[0]
    check_lengths("chosen_lengths", chosen_lengths, batch, "the NLL term (alpha > 0)" if alpha > 0 else None)
    d = policy_chosen_logps - policy_rejected_logps
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * d) * (1 - label_smoothing) - F.logsigmoid(-beta * d) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * d)
    else:
        losses = (d - 1 / (2 * beta)) ** 2
    nll = None
    if alpha > 0:
        nll = chosen_nll(policy_chosen_logps, chosen_lengths)
        losses = losses + alpha * nll
    return PreferenceLossOutput(
        loss=_mean(losses, num_pairs), losses=losses, nll_loss=nll,
        **reward_summary(beta * policy_chosen_logps, beta * policy_rejected_logps),
    )


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - e^x)`` for ``x < 0``, stable at both ends (Mächler 2012).

    ``x`` is first capped at ``-tiny`` (the dtype's smallest normal number): at ``x = 0`` (a
    probability that rounds to 1) the value would be ``-inf`` and its gradient NaN; capped, it
    is ``log(tiny)`` (about -87 in float32) and no gradient flows through the cap. (The true
    gradient there is unbounded for a rejected answer; a bounded one is what training needs.)
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -0.6931471805599453
    # Each branch sees only the inputs it is right for (-1 elsewhere): torch.where passes a 0
    # gradient to the branch it did not pick, and 0 · inf (log1p(-exp(x)) at x = -1e-30 in
    # float32) would be NaN.
    close = torch.log(-torch.expm1(torch.where(near_zero, x, -1.0)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x)))
    return torch.where(near_zero, close, far)


def _check_orpo_inputs(logps: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor]) -> None:
    """No empty answer and no positive log-prob (a probability above 1), in one device sync."""
    flags = torch.stack([(v == 0).any() for v in lengths.values()] + [(v > 0).any() for v in logps.values()])
    bad = flags.tolist()
    for (name, value), empty in zip(lengths.items(), bad):
        if empty:
            raise ValueError(f"{name}[{int((value == 0).nonzero()[0])}] is 0: ORPO's odds ratio is undefined for "
                             "an empty answer (drop the pair or keep at least one answer token)")
    for (name, value), positive in zip(logps.items(), bad[len(lengths):]):
        if positive:
            index = int((value > 0).nonzero()[0])
            raise ValueError(f"{name}[{index}] is {value[index].item():.6g} > 0: log-probabilities are <= 0 "
                             "(ORPO's odds of a probability above 1 are undefined; were logits or an NLL passed?)")


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    num_pairs: float | torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """ORPO (Hong et al. 2024, 2403.07691): NLL of the chosen answer minus β · log σ(log odds ratio).

    With length-averaged log-probs ``a_c = log π(c)/|c|``, ``a_r`` likewise:
    ``log OR = (a_c - a_r) - (log(1 - e^{a_c}) - log(1 - e^{a_r}))``; per pair
    ``NLL(chosen) - β log σ(log OR)`` (TRL 1.16's ``ORPOTrainer``; β is the paper's λ).
    Rewards are ``β a``; ``metrics`` has ``log_odds_ratio`` (mean log σ(log OR)) and
    ``log_odds_chosen`` (mean log OR).

    Edge cases: an empty answer (0 scored tokens, e.g. truncated away) has probability 1 and
    infinite odds, and a positive log-prob is no log-probability: both raise ``ValueError``.
    An average log-prob of exactly 0 (every token's probability rounds to 1) has its odds
    capped at ``1/tiny`` of the dtype (see ``_log1mexp``), so the loss and gradients stay
    finite: about 0 for such a chosen answer (the exact limit), about ``β · 87`` (float32) for
    such a rejected one.
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    batch = policy_chosen_logps.shape[0]
    check_lengths("chosen_lengths", chosen_lengths, batch, "orpo")
    check_lengths("rejected_lengths", rejected_lengths, batch, "orpo")
    _check_orpo_inputs(
        dict(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps),
        dict(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths),
    )
    check_positive("beta", beta)
    chosen_avg = _average(policy_chosen_logps, chosen_lengths)
    rejected_avg = _average(policy_rejected_logps, rejected_lengths)
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    ratio = F.logsigmoid(log_odds)
    nll = chosen_nll(policy_chosen_logps, chosen_lengths)
    losses = nll - beta * ratio
    return PreferenceLossOutput(
        loss=_mean(losses, num_pairs), losses=losses, nll_loss=nll,
        metrics=dict(log_odds_ratio=ratio.detach().mean(), log_odds_chosen=log_odds.detach().mean()),
        **reward_summary(beta * chosen_avg, beta * rejected_avg),
    )
