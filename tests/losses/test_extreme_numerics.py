"""Losses at the edges of their inputs' range, against a high-precision reference (mpmath)
of the formula as the paper writes it: ORPO near probability 1, forward-KL DPO at small and
large log-ratios, DiscoPOP at very negative margins (issue 15)."""

from __future__ import annotations

import mpmath
import pytest
import torch

from fastalign.losses import dpo_loss, orpo_loss

mpmath.mp.dps = 50
BETA = 0.1


def _log_sigmoid(x):
    return -mpmath.log1p(mpmath.exp(-x))


def _orpo_reference(chosen_avg: list, rejected_avg: list, beta: float):
    """ORPO with unit lengths (so the average is the log-prob): NLL - β mean log σ(log OR)."""
    def log_odds(a):
        return mpmath.mpf(a) - mpmath.log(-mpmath.expm1(mpmath.mpf(a)))

    ratios = [_log_sigmoid(log_odds(c) - log_odds(r)) for c, r in zip(chosen_avg, rejected_avg)]
    nll = -sum(mpmath.mpf(c) for c in chosen_avg) / len(chosen_avg)
    return nll - beta * sum(ratios) / len(ratios)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chosen", [-1e-30, -1e-12, -1e-7, -0.3, -20.0])
def test_orpo_near_probability_one_matches_the_reference(dtype, chosen):
    # float32 average log-probs in (-6e-8, 0) used to give a NaN gradient (0 · inf in a branch
    # torch.where did not pick) although the loss itself is finite.
    chosen_avg = torch.tensor([chosen, -0.5], dtype=dtype, requires_grad=True)
    rejected_avg = [-3.0, -2.0]
    ones = torch.ones(2, dtype=dtype)
    out = orpo_loss(chosen_avg, torch.tensor(rejected_avg, dtype=dtype), ones, ones, beta=BETA)
    (grad,) = torch.autograd.grad(out.loss, chosen_avg)
    a = mpmath.mpf(chosen_avg[0].item())  # the value the loss saw, in its dtype
    expected = float(_orpo_reference([a, -0.5], rejected_avg, BETA))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-12)
    # d/da of the odds term tends to a finite limit as a -> 0 (the (1 - p) factors cancel).
    step = abs(a) * mpmath.mpf(10) ** -10  # central differences: error ~ (step / a)²
    numeric = (_orpo_reference([a + step, -0.5], rejected_avg, BETA)
               - _orpo_reference([a - step, -0.5], rejected_avg, BETA)) / (2 * step)
    assert grad[0].item() == pytest.approx(float(numeric), rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_probability_exactly_one_is_finite(dtype):
    ones = torch.ones(2, dtype=dtype)
    chosen = torch.tensor([0.0, -0.5], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-3.0, 0.0], dtype=dtype, requires_grad=True)
    out = orpo_loss(chosen, rejected, ones, ones, beta=BETA)
    out.loss.backward()
    for value in (out.losses, chosen.grad, rejected.grad):
        assert torch.isfinite(value).all()
    # A chosen answer of probability 1: log σ(log OR) is 0 in the limit, so the pair's loss is its NLL.
    nll = out.nll_loss.item()
    assert out.losses[0].item() == pytest.approx(nll, abs=1e-30)
    # A rejected answer of probability 1: infinite odds capped at 1/tiny, a large finite penalty.
    cap = -torch.log(torch.tensor(torch.finfo(dtype).tiny, dtype=torch.float64)).item()
    log_odds = -0.5 - _log1mexp_float(-0.5) - cap  # a_c - a_r - (log(1 - e^{a_c}) - log(tiny))
    assert out.losses[1].item() == pytest.approx(nll - BETA * float(_log_sigmoid(log_odds)), rel=1e-5)


def _log1mexp_float(a: float) -> float:
    return float(mpmath.log(-mpmath.expm1(a)))


def _forward_kl_sigmoid_reference(dc: list[float], dr: list[float], beta: float) -> float:
    losses = [-_log_sigmoid(beta * ((1 - mpmath.exp(-mpmath.mpf(c))) - (1 - mpmath.exp(-mpmath.mpf(r)))))
              for c, r in zip(dc, dr)]
    return float(sum(losses) / len(losses))


@pytest.mark.parametrize(
    "chosen,rejected,beta",
    [([1e-6, 2e-7], [-1e-6, 3e-7], 1e5),  # 1 - e^{-Δ} cancels in float32; -expm1(-Δ) does not
     ([-80.0, 0.5], [-79.0, 1.0], 1e-30),  # e^{80} ~ 5e34: large but finite in float32
     ([3.0, -2.0], [1.0, -0.25], 0.3)],
)
def test_forward_kl_matches_the_reference(chosen, rejected, beta):
    zeros = torch.zeros(2)
    out = dpo_loss(torch.tensor(chosen), torch.tensor(rejected), zeros, zeros, beta=beta,
                   f_divergence_type="forward_kl")
    assert out.loss.item() == pytest.approx(_forward_kl_sigmoid_reference(chosen, rejected, beta), rel=2e-6)


def test_forward_kl_overflow_is_refused_not_infinite():
    zeros = torch.zeros(1)
    # -88 is the last float32 log-ratio whose e^{-Δ} is finite: accepted; -89 overflows: refused.
    finite = dpo_loss(torch.tensor([-88.0]), torch.tensor([0.0]), zeros, zeros, beta=1e-30,
                      f_divergence_type="forward_kl")
    assert torch.isfinite(finite.loss)
    with pytest.raises(ValueError, match=r"chosen log-ratio .* of pair 0 is -89, and exp\(-log-ratio\) overflows"):
        dpo_loss(torch.tensor([-89.0]), torch.tensor([0.0]), zeros, zeros, f_divergence_type="forward_kl")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [-2000.0, -100.0, -1.0, 0.0, 3.0, 500.0])
def test_discopop_at_extreme_margins_matches_the_reference(dtype, margin):
    # DiscoPOP's e^{-x} σ(x/τ) was inf · 0 = NaN for x << 0 (e.g. a policy that turned against
    # the chosen answer); the true value is about -x there.
    tau = 0.05
    zeros = torch.zeros(1, dtype=dtype)
    chosen = torch.tensor([margin / BETA], dtype=dtype, requires_grad=True)
    out = dpo_loss(chosen, zeros, zeros, zeros, beta=BETA, loss_type="discopop", discopop_tau=tau)
    out.loss.backward()
    x = mpmath.mpf(margin)
    modulation = 1 / (1 + mpmath.exp(-x / tau))
    expected = float(-_log_sigmoid(x) * (1 - modulation) + mpmath.exp(-x) * modulation)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-12, abs=1e-30)
    assert torch.isfinite(chosen.grad).all()
