"""Rows the op must get right where naive formulas cancel or produce NaN, against float64
``log_softmax``: all logits equal to a huge constant, and masked vocabulary entries (a -inf
bias), through values and gradients, for both implementations."""

from __future__ import annotations

import math

import pytest
import torch

from fastalign.ops.linear_logprobs import linear_logprob_stats

IMPLS = ["torch", "triton"]


@pytest.fixture
def device(kernel_device, request):
    return kernel_device if request.node.callspec.params.get("impl") == "triton" else torch.device("cpu")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("constant", [1e6, 1e8, 1e30])
def test_equal_huge_logits_give_uniform_distribution(impl, constant, device):
    """Every logit equal to c: log p = -ln V and entropy = ln V, whatever c is."""
    vocab, h = 300, 8
    hidden = torch.zeros(5, h, device=device)
    weight = torch.zeros(vocab, h, device=device)
    bias = torch.full((vocab,), constant, device=device)
    targets = torch.tensor([0, 7, 299, 150, 3], device=device)
    out = linear_logprob_stats(hidden, weight, targets, bias=bias, with_entropy=True, impl=impl)
    ref = torch.log_softmax(bias.double().expand(5, vocab), dim=-1).gather(1, targets[:, None].cpu().long())
    assert torch.allclose(out.logprobs.cpu().double(), ref.squeeze(1), atol=1e-5)
    assert torch.allclose(out.entropy.cpu().double(), torch.full((5,), math.log(vocab), dtype=torch.float64), atol=1e-5)
    # Twin: the cancelling formula z_t - lse in fp32 is visibly wrong at these magnitudes.
    naive = (bias.float() - torch.logsumexp(bias.float(), 0))[targets.cpu()].double()
    assert (naive - ref.squeeze(1)).abs().max() > 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_vocabulary_entries_keep_entropy_and_gradients_finite(impl, device):
    gen = torch.Generator().manual_seed(0)
    vocab, h = 300, 16
    hidden = torch.randn(6, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, h, generator=gen, dtype=torch.float64) / 4
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64)
    bias[::3] = float("-inf")  # masked entries
    targets = torch.tensor([1, 2, 4, 5, 7, 8])

    def run(dtype, dev, op):
        hh = hidden.detach().clone().to(dev, dtype).requires_grad_()
        ww = weight.detach().clone().to(dev, dtype).requires_grad_()
        bb = bias.detach().clone().to(dev, dtype).requires_grad_()
        return hh, ww, bb, op(hh, ww, bb)

    def fused(hh, ww, bb):
        out = linear_logprob_stats(hh, ww, targets.to(hh.device), bias=bb, with_entropy=True, impl=impl)
        return out.logprobs, out.entropy

    keep = torch.isfinite(bias)
    kept_index = torch.cumsum(keep.long(), 0) - 1  # vocab id -> column among the kept ones

    def reference(hh, ww, bb):
        # Masked entries have probability 0: the distribution is the softmax over the rest.
        logp = torch.log_softmax((hh @ ww.T + bb)[:, keep], dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return logp.gather(1, kept_index[targets][:, None]).squeeze(1), entropy

    # Twin: the textbook entropy over all columns is NaN here (0 * -inf), so finiteness is a real check.
    full = torch.log_softmax(hidden @ weight.T + bias, dim=-1)
    assert torch.isnan(-(full.exp() * full).sum(-1)).all()

    for use_entropy in (False, True):
        h1, w1, b1, (logp, ent) = run(torch.float32, device, fused)
        h2, w2, b2, (ref_logp, ref_ent) = run(torch.float64, "cpu", reference)
        assert torch.isfinite(ent).all()
        assert torch.allclose(logp.cpu().double(), ref_logp, atol=1e-5)
        assert torch.allclose(ent.cpu().double(), ref_ent.detach(), atol=1e-5)
        loss = logp.sum() + (ent.sum() if use_entropy else 0)
        ref_loss = ref_logp.sum() + (ref_ent.sum() if use_entropy else 0)
        loss.backward()
        ref_loss.backward()
        for got, want in ((h1.grad, h2.grad), (w1.grad, w2.grad), (b1.grad, b2.grad)):
            assert torch.isfinite(got).all()
            assert torch.allclose(got.cpu().double(), want, atol=1e-5)
