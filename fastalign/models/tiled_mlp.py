"""Sequence-tiled MLP: each decoder layer's MLP runs over tiles of tokens, so its
``[tokens, intermediate]`` activations exist for one tile at a time.

An MLP block is position-wise (every token's output depends only on that token's input), so
running it tile by tile gives the same function. With gradients, each tile is its own
(non-reentrant) checkpoint: the forward keeps only the tile's input, a view of the layer's
hidden states, and the backward recomputes and differentiates one tile at a time. Inside a
checkpointed decoder layer this nests under the layer's checkpoint, so at no point of the
step — forward, the layer's recompute, backward — is an ``[L, intermediate]`` tensor alive.
The price is one more MLP forward per tile in backward (about +25% of the MLP's FLOPs under
layer checkpointing). Without gradients (the reference model) the tiles are written into one
output and nothing is saved.

The tiling is installed per module instance (``mlp.forward``), never on the class: other
models of the same class are untouched, ``state_dict`` keys do not change, and a
``copy.deepcopy`` of the model (the frozen reference) keeps it.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_TILE_ATTRIBUTE = "_fastalign_mlp_tile_tokens"


def decoder_mlps(model: nn.Module) -> list[nn.Module]:
    """The ``mlp`` module of every decoder layer of a (PEFT-wrapped) transformers model.

    Raises ``ValueError`` when the model has no ``layers`` list or a layer has no ``mlp``.
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap PEFT
    layers = getattr(getattr(lm, "base_model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no .layers list)")
    mlps = []
    for index, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise ValueError(f"decoder layer {index} ({type(layer).__name__}) has no .mlp module to tile")
        mlps.append(mlp)
    return mlps


def _tiled_forward(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``type(self).forward`` over tiles of rows of ``hidden [..., H]``; same shape and dtype out."""
    tile = getattr(self, _TILE_ATTRIBUTE)
    forward = type(self).forward
    rows = hidden.reshape(-1, hidden.shape[-1])
    count = rows.shape[0]
    if count <= tile:
        return forward(self, hidden)
    starts = range(0, count, tile)
    if torch.is_grad_enabled():
        # One checkpoint per tile: saves the tile's input (a view, no copy); its backward
        # recomputes [tile, intermediate] and frees it before the next tile's backward runs.
        parts = [checkpoint(forward, self, rows[start:start + tile], use_reentrant=False) for start in starts]
        out = torch.cat(parts)
    else:
        first = forward(self, rows[:tile])
        out = first.new_empty((count, first.shape[-1]))
        out[:tile] = first
        del first
        for start in starts[1:]:
            out[start:start + tile] = forward(self, rows[start:start + tile])
    if out.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"{type(self).__name__} is not a position-wise [..., H] -> [..., H] MLP; it cannot be tiled")
    return out.reshape(hidden.shape)


def set_mlp_tiling(model: nn.Module, tile_tokens: int | None) -> None:
    """Run every decoder layer's MLP over tiles of ``tile_tokens`` tokens (``None``: whole rows).

    Args:
        model: a transformers causal LM (optionally PEFT-wrapped) whose decoder layers hold a
            position-wise ``mlp`` mapping ``[..., H]`` to ``[..., H]`` (Llama, Mistral, Qwen2/3,
            Gemma2, ...).
        tile_tokens: tokens per tile, ``>= 1``, or ``None`` to remove the tiling.

    Idempotent; calling it again changes the tile size.
    """
    if tile_tokens is not None and (isinstance(tile_tokens, bool) or not isinstance(tile_tokens, int) or tile_tokens < 1):
        raise ValueError(f"tile_tokens must be None or an int >= 1, got {tile_tokens!r}")
    for mlp in decoder_mlps(model):
        if tile_tokens is None:
            if _TILE_ATTRIBUTE in vars(mlp):
                delattr(mlp, _TILE_ATTRIBUTE)
                del mlp.forward  # back to the class's forward
            continue
        if "forward" in vars(mlp) and _TILE_ATTRIBUTE not in vars(mlp):
            raise ValueError(f"{type(mlp).__name__} already has an instance-level forward (another wrapper); "
                             "fastalign will not replace it")
        setattr(mlp, _TILE_ATTRIBUTE, tile_tokens)
        mlp.forward = types.MethodType(_tiled_forward, mlp)


def mlp_tile_tokens(model: nn.Module) -> int | None:
    """The tile size installed by ``set_mlp_tiling`` (``None`` when the MLPs are not tiled)."""
    sizes = {getattr(mlp, _TILE_ATTRIBUTE, None) for mlp in decoder_mlps(model)}
    return sizes.pop() if len(sizes) == 1 else None
