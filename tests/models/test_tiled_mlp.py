"""Sequence-tiled MLP: the same loss and every gradient as the untiled path (fp32, Llama,
Gemma2 with its softcaps and sliding windows, Mistral with its window, with and without
layer checkpointing; bf16 autocast recomputed as in the forward), and no ``[T, intermediate]``
tensor ever allocated (allocation recorder, with its twin: the untiled path does allocate one)
nor a tile's input gradient padded to the whole row."""

from __future__ import annotations

import copy

import pytest
import torch

from fastalign.models import PolicyModel
from fastalign.models.tiled_mlp import mlp_tile_tokens, set_mlp_tiling
from fastalign.testing import AllocationRecorder, relative_error
from tests.models.memory_helpers import GRAD_RTOL, assert_same_loss_and_grads, loss_and_grads, objective, packed_row
from tests.models.tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

INTERMEDIATE = 48  # tiny_models' intermediate_size; no other activation has this last dimension
TILE = 8


def _largest_intermediate_rows(recorder: AllocationRecorder, model: torch.nn.Module) -> int:
    """Most token rows of any allocated ``[..., intermediate]`` activation (weights excluded)."""
    weights = {tuple(parameter.shape) for parameter in model.parameters()}
    rows = [torch.Size(shape).numel() // INTERMEDIATE for _, shape in recorder.shapes
            if shape and shape[-1] == INTERMEDIATE and shape not in weights]
    return max(rows, default=0)


@pytest.mark.parametrize("family", ["llama", "gemma2", "mistral"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiled_mlp_gives_the_plain_loss_and_gradients(family, checkpointing):
    plain = loss_and_grads(family, checkpointing=checkpointing)
    tiled = loss_and_grads(family, checkpointing=checkpointing, mlp_tile_tokens=7)  # 7 does not divide 40
    assert_same_loss_and_grads(tiled, plain, f"{family} checkpointing={checkpointing}")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_no_intermediate_tensor_of_the_whole_row(checkpointing):
    from fastalign.models import enable_activation_checkpointing

    row = packed_row()

    def largest_rows(tile):
        model = tiny_model("gemma2").train()
        if checkpointing:
            enable_activation_checkpointing(model)
        policy = PolicyModel(model, mlp_tile_tokens=tile)
        with AllocationRecorder(record_shapes=True) as recorder:
            objective(policy, row).backward()  # forward, recompute and backward all recorded
        # A tile's input gradient padded out to the whole row (what slicing's backward does)
        whole_row_grads = [shape for op, shape in recorder.shapes
                           if "slice_backward" in op and shape == (row.num_tokens, model.config.hidden_size)]
        return _largest_intermediate_rows(recorder, model), whole_row_grads

    assert largest_rows(TILE) == (TILE, [])
    assert largest_rows(None)[0] == row.num_tokens  # twin: the recorder sees the untiled [T, I]


def test_no_grad_forward_is_tiled_and_exact():
    """The reference model's path: tiles written into one output, nothing saved."""
    row = packed_row()
    model = tiny_model("mistral")
    with torch.no_grad():
        expected = objective(PolicyModel(model), row)
        set_mlp_tiling(model, 5)
        with AllocationRecorder(record_shapes=True) as recorder:
            got = objective(PolicyModel(model), row)
    assert abs(float(got) - float(expected)) <= 1e-5
    assert _largest_intermediate_rows(recorder, model) == 5


@pytest.mark.parametrize("checkpointing", [False, True])
def test_backward_recomputes_under_the_forwards_autocast(checkpointing):
    """Under bf16 autocast every MLP call — forward, the layer's recompute and the tiles'
    recompute in backward (where autocast is off unless restored) — sees bf16 activations,
    and the gradients are the untiled ones up to bf16 rounding."""
    from fastalign.models import enable_activation_checkpointing

    row = packed_row()

    def run(tile):
        model = tiny_model("llama").train()
        if checkpointing:
            enable_activation_checkpointing(model)
        seen = []
        for layer in model.model.layers:
            layer.mlp.down_proj.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = objective(PolicyModel(model, mlp_tile_tokens=tile), row)
        loss.backward()
        return seen, [parameter.grad for parameter in model.parameters()]

    seen, grads = run(TILE)
    plain_seen, plain = run(None)
    assert len(seen) > len(plain_seen) and set(seen) == set(plain_seen) == {torch.bfloat16}
    for got, expected in zip(grads, plain):
        assert relative_error(got, expected) <= 3e-2  # bf16: 8 mantissa bits, sums in another order


def test_tiling_is_per_instance_and_survives_deepcopy():
    model, other = tiny_model("llama"), tiny_model("llama")
    keys = list(model.state_dict())
    set_mlp_tiling(model, 4)
    assert mlp_tile_tokens(model) == 4 and mlp_tile_tokens(other) is None
    assert list(model.state_dict()) == keys
    frozen = copy.deepcopy(model)  # the frozen reference copy
    assert mlp_tile_tokens(frozen) == 4
    assert frozen.model.layers[0].mlp.forward.__self__ is frozen.model.layers[0].mlp
    set_mlp_tiling(model, None)
    assert mlp_tile_tokens(model) is None and "forward" not in vars(model.model.layers[0].mlp)


def test_tiling_composes_with_lora_adapters_on_the_mlp():
    peft = pytest.importorskip("peft")
    row = packed_row()

    def grads(tile):
        model = peft.get_peft_model(tiny_model("llama").train(), peft.LoraConfig(
            r=2, target_modules=["gate_proj", "down_proj"], init_lora_weights=False))
        objective(PolicyModel(model, mlp_tile_tokens=tile), row).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    plain, tiled = grads(None), grads(6)
    assert plain.keys() == tiled.keys() and plain
    for name in plain:
        assert relative_error(tiled[name], plain[name]) <= GRAD_RTOL, name


@pytest.mark.parametrize("tile", [0, -3, 2.5, True, "8"])
def test_bad_tile_sizes_are_refused(tile):
    with pytest.raises(ValueError, match="tile_tokens must be None or an int >= 1"):
        PolicyModel(tiny_model("llama"), mlp_tile_tokens=tile)


def test_a_model_without_decoder_mlps_is_refused():
    model = tiny_model("llama")
    del model.model.layers[1].mlp
    with pytest.raises(ValueError, match="decoder layer 1 .* has no .mlp module"):
        set_mlp_tiling(model, 4)
