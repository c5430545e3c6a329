"""Shared machinery of the op tests: make inputs, run a path, compare with the oracle.

Every comparison goes through ``fastalign.testing.assert_close_to_oracle`` (the tolerance
rule); mutation twins reuse the same comparison with a deliberately wrong computation and
expect it to fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from fastalign.ops.linear_logprobs import linear_logprob_stats
from fastalign.ops.reference import reference_linear_logprob_stats
from fastalign.testing import assert_close_to_oracle

OUTPUTS = ("logprobs", "entropy", "lse", "logit_sum")


@dataclass
class Case:
    """Inputs of one op call plus the options shared by the op and the oracle."""

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    bias: torch.Tensor | None = None
    options: dict = field(default_factory=dict)  # temperature, softcap, ignore_index
    frozen_weight: bool = False
    # Applied to the hidden leaf before the call, so strided views reach the op as views.
    hidden_view: object = None

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype


def make_case(
    n: int,
    h: int,
    v: int,
    *,
    dtype=torch.float32,
    device="cpu",
    with_bias=False,
    logit_scale=1.0,
    ignored=(),
    target_high=None,
    seed=0,
    **options,
) -> Case:
    """Random inputs whose logits have std ~``logit_scale``; ``ignored`` rows get -100."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * (logit_scale / h**0.5)
    bias = torch.randn(v, generator=gen, dtype=torch.float64) if with_bias else None
    targets = torch.randint(0, target_high or v, (n,), generator=gen)
    for row in ignored:
        targets[row] = -100
    to = dict(dtype=dtype, device=device)
    return Case(
        hidden.to(**to), weight.to(**to), targets.to(device),
        bias.to(**to) if bias is not None else None, dict(options),
    )


def upstream_coefficients(case: Case, outputs) -> dict[str, torch.Tensor]:
    """Fixed random per-row weights so every output's gradient path is exercised."""
    gen = torch.Generator().manual_seed(1234)
    shape = case.targets.shape
    return {name: torch.randn(shape, generator=gen, dtype=torch.float64) for name in outputs}


def evaluate(fn, case: Case, outputs=OUTPUTS):
    """Values (dict) and gradients (dict) of ``sum_k c_k * output_k`` through ``fn``."""
    hidden = case.hidden.detach().clone().requires_grad_(True)
    weight = case.weight.detach().clone().requires_grad_(not case.frozen_weight)
    bias = case.bias.detach().clone().requires_grad_(True) if case.bias is not None else None
    hidden_in = case.hidden_view(hidden) if case.hidden_view is not None else hidden
    stats = fn(hidden_in, weight, case.targets, bias)
    values = {name: getattr(stats, name) for name in outputs}
    coefficients = upstream_coefficients(case, outputs)
    loss = sum((values[k].double() * coefficients[k].to(values[k].device)).sum() for k in outputs)
    params = {"hidden": hidden, "weight": weight, "bias": bias}
    wanted = {k: p for k, p in params.items() if p is not None and p.requires_grad}
    grads = dict(zip(wanted, torch.autograd.grad(loss, list(wanted.values()))))
    return {k: v.detach().cpu() for k, v in values.items()}, {k: g.cpu() for k, g in grads.items()}


def op_fn(impl: str, **extra):
    """The op under test; ``impl="triton-fused"`` is Triton with the minimum-memory backward."""
    if impl == "triton-fused":
        impl, extra = "triton", {"backward": "fused", **extra}

    def run(hidden, weight, targets, bias, options):
        return linear_logprob_stats(
            hidden, weight, targets, bias=bias, with_entropy=True, with_logit_sum=True,
            impl=impl, **options, **extra,
        )

    return run


def reference_fn(upcast_to):
    def run(hidden, weight, targets, bias, options):
        return reference_linear_logprob_stats(
            hidden, weight, targets, bias=bias, upcast_to=upcast_to, **options
        )

    return run


def _bind(fn, options):
    return lambda h, w, t, b: fn(h, w, t, b, options)


def assert_matches_oracle(case: Case, impl: str, *, outputs=OUTPUTS, transform=None,
                          postprocess=None, op_options: dict | None = None, **extra) -> None:
    """The op agrees with the oracle on ``case`` (values and gradients, tolerance rule).

    Mutation twins use ``transform`` (maps ``(hidden, weight, targets, bias)`` before the op
    call, inside autograd), ``postprocess`` (maps the op's stats) or ``op_options`` to feed
    the op something subtly wrong.
    """
    options = case.options if op_options is None else op_options
    run_op = op_fn(impl, **extra)

    def actual_fn(h, w, t, b):
        if transform is not None:
            h, w, t, b = transform(h, w, t, b)
        stats = run_op(h, w, t, b, options)
        return postprocess(stats) if postprocess is not None else stats

    actual_values, actual_grads = evaluate(actual_fn, case, outputs)
    oracle_values, oracle_grads = evaluate(_bind(reference_fn(torch.float64), case.options), case, outputs)
    plain_values, plain_grads = evaluate(_bind(reference_fn(None), case.options), case, outputs)
    for name in outputs:
        assert_close_to_oracle(
            actual_values[name], oracle_values[name], plain_values[name],
            dtype=case.dtype, kind="value", what=name,
        )
    for name in oracle_grads:
        actual = actual_grads.get(name)
        if actual is None:
            raise AssertionError(f"no gradient for {name}")
        if actual.shape != oracle_grads[name].shape:
            raise AssertionError(f"grad {name} shape {tuple(actual.shape)} != {tuple(oracle_grads[name].shape)}")
        assert_close_to_oracle(
            actual, oracle_grads[name], plain_grads[name],
            dtype=case.dtype, kind="grad", what=f"d {name}",
        )


def with_options(case: Case, **options) -> Case:
    return replace(case, options={**case.options, **options})
