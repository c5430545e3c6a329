"""Long attention groups on the explicit-mask backends (eager, sdpa) are processed in chunks of
query slots: the same loss and every gradient as the whole-group computation (fp32; Llama on
sdpa, Mistral's window on sdpa, Gemma2's softcap and windows on eager), and no ``[L, L]`` tensor
allocated (allocation recorder; twin: the whole-group path allocates one)."""

from __future__ import annotations

import pytest
import torch

from fastalign.attention import kernels
from fastalign.models import PolicyModel, enable_activation_checkpointing, packed_logprobs
from fastalign.packing import pack_preference_examples
from fastalign.testing import AllocationRecorder, relative_error
from tests.models.tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
CHUNK = 16


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _long_row(*, short_pair: bool = True):
    """One pair of 60 + 20 + 20 tokens (an attention group of 100 slots), and a short pair (a
    second group, padded in the group table) unless ``short_pair=False``."""
    generator = torch.Generator().manual_seed(0)

    def tokens(count):
        return torch.randint(0, 61, (count,), generator=generator).tolist()

    pairs = [(60, 20, 20), (5, 3, 4)][: 2 if short_pair else 1]
    (row,) = pack_preference_examples(*([tokens(pair[part]) for pair in pairs] for part in range(3)),
                                      token_budget=128)
    return row


def _loss_and_grads(family: str, attention: str, checkpointing: bool):
    model = tiny_model(family).train()
    if checkpointing:
        enable_activation_checkpointing(model)
    out = packed_logprobs(PolicyModel(model, attention=attention), _long_row())
    loss = (out.chosen - 0.3 * out.rejected).sum()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family, attention", [("llama", "sdpa"), ("mistral", "sdpa"), ("gemma2", "eager")])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_chunked_groups_give_the_same_loss_and_gradients(monkeypatch, family, attention, checkpointing):
    whole = _loss_and_grads(family, attention, checkpointing)
    monkeypatch.setattr(kernels, "QUERY_CHUNK", CHUNK)
    chunked = _loss_and_grads(family, attention, checkpointing)
    assert abs(float(chunked[0]) - float(whole[0])) <= 1e-5
    for name, grad in whole[1].items():
        assert relative_error(chunked[1][name], grad) <= 1e-5, name


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_no_tensor_of_the_whole_group_squared(monkeypatch, attention):
    row = _long_row(short_pair=False)
    group = 100

    def largest(chunk):
        monkeypatch.setattr(kernels, "QUERY_CHUNK", chunk)
        model = tiny_model("llama").train()
        with AllocationRecorder() as recorder:
            out = packed_logprobs(PolicyModel(model, attention=attention), row)
            (out.chosen - out.rejected).sum().backward()
        return recorder.largest_numel

    assert largest(CHUNK) < group * group
    assert largest(1024) >= group * group  # twin: whole-group masks / scores are seen
