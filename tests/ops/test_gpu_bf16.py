"""bf16 checks that need a GPU (the Triton interpreter computes bf16 dots wrongly)."""

from __future__ import annotations

import pytest
import torch

from tests.ops.oracle_check import assert_matches_oracle, make_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("n,h,v", [(1, 256, 128256), (1000, 2048, 128256), (4099, 1024, 50257)])
def test_bf16_llama_vocab(n, h, v):
    case = make_case(n, h, v, dtype=torch.bfloat16, device="cuda", logit_scale=4.0,
                     ignored=list(range(0, n, 7)), target_high=v - 256)
    assert_matches_oracle(case, "triton", outputs=("logprobs", "entropy"))
    with pytest.raises(AssertionError):
        assert_matches_oracle(
            case, "triton", outputs=("logprobs", "entropy"),
            transform=lambda hh, w, t, b: (hh, w[:-256], t, b),
        )


@pytest.mark.parametrize("deterministic", [False, True])
def test_bf16_softcap_temperature_bias(deterministic):
    case = make_case(777, 512, 32000, dtype=torch.bfloat16, device="cuda", with_bias=True,
                     logit_scale=30.0, softcap=30.0, temperature=0.8)
    assert_matches_oracle(case, "triton", deterministic=deterministic)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, "triton", deterministic=deterministic,
                              op_options={"softcap": None, "temperature": 0.8})
