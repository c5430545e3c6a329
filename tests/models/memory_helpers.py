"""Shared by the memory-feature tests: one packed row, a DPO-like objective of the policy, and
its loss and every gradient (fp32) for comparing a memory feature with the plain path."""

from __future__ import annotations

import torch

from fastalign.models import PolicyModel, enable_activation_checkpointing, packed_logprobs
from fastalign.packing import PackedBatch, pack_preference_examples
from fastalign.testing import relative_error
from tests.models.tiny_models import example_lists, tiny_model

# fp32: the features reorder sums (per-tile weight gradients, per-slice attention) but compute
# the same function; a wrong tile boundary or a token lost moves the loss by ~1e-1.
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-5
WEIGHTS = torch.tensor([1.0, -0.5, 0.25, 2.0])


def packed_row() -> PackedBatch:
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    return row


def objective(policy: PolicyModel, row: PackedBatch) -> torch.Tensor:
    """A DPO-like scalar that weighs every example and both answers differently."""
    out = packed_logprobs(policy, row)
    weights = WEIGHTS[out.example_index]
    return (weights * (out.chosen - 0.3 * out.rejected)).sum()


def loss_and_grads(family: str, *, checkpointing: bool, **options) -> tuple[torch.Tensor, list[torch.Tensor], torch.nn.Module]:
    model = tiny_model(family).train()
    if checkpointing:
        enable_activation_checkpointing(model)
    loss = objective(PolicyModel(model, **options), packed_row())
    loss.backward()
    return loss.detach(), [parameter.grad.clone() for parameter in model.parameters()], model


def assert_same_loss_and_grads(got, expected, what: str) -> None:
    loss, grads = got[0], got[1]
    expected_loss, expected_grads = expected[0], expected[1]
    assert abs(float(loss) - float(expected_loss)) <= LOSS_ATOL, (what, float(loss), float(expected_loss))
    names = [name for name, _ in expected[2].named_parameters()]
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        error = relative_error(grad, expected_grad)
        assert error <= GRAD_RTOL, f"{what}: gradient of {name} off by {error:.2e}"

