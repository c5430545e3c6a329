"""Packed attention computations, one per backend, all on transformers' tensor layout.

Inputs: ``query [1, Hq, T, D]``, ``key``/``value [1, Hkv, T, D]`` (one packed row), a
``PackedAttention``; output ``[1, T, Hq, D]`` (what transformers' attention functions return).

The explicit-mask backends (eager, sdpa: CPU and tests) attend per attention group, with the
key/value heads shared by their query heads (never repeated) and, for a row that is one group
(one long pair), on views of the inputs (no copies). When a group's mask rows and scores would
exceed ``SCORE_BUDGET_BYTES`` (a long pair), it is processed in chunks of query slots, each
against the keys up to its last slot, with its mask rows built for the chunk and never cached,
inside one autograd function (``_ChunkedAttention``) that keeps only its inputs and recomputes
each chunk in backward, accumulating the key/value gradients in place. So neither the
``[L, L]`` mask nor the ``[H, L, L]`` scores ever exist, and the memory of attention beyond its
inputs and output does not grow with the group length.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fastalign.attention.metadata import PackedAttention
from fastalign.ops.autocast import autocast_of_now

QUERY_CHUNK = 1024  # at most this many query slots per chunk of a long group
# Mask rows and scores of one chunk (sets the chunk length); more on a GPU, where each chunk
# is a few kernel launches and memory is plentiful.
SCORE_BUDGET_BYTES = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}
_MASK_BYTES = 8  # per mask element: the bool rows, their building, and SDPA's additive copy
_SCORE_COPIES = 5  # fp32 score-sized tensors eager attention keeps (scores, softmax, ...)


def _to_groups(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[1, H, T, D]`` → ``[G, H, L, D]`` laid out by the group table (the input itself when
    the row is one group)."""
    if index.shape == (1, states.shape[2]):
        return states  # one group spanning the row: index is 0..T-1
    return states[0][:, index].transpose(0, 1)


def _from_groups(out: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[G, H, L, D]`` → ``[1, T, H, D]``: groups are contiguous and in order, so the valid
    slots in row-major order are the tokens in order."""
    if valid.shape[0] == 1:  # one group: every slot is a token
        return out.transpose(1, 2)
    return out.transpose(1, 2)[valid][None]


def _grouped(query, key, value, meta: PackedAttention):
    """``[G, H, L, D]`` queries, keys and values laid out by the group table, and ``valid``."""
    index, valid = meta.groups()
    return _to_groups(query, index), _to_groups(key, index), _to_groups(value, index), valid


def _mask_rows(meta: PackedAttention, start: int, stop: int, keys: int, sliding_window: int | None) -> torch.Tensor:
    """Rows ``[start, stop)`` of ``meta.group_mask`` against the first ``keys`` slots: bool
    ``[G, stop - start, keys]``, built without the whole ``[G, L, L]`` mask."""
    index, valid = meta.groups()
    rows, cols = index[:, start:stop], index[:, :keys]
    keep = meta.allowed(rows[:, :, None], cols[:, None, :], sliding_window)
    keep = keep & valid[:, start:stop, None] & valid[:, None, :keys]
    own = torch.arange(start, stop, device=index.device)[:, None] == torch.arange(keys, device=index.device)[None, :]
    return keep | (own & ~valid[:, start:stop, None])


def _chunk_length(groups: int, length: int, score_bytes_per_key: int, device: torch.device) -> int:
    """Query slots per chunk: as many as the device's ``SCORE_BUDGET_BYTES`` allows against
    ``length`` keys (at least 16), at most ``QUERY_CHUNK``; ``length`` when the whole group fits."""
    budget = SCORE_BUDGET_BYTES.get(device.type, SCORE_BUDGET_BYTES["cpu"])
    per_row = groups * length * (_MASK_BYTES + score_bytes_per_key)
    return min(QUERY_CHUNK, length, max(16, budget // per_row))


def _chunk_schedule(meta: PackedAttention, length: int, chunk: int, sliding_window: int | None):
    """``(start, stop, keys)`` per chunk. Packed layouts never let a slot see a later one, so a
    chunk needs the keys up to its last slot; confirmed on the chunk's mask rows."""
    schedule = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        later = stop < length and bool(_mask_rows(meta, start, stop, length, sliding_window)[..., stop:].any())
        schedule.append((start, stop, length if later else stop))
    return schedule


@contextlib.contextmanager
def _replayed_random_state(cpu_state: torch.Tensor, cuda_state: torch.Tensor | None, device: torch.device):
    """Run with the random state of the forward (dropout draws the same masks), then restore."""
    saved_cpu = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state(device) if cuda_state is not None else None
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    try:
        yield
    finally:
        torch.set_rng_state(saved_cpu)
        if saved_cuda is not None:
            torch.cuda.set_rng_state(saved_cuda, device)


class _ChunkedAttention(torch.autograd.Function):
    """``attend`` over query chunks of ``[G, H, L, D]`` groups. Saves ``q``, ``k``, ``v`` only;
    backward recomputes each chunk (under the forward's autocast state, replaying its random
    state so dropout masks match) and adds its key/value gradients into one buffer (fp32 for
    half-precision inputs)."""

    @staticmethod
    def forward(ctx, q, k, v, attend: Callable, masks: Callable, schedule: list):
        ctx.attend, ctx.masks, ctx.schedule = attend, masks, schedule
        ctx.autocast = autocast_of_now(q.device.type)
        ctx.rng = torch.get_rng_state(), (torch.cuda.get_rng_state(q.device) if q.is_cuda else None)
        ctx.save_for_backward(q, k, v)
        # Laid out [G, L, H, D] in memory: transformers' next step (heads merged per token) is a view.
        out = q.new_empty((q.shape[0], q.shape[2], q.shape[1], v.shape[3])).transpose(1, 2)
        for start, stop, keys in schedule:
            out[:, :, start:stop] = attend(q[:, :, start:stop], k[:, :, :keys], v[:, :, :keys], masks(start, stop, keys))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:3]
        accumulate = torch.float32 if k.dtype in (torch.float16, torch.bfloat16) else k.dtype
        dq = torch.empty_like(q) if wanted[0] else None
        dk = torch.zeros(k.shape, dtype=accumulate, device=k.device) if wanted[1] else None
        dv = torch.zeros(v.shape, dtype=accumulate, device=v.device) if wanted[2] else None
        with _replayed_random_state(*ctx.rng, q.device):
            for start, stop, keys in ctx.schedule:
                with torch.enable_grad(), ctx.autocast():
                    inputs = [t.detach().requires_grad_(need) for t, need in
                              zip((q[:, :, start:stop], k[:, :, :keys], v[:, :, :keys]), wanted)]
                    out = ctx.attend(*inputs, ctx.masks(start, stop, keys))
                    grads = iter(torch.autograd.grad(out, [t for t in inputs if t.requires_grad],
                                                     grad_out[:, :, start:stop]))
                if wanted[0]:
                    dq[:, :, start:stop] = next(grads)  # the chunks cover every query slot once
                if wanted[1]:
                    dk[:, :, :keys] += next(grads)
                if wanted[2]:
                    dv[:, :, :keys] += next(grads)
        return (dq, None if dk is None else dk.to(k.dtype), None if dv is None else dv.to(v.dtype),
                None, None, None)


def _attend_in_chunks(attend: Callable, q, k, v, meta: PackedAttention, sliding_window: int | None,
                      score_bytes_per_key: int = 0) -> torch.Tensor:
    """``attend(q, k, v, mask)`` over ``[G, H, L, D]`` groups: whole when the group's mask and
    scores fit ``SCORE_BUDGET_BYTES`` (``score_bytes_per_key``: the scores' bytes per query
    slot and key), else in chunks of query slots (see the module docstring). Returns
    ``[G, Hq, L, D]``."""
    groups, length = q.shape[0], q.shape[2]
    chunk = _chunk_length(groups, length, score_bytes_per_key, q.device)
    if chunk >= length:
        return attend(q, k, v, meta.group_mask(sliding_window))
    schedule = _chunk_schedule(meta, length, chunk, sliding_window)

    def masks(start: int, stop: int, keys: int) -> torch.Tensor:
        return _mask_rows(meta, start, stop, keys, sliding_window)

    return _ChunkedAttention.apply(q, k, v, attend, masks, schedule)


def eager_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """Explicit scores and mask per attention group; supports everything (softcap included)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    shared = heads // kv_heads  # query heads per key/value head, adjacent (transformers' repeat_kv order)

    def attend(q, k, v, mask):
        groups, _, rows, dim = q.shape
        # [G, Hkv, shared * rows, D]: each key/value head against all of its query heads at once
        q = q.reshape(groups, kv_heads, shared * rows, dim)
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.view(groups, kv_heads, shared, rows, -1).masked_fill(~mask[:, None, None], float("-inf"))
        # Softmax in at least fp32, like transformers' eager attention (float64 stays float64).
        weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
        weights = F.dropout(weights, p=dropout, training=dropout > 0)
        out = torch.matmul(weights.view(groups, kv_heads, shared * rows, -1), v)
        return out.view(groups, heads, rows, dim)

    q, k, v, valid = _grouped(query, key, value, meta)
    score_bytes = _SCORE_COPIES * max(query.element_size(), 4) * heads
    return _from_groups(_attend_in_chunks(attend, q, k, v, meta, sliding_window, score_bytes), valid)


def sdpa_packed(query, key, value, meta: PackedAttention, *, scaling, dropout, sliding_window, softcap):
    """``scaled_dot_product_attention`` per attention group with an explicit boolean mask
    (never ``is_causal``, which SDPA aligns top-left); shared key/value heads through
    ``enable_gqa``."""
    if softcap is not None:
        raise ValueError("the sdpa backend cannot apply an attention logit softcap")
    gqa = query.shape[1] != key.shape[1]

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=dropout, scale=scaling,
                                              enable_gqa=gqa)

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
