"""Offload of checkpointed layer inputs. The hooks' code path runs on CPU (host copies without
pinned memory or streams): the same loss and gradients bit for bit, only the layer inputs (and
the final norm's input) moved, and the originals freed after the forward — with the twin that
without offloading they stay alive. ``PolicyModel`` refuses the option off CUDA; the pinned,
asynchronous path is tested on a GPU in ``test_offload_gpu.py``."""

from __future__ import annotations

import weakref

import pytest
import torch

from fastalign.models import PolicyModel, enable_activation_checkpointing
from fastalign.models.offload import CheckpointOffload
from tests.models.memory_helpers import objective, packed_row
from tests.models.tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class HostOffloadPolicy(PolicyModel):
    """``PolicyModel`` with its CUDA offload swapped for the same hooks on CPU, placed where
    ``PolicyModel`` places them (around the backbone only)."""

    def __init__(self, model, offload: CheckpointOffload) -> None:
        super().__init__(model)
        self.host_offload = offload

    def _offload(self, device):
        return self._offload_context(self.host_offload)


def _run(family: str, offload: CheckpointOffload | None, *, retain_graph: bool = False):
    """Loss, gradients and weak references to every decoder layer's input after the forward."""
    model = tiny_model(family).train()
    enable_activation_checkpointing(model)
    inputs: list[weakref.ref] = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: inputs.append(weakref.ref(args[0])))
             for layer in model.model.layers]
    policy = PolicyModel(model) if offload is None else HostOffloadPolicy(model, offload)
    loss = objective(policy, packed_row())
    alive_after_forward = sum(ref() is not None for ref in inputs)
    loss.backward(retain_graph=retain_graph)
    grads = [parameter.grad.clone() for parameter in model.parameters()]
    if retain_graph:  # a second backward unpacks every saved input again
        model.zero_grad()
        loss.backward()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    for hook in hooks:
        hook.remove()
    return loss.detach(), grads, alive_after_forward, len(inputs)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_offloaded_checkpoints_give_identical_gradients_and_free_the_layer_inputs(family):
    plain_loss, plain_grads, kept, layers = _run(family, None)
    assert kept == layers == 2  # twin: without offloading, checkpointing keeps every layer input
    offload = CheckpointOffload(torch.device("cpu"), min_bytes=0)
    loss, grads, alive, _ = _run(family, offload, retain_graph=True)
    assert alive == 0  # only the host copies are held for backward
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(got, expected) for got, expected in zip(grads, plain_grads))
    row_bytes = packed_row().num_tokens * 32 * 4
    # Four [T, H] fp32 tensors: both layer inputs, the final norm's input (copied once although
    # pow and mul both save it) and its normalized output; the rest is small ([T, 1] scales).
    assert offload.moved_bytes // row_bytes == 4


def test_small_tensors_stay_on_the_device():
    offload = CheckpointOffload(torch.device("cpu"), min_bytes=10**9)
    _, _, alive, layers = _run("llama", offload)
    assert offload.moved_bytes == 0 and alive == layers


def test_policy_model_refuses_offloading_off_cuda():
    policy = PolicyModel(tiny_model("llama").train(), offload_checkpoints=True)
    with pytest.raises(ValueError, match="offload_checkpoints=True needs a CUDA device"):
        policy(packed_row())


def test_offloading_without_activation_checkpointing_is_refused():
    policy = HostOffloadPolicy(tiny_model("llama").train(), CheckpointOffload(torch.device("cpu"), min_bytes=0))
    with pytest.raises(ValueError, match="needs activation checkpointing"):
        policy(packed_row())
    with torch.no_grad():  # nothing is saved without gradients: nothing to refuse
        policy(packed_row())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(min_bytes=-1), ValueError, "min_bytes must be an int >= 0"),
    (dict(pin_memory=True), ValueError, "pin_memory and stream need a CUDA device"),
])
def test_offload_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        CheckpointOffload(torch.device("cpu"), **kwargs)
    with pytest.raises(TypeError, match="device must be a torch.device"):
        CheckpointOffload("cpu")
    with pytest.raises(TypeError, match="offload_checkpoints must be a bool"):
        PolicyModel(tiny_model("llama"), offload_checkpoints="yes")
