"""Memory claims, measured with a TorchDispatchMode allocation recorder."""

from __future__ import annotations

import torch

from fastalign import linear_cross_entropy, linear_logprobs
from fastalign.testing import AllocationRecorder

VOCAB = 128256  # Llama 3


def test_torch_path_never_allocates_a_quarter_of_the_logits():
    from fastalign.ops.chunked_torch import chunk_rows

    n, h = 4 * chunk_rows(VOCAB), 16
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen, requires_grad=True)
    weight = (torch.randn(VOCAB, h, generator=gen) / 4).requires_grad_()
    targets = torch.randint(0, VOCAB, (n,), generator=gen)
    with AllocationRecorder() as fused:
        out = linear_logprobs(hidden, weight, targets, impl="torch", return_entropy=True)
        (out.logprobs.sum() + out.entropy.sum()).backward()
    assert fused.largest_numel <= n * VOCAB // 4, (fused.largest_numel, fused.largest_op)
    # Twin: the recorder does see a naive implementation's logits.
    with AllocationRecorder() as naive:
        torch.log_softmax(hidden.detach() @ weight.detach().T, -1)
    assert naive.largest_numel >= n * VOCAB
    assert fused.peak_bytes < naive.peak_bytes / 2


def test_cross_entropy_memory_independent_of_tokens():
    """Doubling N leaves the largest allocation (one logits chunk) unchanged."""
    h = 16
    weight = torch.randn(VOCAB, h) / 4

    def largest(n):
        hidden = torch.randn(n, h, requires_grad=True)
        targets = torch.randint(0, VOCAB, (n,))
        with AllocationRecorder() as recorder:
            linear_cross_entropy(hidden, weight, targets, impl="torch").backward()
        return recorder.largest_numel

    from fastalign.ops.chunked_torch import chunk_rows

    per_chunk = chunk_rows(VOCAB)
    assert largest(2 * per_chunk) == largest(4 * per_chunk) <= per_chunk * VOCAB


def _leaf_inputs(n: int, h: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``hidden [n, h]`` and ``weight [vocab, h]`` (leaves that need grad) and ``targets [n]``."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    weight = torch.randn(vocab, h, generator=gen).to(device).requires_grad_()
    return hidden, weight, torch.randint(0, vocab, (n,), generator=gen).to(device)


def test_triton_fused_backward_allocates_nothing_vocab_sized_per_token(kernel_device):
    """Minimum-memory Triton path: allocations are O(N) and the weight-shaped dW accumulator."""
    n, h, vocab = 40, 16, 4096
    hidden, weight, targets = _leaf_inputs(n, h, vocab, kernel_device)
    with AllocationRecorder(record_shapes=True) as recorder:
        linear_logprobs(hidden, weight, targets, impl="triton", backward="fused").sum().backward()
    assert recorder.largest_numel <= vocab * h
    assert all(torch.Size(s).numel() < n * vocab // 4 or s == (vocab, h) for _, s in recorder.shapes)


def test_triton_chunked_backward_stays_within_its_budget(kernel_device):
    """Default Triton path: the logits gradient exists one budget-sized chunk at a time."""
    n, h, vocab = 300, 16, 4096
    hidden, weight, targets = _leaf_inputs(n, h, vocab, kernel_device)
    budget = 128 * vocab * 4  # one 128-row fp32 chunk
    with AllocationRecorder(record_shapes=True) as recorder:
        linear_logprobs(hidden, weight, targets, impl="triton", backward="chunked",
                        backward_memory_budget=budget).sum().backward()
    vocab_sized = [torch.Size(s).numel() for _, s in recorder.shapes if s != (vocab, h)]
    assert max(vocab_sized) * 4 <= budget < n * vocab * 4 // 2
    # Twin: with room for every row, the recorder sees the whole [N, V] gradient.
    with AllocationRecorder(record_shapes=True) as recorder:
        linear_logprobs(hidden, weight, targets, impl="triton", backward="chunked").sum().backward()
    assert max(torch.Size(s).numel() for _, s in recorder.shapes) >= n * vocab
