"""Packed attention computations, one per backend, all on transformers' tensor layout.

Inputs: ``query [1, Hq, T, D]``, ``key``/``value [1, Hkv, T, D]`` (one packed row), a
``PackedAttention``; output ``[1, T, Hq, D]`` (what transformers' attention functions return).

The explicit-mask backends (eager, sdpa: CPU and tests) attend per attention group. A group
longer than ``QUERY_CHUNK`` slots (a long pair) is processed in chunks of query slots, each
against the keys up to its last slot, with its mask rows built for the chunk and never cached;
with gradients each chunk is its own checkpoint. So neither the ``[L, L]`` mask nor the
``[H, L, L]`` scores ever exist: memory grows linearly with the group length.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fastalign.attention.metadata import PackedAttention

QUERY_CHUNK = 1024  # query slots per chunk of a long group (mask rows [chunk, L] at a time)


def _repeat_heads(states: torch.Tensor, groups: int) -> torch.Tensor:
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def _to_groups(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[1, H, T, D]`` → ``[G, H, L, D]`` laid out by the group table."""
    return states[0][:, index].transpose(0, 1)


def _from_groups(out: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[G, H, L, D]`` → ``[1, T, H, D]``: groups are contiguous and in order, so the valid
    slots in row-major order are the tokens in order."""
    return out.transpose(1, 2)[valid][None]


def _grouped(query, key, value, meta: PackedAttention):
    """``[G, H, L, D]`` queries and (head-repeated) keys / values laid out by the group table."""
    index, valid = meta.groups()
    groups = query.shape[1] // key.shape[1]
    q = _to_groups(query, index)
    k, v = _to_groups(_repeat_heads(key, groups), index), _to_groups(_repeat_heads(value, groups), index)
    return q, k, v, valid


def _mask_rows(meta: PackedAttention, start: int, stop: int, keys: int, sliding_window: int | None) -> torch.Tensor:
    """Rows ``[start, stop)`` of ``meta.group_mask`` against the first ``keys`` slots: bool
    ``[G, stop - start, keys]``, built without the whole ``[G, L, L]`` mask."""
    index, valid = meta.groups()
    rows, cols = index[:, start:stop], index[:, :keys]
    keep = meta.allowed(rows[:, :, None], cols[:, None, :], sliding_window)
    keep = keep & valid[:, start:stop, None] & valid[:, None, :keys]
    own = torch.arange(start, stop, device=index.device)[:, None] == torch.arange(keys, device=index.device)[None, :]
    return keep | (own & ~valid[:, start:stop, None])


def _attend_in_chunks(attend: Callable, q, k, v, meta: PackedAttention, sliding_window: int | None) -> torch.Tensor:
    """``attend(q, k, v, mask)`` over ``[G, H, L, D]`` groups; chunks of query slots when the
    groups are longer than ``QUERY_CHUNK`` (see the module docstring). Returns ``[G, H, L, D]``."""
    length = q.shape[2]
    if length <= QUERY_CHUNK:
        return attend(q, k, v, meta.group_mask(sliding_window))
    outputs = []
    for start in range(0, length, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, length)
        # Packed layouts never let a token see a later slot; confirmed on the chunk's mask rows.
        keys = stop if not _mask_rows(meta, start, stop, length, sliding_window)[..., stop:].any() else length

        def chunk(q_rows, k_cols, v_cols, start=start, stop=stop, keys=keys):
            return attend(q_rows, k_cols, v_cols, _mask_rows(meta, start, stop, keys, sliding_window))

        args = (q[:, :, start:stop], k[:, :, :keys], v[:, :, :keys])
        if torch.is_grad_enabled():  # saves only the (view) inputs; mask and scores are rebuilt in backward
            outputs.append(checkpoint(chunk, *args, use_reentrant=False))
        else:
            outputs.append(chunk(*args))
    return torch.cat(outputs, dim=2)


def eager_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """Explicit scores and mask per attention group; supports everything (softcap included)."""

    def attend(q, k, v, mask):
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        # Softmax in at least fp32, like transformers' eager attention (float64 stays float64).
        weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
        weights = F.dropout(weights, p=dropout, training=dropout > 0)
        return torch.matmul(weights, v)

    q, k, v, valid = _grouped(query, key, value, meta)
    return _from_groups(_attend_in_chunks(attend, q, k, v, meta, sliding_window), valid)


def sdpa_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """``scaled_dot_product_attention`` per attention group with an explicit boolean mask
    (never ``is_causal``, which SDPA aligns top-left)."""
    if softcap is not None:
        raise ValueError("the sdpa backend cannot apply an attention logit softcap")

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=dropout, scale=scaling)

    q, k, v, valid = _grouped(query, key, value, meta)
    return _from_groups(_attend_in_chunks(attend, q, k, v, meta, sliding_window), valid)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """FlexAttention with a block mask from the packing rule; compiled on CUDA."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if dropout > 0:
        raise ValueError("the flex backend does not support attention dropout")
    on_cuda = query.is_cuda
    tokens = meta.num_tokens

    def build():
        def mask_mod(batch, head, q_index, k_index):
            return meta.allowed(q_index, k_index, sliding_window)

        return create_block_mask(mask_mod, None, None, tokens, tokens, device=query.device, _compile=on_cuda)

    block_mask = meta.cached(("flex", sliding_window, on_cuda), build)
    score_mod = None
    if softcap is not None:

        def score_mod(score, batch, head, q_index, k_index):
            return torch.tanh(score / softcap) * softcap

    attend = _compiled_flex() if on_cuda else flex_attention
    out = attend(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2)


def gather_varlen(query, key, value, meta: PackedAttention):
    """``[1, H, T, D]`` → queries ``[T, Hq, D]`` and keys/values gathered ``[K, Hkv, D]``."""
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1).index_select(0, meta.kv_index)
    v = value[0].transpose(0, 1).index_select(0, meta.kv_index)
    return q.contiguous(), k.contiguous(), v.contiguous()


def flash_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """flash-attn varlen; causal is aligned bottom-right, which is what ``[R]`` vs ``[P R]`` needs."""
    from flash_attn import flash_attn_varlen_func

    q, k, v = gather_varlen(query, key, value, meta)
    out = flash_attn_varlen_func(
        q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q, meta.max_seqlen_k,
        dropout_p=dropout, softmax_scale=scaling, causal=True,
        window_size=(sliding_window - 1 if sliding_window is not None else -1, 0),
        softcap=softcap or 0.0,
    )
    return out[None]


@functools.cache
def torch_varlen_signature() -> frozenset[str]:
    """Keyword names of ``torch.nn.attention.varlen.varlen_attn`` in this torch (empty if absent)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def torch_varlen_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """``torch.nn.attention.varlen.varlen_attn`` (CUDA). Causal is ``window_size=(-1, 0)`` in
    torch 2.13; older releases spelled it ``is_causal=True``."""
    from torch.nn.attention.varlen import varlen_attn

    if softcap is not None or dropout > 0:
        raise ValueError("torch varlen_attn supports neither an attention softcap nor dropout")
    params = torch_varlen_signature()
    q, k, v = gather_varlen(query, key, value, meta)
    kwargs = {"scale": scaling}
    if "window_size" in params:
        kwargs["window_size"] = (sliding_window - 1 if sliding_window is not None else -1, 0)
    elif sliding_window is not None:
        raise ValueError("this torch's varlen_attn has no window_size: no sliding windows")
    else:
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = varlen_attn(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q, meta.max_seqlen_k, **kwargs)
    return out[None]
