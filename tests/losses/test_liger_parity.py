"""Fused layers equal Liger-Kernel 0.8.5's layers (CPU, compiled=False) for shared loss types:
same constructor, same forward arguments, same return tuple, same gradients."""

from __future__ import annotations

import pytest
import torch

from fastalign import (
    FusedLinearCPOLoss,
    FusedLinearDPOLoss,
    FusedLinearKTOLoss,
    FusedLinearORPOLoss,
    FusedLinearSimPOLoss,
)
from fastalign.testing import relative_error
from tests.losses.test_fused import make_inputs

chunked = pytest.importorskip("liger_kernel.chunked_loss")

LIGER_DPO_TYPES = ["sigmoid", "hinge", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                   "apo_zero", "apo_down", "discopop"]


def _run(layer, args, trainable=(0, 1, 3)):
    """Call the layer with fresh leaves at the ``trainable`` positions; return loss, aux, grads."""
    leaves = [a.detach().clone().requires_grad_() if i in trainable else a for i, a in enumerate(args)]
    loss, aux = layer(*leaves)
    grads = torch.autograd.grad(loss, [leaves[i] for i in trainable])
    return loss, aux, grads


def assert_same(ours, theirs, rtol=2e-5, atol=2e-6):
    loss, aux, grads = ours
    liger_loss, liger_aux, liger_grads = theirs
    torch.testing.assert_close(loss, liger_loss, rtol=rtol, atol=atol)
    assert len(aux) == len(liger_aux)
    for index, (a, b) in enumerate(zip(aux, liger_aux)):
        torch.testing.assert_close(torch.as_tensor(a).float(), torch.as_tensor(b).float().to(torch.as_tensor(a).device),
                                   rtol=rtol, atol=atol, msg=lambda m: f"aux[{index}]: {m}")
    for a, b in zip(grads, liger_grads):
        # fp32 on both sides, different summation orders: relative-norm error (the project's metric).
        assert relative_error(a, b) < 1e-5, relative_error(a, b)


@pytest.mark.parametrize("loss_type", LIGER_DPO_TYPES)
@pytest.mark.parametrize("average_log_prob,compute_nll_loss", [(False, False), (True, True)])
def test_dpo(loss_type, average_log_prob, compute_nll_loss):
    i = make_inputs("cpu", seed=10)
    kwargs = dict(beta=0.5, alpha=0.7, compute_nll_loss=compute_nll_loss, average_log_prob=average_log_prob,
                  loss_type=loss_type, label_smoothing=0.1 if loss_type in ("robust", "exo_pair") else 0.0)
    args = (i["weight"], i["hidden"], i["target"], i["bias"], i["ref_hidden"], i["ref_weight"], i["bias"])
    ours = _run(FusedLinearDPOLoss(**kwargs, impl="torch"), args)
    theirs = _run(chunked.LigerFusedLinearDPOLoss(**kwargs, compiled=False), args)
    assert_same(ours, theirs)
    flipped = (i["weight"], i["hidden"].flip(0), i["target"].flip(0), i["bias"], i["ref_hidden"].flip(0),
               i["ref_weight"], i["bias"])
    with pytest.raises(AssertionError):  # twin: chosen/rejected swapped on one side only
        assert_same(_run(FusedLinearDPOLoss(**kwargs, impl="torch"), flipped), theirs)


def test_simpo_cpo_orpo():
    i = make_inputs("cpu", seed=11)
    args = (i["weight"], i["hidden"], i["target"], i["bias"])
    for ours_cls, liger_cls, kwargs in (
        (FusedLinearSimPOLoss, chunked.LigerFusedLinearSimPOLoss, dict(beta=2.0, gamma=0.8, label_smoothing=0.1)),
        (FusedLinearCPOLoss, chunked.LigerFusedLinearCPOLoss, dict(beta=0.3, alpha=0.5, label_smoothing=0.1)),
        (FusedLinearORPOLoss, chunked.LigerFusedLinearORPOLoss, dict(beta=0.2)),
    ):
        assert_same(_run(ours_cls(**kwargs, impl="torch"), args), _run(liger_cls(**kwargs, compiled=False), args))


def test_kto():
    i = make_inputs("cpu", seed=12)
    labels = torch.tensor([True, False, True, True, False, False])
    kl = torch.tensor(0.05)
    args = (i["hidden"], i["weight"], i["target"], i["bias"], labels, i["ref_hidden"], i["ref_weight"], i["bias"], kl)
    ours = _run(FusedLinearKTOLoss(beta=0.3, use_ref_model=True, impl="torch"), args)
    theirs = _run(chunked.LigerFusedLinearKTOLoss(beta=0.3, use_ref_model=True, compiled=False), args)
    assert_same(ours, theirs)
