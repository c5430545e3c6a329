"""SimPO, CPO, ORPO, KTO, Bradley–Terry and SFT: paper formulas, TRL 1.16, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from fastalign.losses import (
    bradley_terry_loss,
    cpo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_loss,
    sft_loss,
    simpo_loss,
)
from tests.losses import trl_stubs
from tests.losses.test_preference import log_sigmoid, make_batch, sigmoid


def _pairs(seed=0):
    data = make_batch(seed=seed)
    return data, data["pc"].tolist(), data["pr"].tolist(), data["lc"].tolist(), data["lr"].tolist()


def test_simpo_paper_and_trl():
    data, pc, pr, lc, lr = _pairs()
    beta, gamma, eps = 2.0, 1.0, 0.1
    expected = sum(
        -(1 - eps) * log_sigmoid(beta * (c / a) - beta * (r / b) - gamma)
        - eps * log_sigmoid(-(beta * (c / a) - beta * (r / b) - gamma))
        for c, r, a, b in zip(pc, pr, lc, lr)
    ) / len(pc)
    out = simpo_loss(data["pc"], data["pr"], data["lc"], data["lr"], beta=beta, gamma=gamma, label_smoothing=eps)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    trl_losses, trl_chosen, _ = trl_stubs.trl_cpo_losses(
        data["pc"] / data["lc"], data["pr"] / data["lr"], beta=beta, loss_type="simpo",
        label_smoothing=eps, simpo_gamma=gamma,
    )
    torch.testing.assert_close(out.losses, trl_losses)
    torch.testing.assert_close(out.chosen_rewards, trl_chosen)
    # Twin: without length normalization the value differs.
    assert out.loss.item() != pytest.approx(
        simpo_loss(data["pc"], data["pr"], torch.ones_like(data["lc"]), torch.ones_like(data["lr"]),
                   beta=beta, gamma=gamma, label_smoothing=eps).loss.item(), rel=1e-3)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_cpo_paper_and_trl(loss_type):
    data, pc, pr, lc, _ = _pairs(1)
    beta, alpha = 0.5, 0.7
    nll = -sum(pc) / sum(lc)
    per_pair = {
        "sigmoid": lambda d: -log_sigmoid(beta * d),
        "hinge": lambda d: max(0.0, 1 - beta * d),
        "ipo": lambda d: (d - 1 / (2 * beta)) ** 2,
    }[loss_type]
    expected = sum(per_pair(c - r) for c, r in zip(pc, pr)) / len(pc) + alpha * nll
    out = cpo_loss(data["pc"], data["pr"], data["lc"], beta=beta, alpha=alpha, loss_type=loss_type)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    trl_losses, _, _ = trl_stubs.trl_cpo_losses(data["pc"], data["pr"], beta=beta, loss_type=loss_type)
    assert out.loss.item() == pytest.approx(trl_losses.mean().item() + alpha * nll, rel=1e-10)
    assert out.nll_loss.item() == pytest.approx(nll)


def test_orpo_paper_and_trl():
    data, pc, pr, lc, lr = _pairs(2)
    beta = 0.25

    def log_odds(avg):
        return avg - math.log(1 - math.exp(avg))

    nll = -sum(pc) / sum(lc)
    ratios = [log_sigmoid(log_odds(c / a) - log_odds(r / b)) for c, r, a, b in zip(pc, pr, lc, lr)]
    expected = nll - beta * sum(ratios) / len(ratios)
    out = orpo_loss(data["pc"], data["pr"], data["lc"], data["lr"], beta=beta)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    trl_losses, trl_chosen, _, trl_ratio, trl_log_odds = trl_stubs.trl_orpo_losses(
        data["pc"] / data["lc"], data["pr"] / data["lr"], beta=beta
    )
    assert out.loss.item() == pytest.approx(nll - trl_losses.mean().item(), rel=1e-6)  # TRL casts to fp32
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(trl_ratio.item(), rel=1e-6)
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(trl_log_odds.item(), rel=1e-6)


def test_orpo_stable_near_probability_one():
    """log(1 - e^a) with a -> 0- (a confident answer) stays finite with finite gradients."""
    chosen = torch.tensor([-1e-9, -0.5], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0, -2.0], dtype=torch.float64)
    ones = torch.ones(2, dtype=torch.float64)
    out = orpo_loss(chosen, rejected, ones, ones)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(chosen.grad).all()


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_paper_and_trl(loss_type):
    gen = torch.Generator().manual_seed(3)
    data = make_batch(batch=4, seed=3)
    per_token = data["per_token"]  # 8 unpaired examples
    sums = per_token.sum(1)
    ref = sums + torch.randn(8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    kl_tokens = -torch.rand(per_token.shape, generator=gen, dtype=torch.float64) * data["completion"][:, 1:]
    ref_kl = kl_tokens.sum(1) - torch.rand(8, generator=gen, dtype=torch.float64)
    beta, wd, wu = 0.3, 1.0, 1.5
    trl_loss, metrics = trl_stubs.trl_kto_loss(per_token, data["completion"], labels, ref, kl_tokens, ref_kl,
                                               beta=beta, desirable_weight=wd, undesirable_weight=wu,
                                               loss_type=loss_type)
    kl = kto_kl_estimate(kl_tokens.sum(1), ref_kl) if loss_type == "kto" else None
    out = kto_loss(sums, ref, labels, kl=kl, beta=beta, desirable_weight=wd, undesirable_weight=wu,
                   loss_type=loss_type)
    assert out.loss.item() == pytest.approx(trl_loss.item(), rel=1e-10)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], rel=1e-9)
    z = max(0.0, (kl_tokens.sum(1) - ref_kl).mean().item()) if loss_type == "kto" else 0.0
    expected = []
    for logp, r, good in zip(sums.tolist(), ref.tolist(), labels.tolist()):
        d = logp - r
        if loss_type == "kto":
            expected.append(wd * (1 - sigmoid(beta * (d - z))) if good else wu * (1 - sigmoid(beta * (z - d))))
        else:
            expected.append(wd * (1 - sigmoid(beta * d)) if good else wu * sigmoid(beta * d))
    assert out.loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)
    flipped = kto_loss(sums, ref, ~labels, kl=kl, beta=beta, desirable_weight=wd, undesirable_weight=wu,
                       loss_type=loss_type)
    assert flipped.loss.item() != pytest.approx(out.loss.item(), rel=1e-6)


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, 0.01)])
def test_bradley_terry_against_trl(with_margin, center):
    gen = torch.Generator().manual_seed(4)
    chosen, rejected = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    margin = torch.rand(6, generator=gen, dtype=torch.float64) if with_margin else None
    ours = bradley_terry_loss(chosen, rejected, margin=margin, center_rewards_coefficient=center)
    trl = trl_stubs.trl_reward_loss(chosen, rejected, margin=margin, center_rewards_coefficient=center)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-12)
    expected = sum(-log_sigmoid(c - r - (m if with_margin else 0.0)) + (center or 0.0) * (c + r) ** 2
                   for c, r, m in zip(chosen.tolist(), rejected.tolist(), (margin if with_margin else chosen).tolist()))
    assert ours.item() == pytest.approx(expected / 6, rel=1e-12)
    assert bradley_terry_loss(rejected, chosen).item() != pytest.approx(ours.item(), rel=1e-6)


def test_sft_token_mean_and_global_count():
    logps = -torch.rand(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    expected = -sum(logps[i, j].item() for i in range(3) for j in range(5) if mask[i, j]) / 7
    assert sft_loss(logps, mask).item() == pytest.approx(expected)
    assert sft_loss(logps, mask, num_tokens=14).item() == pytest.approx(expected / 2)
    assert sft_loss(logps, torch.zeros_like(mask)).item() == 0.0


def test_gradchecks():
    data = make_batch(batch=3, seed=5)
    pc, pr = data["pc"].clone().requires_grad_(), data["pr"].clone().requires_grad_()
    lc, lr = data["lc"], data["lr"]
    assert torch.autograd.gradcheck(lambda a, b: simpo_loss(a, b, lc, lr).loss, (pc, pr))
    assert torch.autograd.gradcheck(lambda a, b: cpo_loss(a, b, lc).loss, (pc, pr))
    assert torch.autograd.gradcheck(lambda a, b: orpo_loss(a, b, lc, lr).loss, (pc, pr))
    labels = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda a, b: kto_loss(a, b, labels, kl=0.1).loss, (pc, pr))
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, center_rewards_coefficient=0.1), (pc, pr))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda d: simpo_loss(d["pc"], d["pr"], None, d["lr"]), "chosen_lengths is required"),
        (lambda d: simpo_loss(d["pc"], d["pr"], d["lc"], d["lr"], beta=0), "beta"),
        (lambda d: simpo_loss(d["pc"], d["pr"], d["lc"], d["lr"], loss_type="ipo"), "loss_type"),
        (lambda d: cpo_loss(d["pc"], d["pr"]), "chosen_lengths is required"),
        (lambda d: orpo_loss(d["pc"], d["pr"][:2], d["lc"], d["lr"]), "batch sizes differ"),
        (lambda d: kto_loss(d["pc"], d["pr"], torch.ones(2, dtype=torch.bool)), "desirable"),
        (lambda d: kto_loss(d["pc"], d["pr"], d["pc"] > -1, loss_type="bco"), "loss_type"),
        (lambda d: bradley_terry_loss(d["pc"], d["pr"] * float("inf")), "non-finite"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_batch())
