"""linear_cross_entropy against F.cross_entropy on float64 full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastalign import linear_cross_entropy
from fastalign.testing import assert_close_to_oracle

IMPLS = ["torch", "triton"]


def oracle_cross_entropy(e, c, targets, *, bias=None, ignore_index=-100, softcap=None,
                         reduction="mean", shift=0, label_smoothing=0.0, z_loss=0.0, upcast=True):
    if upcast:
        e, c = e.double(), c.double()
        bias = bias.double() if bias is not None else None
    if shift:
        e, targets = e[..., :-shift, :], targets[..., shift:]
    logits = F.linear(e, c, bias).float() if not upcast else F.linear(e, c, bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat = logits.reshape(-1, logits.shape[-1])
    flat_t = targets.reshape(-1)
    loss = F.cross_entropy(flat, flat_t, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    if z_loss:
        scored = flat_t != ignore_index
        loss = loss + z_loss * torch.where(scored, torch.logsumexp(flat, -1) ** 2, 0.0)
    loss = loss.view(targets.shape)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (targets != ignore_index).sum().clamp(min=1)


def _inputs(device, dtype=torch.float32, seed=0, b=2, t=9, h=32, v=1000):
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(b, t, h, generator=gen).to(device, dtype)
    c = (torch.randn(v, h, generator=gen) / h**0.5 * 3).to(device, dtype)
    targets = torch.randint(0, v, (b, t), generator=gen).to(device)
    targets[0, :3] = -100
    return e, c, targets


def _value_and_grads(fn, e, c, bias=None):
    e = e.detach().clone().requires_grad_()
    c = c.detach().clone().requires_grad_()
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    loss = fn(e, c, b)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).view(loss.shape)
    params = [p for p in (e, c, b) if p is not None]
    grads = torch.autograd.grad((loss * weights).sum(), params)
    return loss.detach().cpu(), [g.cpu() for g in grads]


def check(impl, device, *, dtype=torch.float32, op_kwargs=None, oracle_kwargs, with_bias=False,
          mutate_targets=None):
    e, c, targets = _inputs(device, dtype)
    op_targets = mutate_targets(targets) if mutate_targets is not None else targets
    bias = torch.randn(c.shape[0], device=device, dtype=dtype) if with_bias else None
    op_kwargs = oracle_kwargs if op_kwargs is None else op_kwargs
    shift = int(op_kwargs.get("shift", 0))
    actual = _value_and_grads(
        lambda e_, c_, b_: linear_cross_entropy(e_, c_, op_targets, impl=impl, bias=b_, **op_kwargs), e, c, bias
    )
    oracle = _value_and_grads(
        lambda e_, c_, b_: oracle_cross_entropy(e_, c_, targets, bias=b_, **oracle_kwargs), e, c, bias
    )
    plain = _value_and_grads(
        lambda e_, c_, b_: oracle_cross_entropy(e_, c_, targets, bias=b_, upcast=False, **oracle_kwargs), e, c, bias
    )
    assert shift >= 0
    assert_close_to_oracle(actual[0], oracle[0], plain[0], dtype=dtype, kind="value", what="loss")
    for a, o, p in zip(actual[1], oracle[1], plain[1]):
        assert_close_to_oracle(a, o, p, dtype=dtype, kind="grad", what="grad")


@pytest.fixture
def device(kernel_device, request):
    return kernel_device if request.node.callspec.params.get("impl") == "triton" else torch.device("cpu")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(impl, reduction, device):
    check(impl, device, oracle_kwargs=dict(reduction=reduction))
    with pytest.raises(AssertionError):
        check(impl, device, oracle_kwargs=dict(reduction=reduction),
              mutate_targets=lambda t: t.roll(1, dims=-1))


@pytest.mark.parametrize("impl", IMPLS)
def test_shift_scores_next_token(impl, device):
    check(impl, device, oracle_kwargs=dict(shift=1, reduction="none"))
    with pytest.raises(AssertionError):
        check(impl, device, op_kwargs=dict(shift=2, reduction="none"),
              oracle_kwargs=dict(shift=1, reduction="none"))


@pytest.mark.parametrize("impl", IMPLS)
def test_label_smoothing_z_loss_softcap_bias(impl, device):
    kwargs = dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
    check(impl, device, oracle_kwargs=kwargs, with_bias=True)
    with pytest.raises(AssertionError):
        check(impl, device, op_kwargs=dict(kwargs, label_smoothing=0.0), oracle_kwargs=kwargs, with_bias=True)
    with pytest.raises(AssertionError):
        check(impl, device, op_kwargs=dict(kwargs, z_loss=0.0), oracle_kwargs=kwargs, with_bias=True)


def test_fp16_torch_path():
    check("torch", torch.device("cpu"), dtype=torch.float16, oracle_kwargs=dict(label_smoothing=0.2))


def test_cut_cross_entropy_positional_order():
    """(e, c, targets, ignore_index, softcap, reduction, shift, filter_eps, impl)."""
    e, c, targets = _inputs("cpu")
    targets = torch.where(targets == -100, 5, targets)
    by_position = linear_cross_entropy(e, c, targets, 5, 4.0, "sum", True, None, "torch_compile")
    by_keyword = linear_cross_entropy(e, c, targets, ignore_index=5, softcap=4.0, reduction="sum",
                                      shift=True, filter_eps=None, impl="torch")
    assert torch.equal(by_position, by_keyword)
    expected = oracle_cross_entropy(e, c, targets, ignore_index=5, softcap=4.0, reduction="sum", shift=1)
    assert abs(by_position.item() - expected.item()) < 1e-3


def test_all_ignored_mean_is_zero_with_zero_grads():
    e, c, targets = _inputs("cpu")
    e.requires_grad_()
    loss = linear_cross_entropy(e, c, torch.full_like(targets, -100), impl="torch")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(e.grad, torch.zeros_like(e))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reduction="avg"), "reduction"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(z_loss=-1.0), "z_loss"),
        (dict(shift=-1), "shift"),
        (dict(shift=20), "shift"),
        (dict(filter_eps="fast"), "filter_eps"),
        (dict(filter_eps=0.0), "filter_eps"),
        (dict(impl="cuda"), "impl"),
    ],
)
def test_bad_arguments(kwargs, match):
    e, c, targets = _inputs("cpu")
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(e, c, targets, **kwargs)
