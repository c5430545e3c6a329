"""Calls the op does not support get a clear error; meta tensors (shape inference) work."""

from __future__ import annotations

import pytest
import torch

from fastalign import linear_logprobs


def test_double_backward_says_it_is_unsupported():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(16, 8, requires_grad=True)
    targets = torch.randint(0, 16, (4,))
    logp = linear_logprobs(hidden, weight, targets, impl="torch")
    (grad,) = torch.autograd.grad(logp.sum(), hidden, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        grad.sum().backward()


def test_meta_tensors_infer_shapes():
    hidden = torch.empty(2, 5, 8, device="meta", requires_grad=True)
    weight = torch.empty(16, 8, device="meta", requires_grad=True)
    targets = torch.empty(2, 5, dtype=torch.long, device="meta")
    out = linear_logprobs(hidden, weight, targets, return_entropy=True)
    assert out.logprobs.shape == (2, 5) and out.logprobs.device.type == "meta"
    assert out.entropy.shape == (2, 5)
    out.logprobs.sum().backward()
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape
