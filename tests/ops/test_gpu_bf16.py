"""bf16 checks that need a GPU (the Triton interpreter computes bf16 dots wrongly)."""

from __future__ import annotations

import pytest
import torch

from tests.ops.oracle_check import assert_matches_oracle, make_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


BACKWARDS = ["chunked", "fused"]


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("n,h,v", [(1, 256, 128256), (1000, 2048, 128256), (4099, 1024, 50257)])
def test_bf16_llama_vocab(n, h, v, backward):
    case = make_case(n, h, v, dtype=torch.bfloat16, device="cuda", logit_scale=4.0,
                     ignored=list(range(0, n, 7)), target_high=v - 256)
    assert_matches_oracle(case, "triton", outputs=("logprobs", "entropy"), backward=backward)
    with pytest.raises(AssertionError):
        assert_matches_oracle(
            case, "triton", outputs=("logprobs", "entropy"), backward=backward,
            transform=lambda hh, w, t, b: (hh, w[:-256], t, b),
        )


@pytest.mark.parametrize("backward,deterministic", [("chunked", False), ("fused", False), ("fused", True)])
def test_bf16_softcap_temperature_bias(backward, deterministic):
    case = make_case(777, 512, 32000, dtype=torch.bfloat16, device="cuda", with_bias=True,
                     logit_scale=30.0, softcap=30.0, temperature=0.8)
    assert_matches_oracle(case, "triton", deterministic=deterministic, backward=backward)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, "triton", deterministic=deterministic, backward=backward,
                              op_options={"softcap": None, "temperature": 0.8})


@pytest.mark.parametrize("backward", BACKWARDS)
def test_bf16_multi_chunk_and_strided_hidden(backward):
    """Several backward chunks (small budget) over a strided [B, T, H] view, fp16 too."""
    for dtype in (torch.bfloat16, torch.float16):
        case = make_case(1, 1024, 32000, dtype=dtype, device="cuda", logit_scale=4.0)
        gen = torch.Generator().manual_seed(3)
        case.hidden = torch.randn(3, 700, 1024, generator=gen).to("cuda", dtype)
        case.targets = torch.randint(0, 32000, (3, 700), generator=gen).cuda()[:, 1:]
        case.hidden_view = lambda full: full[:, :-1]
        budget = 256 * 32000 * 2  # 256 rows per chunk: 9 chunks for 2097 rows
        assert_matches_oracle(case, "triton", backward=backward, backward_memory_budget=budget)


def test_bf16_deterministic_bitwise():
    """The default backward and the fused deterministic one reproduce bit for bit."""
    case = make_case(3000, 1024, 50257, dtype=torch.bfloat16, device="cuda", logit_scale=4.0)
    from fastalign.ops.linear_logprobs import linear_logprob_stats

    def grads(**options):
        hidden = case.hidden.clone().requires_grad_()
        weight = case.weight.clone().requires_grad_()
        linear_logprob_stats(hidden, weight, case.targets, impl="triton", **options).logprobs.sum().backward()
        return hidden.grad, weight.grad

    for options in (dict(backward="chunked"), dict(backward="fused", deterministic=True)):
        first, second = grads(**options), grads(**options)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]), options
