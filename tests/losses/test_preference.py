"""DPO family: independent float64 formulas from the papers, TRL 1.16's own code, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from fastalign.losses import LOSS_TYPES, dpo_loss
from tests.losses import trl_stubs

BETA = 0.3


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def paper_loss(loss_type, pc, pr, rc, rr, lc, lr, *, beta=BETA, eps=0.0, tau=0.05, batch=None):
    """One pair's loss written from each paper's formula with Python floats."""
    dc, dr = pc - rc, pr - rr
    d = dc - dr
    if loss_type == "sigmoid":  # DPO eq. 7; cDPO with eps
        return -(1 - eps) * log_sigmoid(beta * d) - eps * log_sigmoid(-beta * d)
    if loss_type == "hinge":
        return max(0.0, 1 - beta * d)
    if loss_type == "ipo":  # IPO eq. 17 on per-token log-ratios
        return (dc / lc - dr / lr - 1 / (2 * beta)) ** 2
    if loss_type == "sigmoid_norm":
        return -log_sigmoid(beta * (dc / lc - dr / lr))
    if loss_type == "robust":  # rDPO eq. 5
        return ((1 - eps) * -log_sigmoid(beta * d) - eps * -log_sigmoid(-beta * d)) / (1 - 2 * eps)
    if loss_type == "exo_pair":  # EXO eq. 16, K = 2
        q_w, q_l = sigmoid(beta * d), sigmoid(-beta * d)
        return q_w * (math.log(q_w) - math.log(1 - eps)) + q_l * (math.log(q_l) - math.log(eps))
    if loss_type == "nca_pair":
        return -log_sigmoid(beta * dc) - 0.5 * log_sigmoid(-beta * dc) - 0.5 * log_sigmoid(-beta * dr)
    if loss_type == "bco_pair":
        return -log_sigmoid(beta * dc) - log_sigmoid(-beta * dr)
    if loss_type == "sppo_hard":
        return (dc - 1 / (2 * beta)) ** 2 + (dr + 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return (1 - sigmoid(beta * dc)) + sigmoid(beta * dr)
    if loss_type == "apo_down":
        return sigmoid(beta * dc) + (1 - sigmoid(beta * (dc - dr)))
    if loss_type == "discopop":
        x = beta * d
        m = sigmoid(x / tau)
        return (1 - m) * -log_sigmoid(x) + m * math.exp(-x)
    raise KeyError(loss_type)


def paper_batch_loss(loss_type, data, **kw):
    pc, pr, rc, rr, lc, lr = (data[k].tolist() for k in ("pc", "pr", "rc", "rr", "lc", "lr"))
    n = len(pc)
    if loss_type == "sft":
        return -sum(pc) / sum(lc)
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            a = sorted(pc[i] - pr[i] for i in range(n))
            b = sorted(rc[i] - rr[i] for i in range(n))
        else:
            a = sorted(pc[i] - rc[i] for i in range(n))
            b = sorted(pr[i] - rr[i] for i in range(n))
        eps = kw.get("eps", 0.0)
        return sum(-(1 - eps) * log_sigmoid(BETA * (x - y)) - eps * log_sigmoid(-BETA * (x - y))
                   for x, y in zip(a, b)) / n
    return sum(paper_loss(loss_type, pc[i], pr[i], rc[i], rr[i], lc[i], lr[i], **kw) for i in range(n)) / n


def make_batch(batch=6, length=9, seed=0):
    """Per-token log-probs [2B, T-1] (chosen rows first) with prompts of 1..3 tokens."""
    gen = torch.Generator().manual_seed(seed)
    completion = torch.zeros(2 * batch, length, dtype=torch.long)
    for row in range(2 * batch):
        start = int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 1, length + 1, (1,), generator=gen))
        completion[row, start:end] = 1
    shifted = completion[:, 1:]
    per_token = -torch.rand(2 * batch, length - 1, generator=gen, dtype=torch.float64) * 2 * shifted
    ref_per_token = -torch.rand(2 * batch, length - 1, generator=gen, dtype=torch.float64) * 2 * shifted
    sums, ref_sums, lengths = per_token.sum(1), ref_per_token.sum(1), shifted.sum(1)
    return dict(
        per_token=per_token, completion=completion, pc=sums[:batch], pr=sums[batch:],
        rc=ref_sums[:batch], rr=ref_sums[batch:], lc=lengths[:batch], lr=lengths[batch:],
    )


def ours(data, loss_type, **kw):
    return dpo_loss(data["pc"], data["pr"], data["rc"], data["rr"], beta=BETA, loss_type=loss_type,
                    chosen_lengths=data["lc"], rejected_lengths=data["lr"], **kw)


EPS = {"robust": 0.1, "exo_pair": 1e-3, "aot": 0.05, "aot_unpaired": 0.05}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_against_paper_formula(loss_type):
    data = make_batch()
    eps = EPS.get(loss_type, 0.0)
    out = ours(data, loss_type, label_smoothing=eps)
    expected = paper_batch_loss(loss_type, data, **({"eps": eps} if eps else {}))
    assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # Twin: swapping chosen and rejected must change the value.
    swapped = dict(data, pc=data["pr"], pr=data["pc"], rc=data["rr"], rr=data["rc"], lc=data["lr"], lr=data["lc"])
    if loss_type != "sft":
        assert ours(swapped, loss_type, label_smoothing=eps).loss.item() != pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_against_trl_dpo_trainer(loss_type):
    data = make_batch(seed=1)
    per_token = data["per_token"].clone().requires_grad_()
    eps = EPS.get(loss_type, 0.0)
    trl_loss, metrics = trl_stubs.trl_dpo_loss(
        per_token, data["completion"], data["rc"], data["rr"], beta=BETA, loss_types=[loss_type],
        label_smoothing=eps,
    )
    (trl_grad,) = torch.autograd.grad(trl_loss, per_token)
    sums = per_token.sum(1)
    batch = sums.shape[0] // 2
    # TRL 1.16's sigmoid ignores label_smoothing (fastalign's is cDPO): compare at eps = 0 there.
    out = dpo_loss(sums[:batch], sums[batch:], data["rc"], data["rr"], beta=BETA, loss_type=loss_type,
                   chosen_lengths=data["lc"], rejected_lengths=data["lr"], label_smoothing=eps)
    (our_grad,) = torch.autograd.grad(out.loss, per_token)
    # TRL builds exo_pair's epsilon as a float32 tensor: its log terms carry fp32 rounding.
    rel = 1e-6 if loss_type == "exo_pair" else 1e-10
    assert out.loss.item() == pytest.approx(trl_loss.item(), rel=rel, abs=1e-12)
    # Gradients at scored positions (masked ones are constant zeros in real use).
    scored = data["completion"][:, 1:].bool()
    torch.testing.assert_close(our_grad[scored], trl_grad[scored], rtol=rel * 10, atol=1e-12)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], rel=1e-9)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], rel=1e-9)
    assert out.margins.mean().item() == pytest.approx(metrics["rewards/margins"][-1], rel=1e-9, abs=1e-12)
    assert out.accuracies.mean().item() == pytest.approx(metrics["rewards/accuracies"][-1])


@pytest.mark.parametrize("f_divergence_type,coef", [("forward_kl", 1.0), ("js_divergence", 1.0),
                                                     ("alpha_divergence", 0.5)])
def test_f_divergences_against_trl(f_divergence_type, coef):
    # float32: TRL's alpha-divergence clamp table has no float64 entry.
    data = {k: (v.float() if v.is_floating_point() else v) for k, v in make_batch(seed=2).items()}
    trl_loss, _ = trl_stubs.trl_dpo_loss(data["per_token"], data["completion"], data["rc"], data["rr"],
                                         beta=BETA, loss_types=["sigmoid"], f_divergence_type=f_divergence_type,
                                         f_alpha_divergence_coef=coef)
    out = ours(data, "sigmoid", f_divergence_type=f_divergence_type, f_alpha_divergence_coef=coef)
    assert out.loss.item() == pytest.approx(trl_loss.item(), rel=1e-6)
    assert out.loss.item() != pytest.approx(ours(data, "sigmoid").loss.item(), rel=1e-6)


def test_mpo_and_rpo_against_trl():
    data = make_batch(seed=3)
    trl_loss, _ = trl_stubs.trl_dpo_loss(data["per_token"], data["completion"], data["rc"], data["rr"],
                                         beta=BETA, loss_types=["sigmoid", "bco_pair", "sft"],
                                         loss_weights=[0.8, 0.2, 1.0])
    mpo = ours(data, ["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])
    assert mpo.loss.item() == pytest.approx(trl_loss.item(), rel=1e-10)
    rpo = ours(data, "sigmoid", rpo_alpha=1.0)
    sigmoid_plus_sft = ours(data, ["sigmoid", "sft"])
    assert rpo.loss.item() == pytest.approx(sigmoid_plus_sft.loss.item(), rel=1e-12)
    assert rpo.nll_loss.item() == pytest.approx(-data["pc"].sum().item() / data["lc"].sum().item())


def test_cdpo_label_smoothing_and_pair_weights():
    data = make_batch(seed=4)
    smoothed = ours(data, "sigmoid", label_smoothing=0.2)
    assert smoothed.loss.item() == pytest.approx(paper_batch_loss("sigmoid", data, eps=0.2), rel=1e-10)
    weights = torch.linspace(0.2, 1.0, data["pc"].shape[0], dtype=torch.float64)
    weighted = ours(data, "sigmoid", pair_weights=weights)
    plain = ours(data, "sigmoid")
    assert weighted.loss.item() == pytest.approx((plain.losses * weights).mean().item(), rel=1e-12)


def test_reference_free_and_global_normalization():
    data = make_batch(seed=5)
    free = dpo_loss(data["pc"], data["pr"], beta=BETA)
    zero_ref = dpo_loss(data["pc"], data["pr"], torch.zeros_like(data["pc"]), torch.zeros_like(data["pc"]), beta=BETA)
    assert free.loss.item() == pytest.approx(zero_ref.loss.item())
    half = data["pc"].shape[0] // 2
    parts = [dpo_loss(data["pc"][s], data["pr"][s], data["rc"][s], data["rr"][s], beta=BETA, num_pairs=6).loss
             for s in (slice(0, half), slice(half, None))]
    whole = dpo_loss(data["pc"], data["pr"], data["rc"], data["rr"], beta=BETA).loss
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-12)


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t not in ("aot", "aot_unpaired", "hinge")])
def test_gradcheck(loss_type):
    data = make_batch(batch=3, seed=6)
    inputs = tuple(data[k].clone().requires_grad_() for k in ("pc", "pr", "rc", "rr"))

    def fn(pc, pr, rc, rr):
        return dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type=loss_type, chosen_lengths=data["lc"],
                        rejected_lengths=data["lr"], label_smoothing=EPS.get(loss_type, 0.0)).loss

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(loss_type="dpo"), r"loss_type must be one of \['sigmoid'"),
        (dict(beta=0.0), "beta"),
        (dict(beta=-1.0), "beta"),
        (dict(loss_type="ipo"), "chosen_lengths is required for ipo"),
        (dict(loss_type="robust", label_smoothing=0.5), "label_smoothing"),
        (dict(loss_type="exo_pair"), "label_smoothing"),
        (dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]), "loss_weights"),
        (dict(f_divergence_type="kl"), "f_divergence_type"),
        (dict(rpo_alpha=1.0), "chosen_lengths is required"),
    ],
)
def test_bad_arguments(kwargs, match):
    data = make_batch()
    with pytest.raises(ValueError, match=match):
        dpo_loss(data["pc"], data["pr"], data["rc"], data["rr"], **kwargs)


def test_bad_tensors():
    data = make_batch()
    with pytest.raises(ValueError, match="batch sizes differ"):
        dpo_loss(data["pc"], data["pr"][:-1], data["rc"], data["rr"])
    with pytest.raises(ValueError, match="non-finite"):
        dpo_loss(data["pc"], data["pr"] * float("nan"), data["rc"], data["rr"])
    with pytest.raises(ValueError, match="both be given"):
        dpo_loss(data["pc"], data["pr"], data["rc"], None)
    with pytest.raises(ValueError, match="1-d"):
        dpo_loss(data["pc"][None], data["pr"][None])
