"""The fused linear log-prob op (both impls) against the float64 full-logits oracle.

Each correctness test has a mutation twin: the same comparison on a deliberately wrong
computation must fail, proving the tolerance cannot hide that bug.
"""

from __future__ import annotations

import pytest
import torch

from fastalign import linear_logprobs
from fastalign.ops.linear_logprobs import linear_logprob_stats
from tests.ops.oracle_check import assert_matches_oracle, make_case

IMPLS = ["torch", "triton", "triton-fused"]  # triton-fused: the minimum-memory backward
DTYPES = [torch.float32, torch.float16]
TAIL = 128  # one vocab tile of the interpreter configuration


def op_kwargs(impl: str) -> dict:
    """Keyword arguments of a direct op call for a parametrized ``impl``."""
    return {"impl": "triton", "backward": "fused"} if impl == "triton-fused" else {"impl": impl}


def drop_last_vocab_tile(h, w, t, b):
    return h, w[:-TAIL], t, (b[:-TAIL] if b is not None else None)


def shift_targets(h, w, t, b):
    return h, w, torch.roll(t, 1, dims=-1), b


@pytest.fixture
def device(kernel_device, request):
    return kernel_device if request.node.callspec.params.get("impl", "").startswith("triton") else torch.device("cpu")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h,v", [(37, 32, 1000), (1, 16, 1000)])
def test_matches_oracle_across_shapes(impl, dtype, n, h, v, device):
    case = make_case(n, h, v, dtype=dtype, device=device, target_high=v - TAIL)
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, transform=drop_last_vocab_tile)
    if n > 1:
        with pytest.raises(AssertionError):
            assert_matches_oracle(case, impl, transform=shift_targets)


# Many vocab tiles are the point here, not the backward mode: the fused one (slow under the
# interpreter at this V) is covered by every other test.
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gpt2_sized_vocab(impl, device):
    """V = 50257: many tiles, a ragged last one."""
    case = make_case(5, 16, 50257, device=device, target_high=50257 - TAIL, seed=3)
    case.targets[0] = 50257 - TAIL - 1
    assert_matches_oracle(case, impl, outputs=("logprobs", "entropy"))
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, outputs=("logprobs", "entropy"), transform=shift_targets)


@pytest.mark.parametrize("impl", IMPLS)
def test_target_in_last_ragged_tile(impl, device):
    case = make_case(9, 16, 1000, device=device, logit_scale=3.0, seed=5)
    case.targets[:] = torch.arange(991, 1000)
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, transform=lambda h, w, t, b: (h, w, t - 1, b))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias(impl, dtype, device):
    case = make_case(21, 32, 1000, dtype=dtype, device=device, with_bias=True)
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, transform=lambda h, w, t, b: (h, w, t, b * 0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_and_temperature(impl, dtype, device):
    # Logit scale 20 with cap 10 puts many logits deep in tanh's saturation.
    case = make_case(19, 32, 1000, dtype=dtype, device=device, logit_scale=20.0,
                     softcap=10.0, temperature=0.7)
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, op_options={"softcap": None, "temperature": 0.7})
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, op_options={"softcap": 10.0, "temperature": 1.0})


@pytest.mark.parametrize("impl", IMPLS)
def test_huge_logits(impl, device):
    """Logits ~1e4 (fp32): no overflow, entropy without cancellation."""
    case = make_case(17, 32, 1000, device=device, logit_scale=1e4, seed=7)
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, transform=shift_targets)


@pytest.mark.parametrize("impl", IMPLS)
def test_ignored_rows(impl, device):
    case = make_case(40, 16, 1000, device=device, ignored=[0, 5, 6, 7, 39] + list(range(8, 36)))
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        # Scoring ignored rows as token 0 must be caught.
        assert_matches_oracle(case, impl, transform=lambda h, w, t, b: (h, w, t.clamp(min=0), b))


@pytest.mark.parametrize("impl", IMPLS)
def test_entropy_gradient(impl, device):
    case = make_case(23, 32, 1000, device=device, logit_scale=4.0)
    assert_matches_oracle(case, impl, outputs=("logprobs", "entropy"))
    with pytest.raises(AssertionError):
        # Twin: an op whose entropy does not backpropagate.
        assert_matches_oracle(case, impl, outputs=("logprobs", "entropy"),
                              postprocess=lambda s: s._replace(entropy=s.entropy.detach()))


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_weight_computes_no_weight_grad(impl, device):
    case = make_case(29, 32, 1000, device=device, with_bias=True)
    case.frozen_weight = True
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, transform=shift_targets)
    hidden = case.hidden.clone().requires_grad_()
    weight = case.weight.clone()
    linear_logprobs(hidden, weight, case.targets, **op_kwargs(impl)).sum().backward()
    assert weight.grad is None and hidden.grad is not None


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_hidden_is_read_in_place(impl, device):
    """hidden[:, :-1] of a [B, T, H] tensor: a strided view, shifted like causal LM labels."""
    gen = torch.Generator().manual_seed(11)
    case = make_case(1, 32, 1000, device=device)
    case.hidden = torch.randn(3, 9, 32, generator=gen).to(device)
    case.targets = torch.randint(0, 1000, (3, 9), generator=gen).to(device)[:, 1:]
    case.hidden_view = lambda full: full[:, :-1]
    seen = []
    assert_matches_oracle(case, impl, transform=lambda h, w, t, b: (seen.append(h) or h, w, t, b))
    assert not seen[0].is_contiguous()
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, transform=lambda h, w, t, b: (h.roll(1, dims=1), w, t, b))


def test_non_contiguous_hidden_is_not_copied_whole():
    """The chunked path gathers rows a chunk at a time instead of copying the whole view."""
    from fastalign.ops.chunked_torch import chunk_rows
    from fastalign.testing import AllocationRecorder

    vocab, h = 65536, 64
    per_chunk = chunk_rows(vocab)
    full = torch.randn(4, per_chunk // 2 + 1, h)  # 2 chunks of rows in all
    weight = torch.randn(vocab, h)
    targets = torch.randint(0, vocab, (4, per_chunk // 2))
    with AllocationRecorder(record_shapes=True) as recorder:
        linear_logprobs(full[:, :-1], weight, targets, impl="torch")
    hidden_sized = [s for _, s in recorder.shapes if len(s) >= 2 and s[-1] == h and s != (vocab, h)]
    assert hidden_sized, "the recorder saw no row gathers at all"
    assert max(torch.Size(s).numel() for s in hidden_sized) <= per_chunk * h < full[:, :-1].numel()


def test_float64_torch_path_is_exact():
    case = make_case(13, 16, 300, dtype=torch.float64, with_bias=True, softcap=5.0, temperature=1.3)
    assert_matches_oracle(case, "torch")
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, "torch", op_options={"softcap": 5.0, "temperature": 1.3001})


def test_float64_gradcheck_torch_path():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.tensor([1, -100, 6, 0])

    def fn(h, w, b):
        out = linear_logprob_stats(h, w, targets, bias=b, softcap=3.0, temperature=0.9,
                                   with_entropy=True, with_logit_sum=True, impl="torch")
        return out.logprobs, out.entropy, out.lse, out.logit_sum

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_and_all_ignored(impl, device):
    weight = torch.randn(100, 16, device=device, requires_grad=True)
    empty_hidden = torch.randn(0, 16, device=device, requires_grad=True)
    out = linear_logprobs(empty_hidden, weight, torch.zeros(0, dtype=torch.long, device=device),
                          **op_kwargs(impl), return_entropy=True)
    assert out.logprobs.shape == (0,) and out.entropy.shape == (0,)
    out.logprobs.sum().backward()
    assert empty_hidden.grad.shape == (0, 16)

    hidden = torch.randn(2, 5, 16, device=device, requires_grad=True)
    targets = torch.full((2, 5), -100, device=device)
    out = linear_logprobs(hidden, weight, targets, **op_kwargs(impl), return_entropy=True)
    assert torch.equal(out.logprobs, torch.zeros(2, 5, device=device))
    assert torch.equal(out.entropy, torch.zeros(2, 5, device=device))
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("impl", IMPLS)
def test_custom_ignore_index_inside_vocab(impl, device):
    case = make_case(12, 16, 500, device=device, ignore_index=3)
    case.targets[::3] = 3
    assert_matches_oracle(case, impl)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, impl, op_options={"ignore_index": -100})


def test_entropy_namedtuple_and_dtype():
    hidden = torch.randn(2, 3, 8, dtype=torch.float16)
    weight = torch.randn(50, 8, dtype=torch.float16)
    targets = torch.randint(0, 50, (2, 3))
    out = linear_logprobs(hidden, weight, targets, return_entropy=True)
    assert out.logprobs.dtype == torch.float32 and out.logprobs.shape == (2, 3)
    assert out._fields == ("logprobs", "entropy")
    plain = linear_logprobs(hidden, weight, targets)
    assert torch.equal(plain, out.logprobs)


def test_autocast_casts_explicitly():
    """Under CPU autocast (bf16) an fp32 weight is cast like F.linear would; grads reach fp32."""
    hidden = torch.randn(6, 16, requires_grad=True)
    weight = torch.randn(64, 16, requires_grad=True)
    targets = torch.randint(0, 64, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_logprobs(hidden, weight, targets, impl="torch")
    expected = linear_logprobs(hidden.bfloat16(), weight.bfloat16(), targets, impl="torch")
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    out.sum().backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
