"""The one place that owns fastalign's numerical tolerances.

Rule (docs/architecture.md, "Testing rules"): a fused path at dtype ``D`` is compared with a float64 oracle; its error
must be at most twice the error of plain PyTorch computing the same function at ``D`` (fp32
accumulation), plus an absolute floor for ``D``. Values are measured by max absolute error,
gradients by relative error ``||g - g_ref|| / ||g_ref||``.

Floors, and why:
- float32 values 2e-5: ~16 ulps of fp32 at |log p| ~ 10 (log-probs at V ~ 1e3..1e5); both
  paths round differently inside long fp32 reductions, so a pure 2x rule is too tight when the
  baseline happens to land close. Gradients 1e-5 (~64 eps), same reason.
- float16 4e-3 / bfloat16 3e-2: 4 eps of the dtype. At half precision the baseline's own
  error (logits rounded to the dtype) dominates; the floor only covers tiny-baseline cases.
- float64 1e-10: the torch path in float64 against a float64 oracle differs only by
  summation order.
"""

from __future__ import annotations

import torch

_FLOORS = {
    torch.float64: {"value": 1e-10, "grad": 1e-10},
    torch.float32: {"value": 2e-5, "grad": 1e-5},
    torch.float16: {"value": 4 * torch.finfo(torch.float16).eps, "grad": 4 * torch.finfo(torch.float16).eps},
    torch.bfloat16: {"value": 4 * torch.finfo(torch.bfloat16).eps, "grad": 4 * torch.finfo(torch.bfloat16).eps},
}
KINDS = ("value", "grad")


def error_floor(dtype: torch.dtype, kind: str) -> float:
    """Absolute floor of the allowed error for ``dtype`` (``kind``: ``value`` or ``grad``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype not in _FLOORS:
        raise ValueError(f"no tolerance defined for dtype {dtype}")
    return _FLOORS[dtype][kind]


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected|`` computed in float64 (0 for empty tensors)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0
    return (actual.double() - expected.double()).abs().max().item()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64; absolute norm if ``expected`` is 0."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    diff = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    return diff / scale if scale > 0 else diff


def _error(kind: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    return max_abs_error(actual, expected) if kind == "value" else relative_error(actual, expected)


def assert_close_to_oracle(
    actual: torch.Tensor,
    oracle: torch.Tensor,
    baseline: torch.Tensor,
    *,
    dtype: torch.dtype,
    kind: str,
    what: str = "tensor",
) -> None:
    """Assert ``err(actual) <= 2 * err(baseline) + floor(dtype, kind)`` against ``oracle``.

    ``baseline`` is plain PyTorch's result at ``dtype``; ``NaN``/``inf`` in ``actual`` always fail.
    """
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: non-finite values")
    error = _error(kind, actual, oracle)
    baseline_error = _error(kind, baseline, oracle)
    allowed = 2.0 * baseline_error + error_floor(dtype, kind)
    if not error <= allowed:
        raise AssertionError(
            f"{what}: {kind} error {error:.3e} > allowed {allowed:.3e} "
            f"(2 x baseline {baseline_error:.3e} + floor {error_floor(dtype, kind):.1e}, {dtype})"
        )
