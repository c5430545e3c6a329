"""The tolerance rule and error measures of fastalign/testing/numerics.py, on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from fastalign.testing import assert_close_to_oracle, error_floor, max_abs_error, relative_error


def test_error_floors():
    assert error_floor(torch.float64, "value") == error_floor(torch.float64, "grad") == 1e-10
    assert (error_floor(torch.float32, "value"), error_floor(torch.float32, "grad")) == (2e-5, 1e-5)
    assert error_floor(torch.float16, "value") == error_floor(torch.float16, "grad") == 4 * 2.0 ** -10
    assert error_floor(torch.bfloat16, "value") == error_floor(torch.bfloat16, "grad") == 4 * 2.0 ** -7
    with pytest.raises(ValueError, match=r"kind must be one of \('value', 'grad'\), got 'values'"):
        error_floor(torch.float32, "values")
    with pytest.raises(ValueError, match="no tolerance defined for dtype torch.int32"):
        error_floor(torch.int32, "value")


def test_max_abs_error():
    assert max_abs_error(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 2.0])) == 1.0
    assert max_abs_error(torch.zeros(0, 3), torch.zeros(0, 3)) == 0.0
    # Measured in float64: a float16 value against a float32 one, no rounding to either.
    expected = torch.tensor([1.0001], dtype=torch.float32)
    assert max_abs_error(torch.tensor([1.0], dtype=torch.float16), expected) == abs(expected.double().item() - 1.0)
    with pytest.raises(AssertionError, match=r"shape mismatch: \(2,\) vs \(1, 2\)"):
        max_abs_error(torch.zeros(2), torch.zeros(1, 2))


def test_relative_error():
    reference = torch.tensor([3.0, 4.0])
    assert relative_error(reference * 1.5, reference) == pytest.approx(0.5, rel=1e-12)
    assert relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == 1.0
    assert relative_error(reference, torch.zeros(2)) == 5.0  # absolute norm against a zero reference
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    with pytest.raises(AssertionError, match="shape mismatch"):
        relative_error(torch.zeros(3), torch.zeros(2))


def test_values_may_err_twice_the_baseline_plus_the_floor():
    oracle = torch.zeros(4, dtype=torch.float64)
    baseline = torch.tensor([0.1, 0.0, 0.0, 0.0])  # baseline error 0.1; float32 floor 2e-5
    for error in (0.0, 0.2, 0.2 + 1e-5):
        assert_close_to_oracle(torch.tensor([0.0, -error, 0.0, 0.0], dtype=torch.float64), oracle, baseline,
                               dtype=torch.float32, kind="value")
    with pytest.raises(AssertionError, match=r"^loss: value error 2\.000e-01 > allowed 2\.000e-01 "
                                             r"\(2 x baseline 1\.000e-01 \+ floor 2\.0e-05, torch\.float32\)$"):
        assert_close_to_oracle(torch.tensor([0.0, 0.2 + 3e-5, 0.0, 0.0], dtype=torch.float64), oracle, baseline,
                               dtype=torch.float32, kind="value", what="loss")
    # The floor is the dtype's: at float64 (1e-10) an extra 1e-6 fails.
    with pytest.raises(AssertionError, match=r"floor 1\.0e-10, torch\.float64"):
        assert_close_to_oracle(torch.tensor([0.0, 0.2 + 1e-6, 0.0, 0.0], dtype=torch.float64), oracle,
                               baseline.double(), dtype=torch.float64, kind="value")


def test_gradients_are_measured_by_relative_error():
    oracle = torch.tensor([1.0, 0.0], dtype=torch.float64)
    baseline = torch.tensor([1.0, 0.01], dtype=torch.float64)  # relative error 0.01
    assert_close_to_oracle(torch.tensor([1.0, 0.02]), oracle, baseline, dtype=torch.float32, kind="grad")
    with pytest.raises(AssertionError, match=r"^grad: grad error 2\.100e-02 > allowed 2\.001e-02"):
        assert_close_to_oracle(torch.tensor([1.0, 0.021]), oracle, baseline, dtype=torch.float32, kind="grad",
                               what="grad")
    # Scale-free: 2% off a gradient of norm 1000 passes against a baseline 1% off, while the
    # same tensor as a value (max abs error 20) fails against a baseline 1 off.
    big = oracle * 1000
    assert_close_to_oracle(big * 1.02, big, big * 1.01, dtype=torch.float32, kind="grad")
    with pytest.raises(AssertionError, match="value error"):
        assert_close_to_oracle(big * 1.02, big, big * 1.001, dtype=torch.float32, kind="value")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_always_fail(bad):
    oracle = torch.zeros(2, dtype=torch.float64)
    baseline = torch.tensor([float("inf"), 0.0])  # even a useless baseline does not excuse them
    with pytest.raises(AssertionError, match="^logits: non-finite values$"):
        assert_close_to_oracle(torch.tensor([bad, 0.0]), oracle, baseline, dtype=torch.float32, kind="value",
                               what="logits")
