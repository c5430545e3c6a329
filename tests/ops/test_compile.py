"""The one torch.compile check of the suite: no graph break through the custom op."""

from __future__ import annotations

import torch

from fastalign import linear_logprobs


def test_fullgraph_compile_forward_and_backward():
    def loss_fn(hidden, weight, targets):
        out = linear_logprobs(hidden, weight, targets, return_entropy=True, impl="torch")
        return -(out.logprobs.sum() + 0.1 * out.entropy.sum())

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    weight = torch.randn(64, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 64, (2, 5), generator=gen)
    targets[0, 0] = -100

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(hidden, weight, targets)
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    eager = loss_fn(hidden, weight, targets)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)
