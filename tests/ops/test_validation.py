"""Bad inputs raise ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from fastalign import linear_logprobs


def _ok():
    return torch.randn(4, 8), torch.randn(10, 8), torch.randint(0, 10, (4,))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda h, w, t: (h.long(), w, t), "hidden"),
        (lambda h, w, t: ([1.0], w, t), "hidden"),
        (lambda h, w, t: (h, w[:, :7], t), "hidden's last dimension"),
        (lambda h, w, t: (h, w.unsqueeze(0), t), "weight"),
        (lambda h, w, t: (h, w[:0], t), "weight"),
        (lambda h, w, t: (h, w.double(), t), "weight dtype"),
        (lambda h, w, t: (h, w, t.float()), "targets must be an integer"),
        (lambda h, w, t: (h, w, t.bool()), "targets must be an integer"),
        (lambda h, w, t: (h, w, t[:3]), "targets shape"),
        (lambda h, w, t: (h, w, torch.tensor([0, 1, 10, 2])), "targets holds 10"),
        (lambda h, w, t: (h, w, torch.tensor([0, 1, -1, 2])), "targets holds -1"),
    ],
)
def test_bad_tensors(mutate, match):
    hidden, weight, targets = mutate(*_ok())
    with pytest.raises(ValueError, match=match):
        linear_logprobs(hidden, weight, targets, impl="torch")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(softcap=-1.0), "softcap"),
        (dict(ignore_index=1.5), "ignore_index"),
        (dict(impl="fast"), "impl"),
        (dict(bias=torch.randn(9)), "bias"),
        (dict(bias=torch.randn(10).double()), "bias dtype"),
        (dict(deterministic="yes"), "deterministic"),
    ],
)
def test_bad_options(kwargs, match):
    hidden, weight, targets = _ok()
    with pytest.raises(ValueError, match=match):
        linear_logprobs(hidden, weight, targets, **kwargs)


def test_triton_refuses_float64():
    hidden, weight, targets = _ok()
    with pytest.raises(ValueError, match="impl='triton'"):
        linear_logprobs(hidden.double(), weight.double(), targets, impl="triton")


def test_ignore_index_outside_vocab_is_fine():
    hidden, weight, targets = _ok()
    targets[1] = -100
    assert linear_logprobs(hidden, weight, targets)[1] == 0
