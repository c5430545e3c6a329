"""Sequence-tiled MLP: each decoder layer's MLP runs over tiles of tokens, so its
``[tokens, intermediate]`` activations exist for one tile at a time.

An MLP block is position-wise (every token's output depends only on that token's input), so
running it tile by tile gives the same function. With gradients, one autograd function
(``_TiledMLP``) keeps only the layer's hidden states (its input, no copy) and its backward
recomputes and differentiates one tile at a time, writing each tile's input gradient into one
buffer. Inside a checkpointed decoder layer this runs again in the layer's recompute, so at no
point of the step — forward, the layer's recompute, backward — is an ``[L, intermediate]``
tensor alive, nor a whole-row gradient per tile. The price is one more MLP forward per tile in
backward (about +25% of the MLP's FLOPs under layer checkpointing). Without gradients (the
reference model) the tiles are written into one output and nothing is saved.

The tiling is installed per module instance (``mlp.forward``), never on the class: other
models of the same class are untouched, ``state_dict`` keys do not change, and a
``copy.deepcopy`` of the model (the frozen reference) keeps it.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from fastalign.ops.autocast import autocast_of_now

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


def _tiles_into_one(forward, mlp: nn.Module, rows: torch.Tensor, tile: int) -> torch.Tensor:
    """``forward(mlp, tile)`` over tiles of ``rows [N, H]`` written into one ``[N, H']`` output."""
    first = forward(mlp, rows[:tile])
    out = first.new_empty((rows.shape[0], first.shape[-1]))
    out[:tile] = first
    del first
    for start in range(tile, rows.shape[0], tile):
        out[start:start + tile] = forward(mlp, rows[start:start + tile])
    return out


class _TiledMLP(torch.autograd.Function):
    """The MLP over tiles of rows, differentiable: saves only its input rows; backward
    recomputes and differentiates one tile at a time (under the forward's autocast state),
    writing the input gradient tile by tile into one buffer and summing the parameters'
    gradients over tiles (fp32 for half-precision parameters), so neither a whole-row
    ``[N, intermediate]`` activation nor a whole-row gradient per tile ever exists."""

    @staticmethod
    def forward(ctx, rows, mlp, tile, autocast, *params):
        ctx.mlp, ctx.tile, ctx.autocast = mlp, tile, autocast
        ctx.save_for_backward(rows, *params)
        return _tiles_into_one(type(mlp).forward, mlp, rows, tile)

    @staticmethod
    def backward(ctx, grad_out):
        rows, *params = ctx.saved_tensors
        want_rows, want_params = ctx.needs_input_grad[0], ctx.needs_input_grad[4:]
        wanted = [param for param, need in zip(params, want_params) if need]
        d_rows = torch.empty_like(rows) if want_rows else None
        d_params = [torch.zeros(param.shape, device=param.device,
                                dtype=torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype)
                    for param in wanted]
        forward = type(ctx.mlp).forward
        for start in range(0, rows.shape[0], ctx.tile):
            with torch.enable_grad(), ctx.autocast():
                inputs = rows[start:start + ctx.tile].detach().requires_grad_(want_rows)
                out = forward(ctx.mlp, inputs)
            grads = torch.autograd.grad(out, ([inputs] if want_rows else []) + wanted,
                                        grad_out[start:start + ctx.tile], allow_unused=True)
            if want_rows:
                d_rows[start:start + ctx.tile] = grads[0]
                grads = grads[1:]
            for total, grad in zip(d_params, grads):
                if grad is not None:
                    total += grad
        wanted_grads = iter(total.to(param.dtype) for total, param in zip(d_params, wanted))
        return (d_rows, None, None, None, *[next(wanted_grads) if need else None for need in want_params])


def _tiled_forward(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``type(self).forward`` over tiles of rows of ``hidden [..., H]``; same shape and dtype out."""
    tile = getattr(self, _TILE_ATTRIBUTE)
    rows = hidden.reshape(-1, hidden.shape[-1])
    if rows.shape[0] <= tile:
        return type(self).forward(self, hidden)
    params = [param for param in self.parameters() if param.requires_grad]
    if torch.is_grad_enabled() and (rows.requires_grad or params):
        out = _TiledMLP.apply(rows, self, tile, autocast_of_now(rows.device.type), *params)
    else:  # the reference model: nothing to differentiate, nothing saved
        out = _tiles_into_one(type(self).forward, self, rows, tile)
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
