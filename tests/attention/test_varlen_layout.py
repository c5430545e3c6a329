"""The varlen description of a packed row (cu_seqlens, kv gather index) means the same as
the explicit-mask rule, and the flash-attn / torch varlen launchers pass it on correctly.

The CUDA kernels themselves cannot run here; stand-ins with their documented semantics
(causal aligned bottom-right, ``window_size=(left, right)``) receive exactly what the
launchers would hand the real kernels.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.attention.varlen  # noqa: F401 - the launcher under test imports it lazily

from fastalign.attention import PackedAttention, kernels
from fastalign.packing import pack_completion_examples, pack_preference_examples

PROMPTS = [[1, 2, 3, 4, 5], [6], [7, 8]]
CHOSEN = [[9, 10], [11, 12, 13, 14, 15, 16], [17]]
REJECTED = [[18], [19, 20, 21], [22, 23, 24, 25, 26]]


def _rows(mode):
    if mode == "completion":
        return pack_completion_examples(PROMPTS, CHOSEN, token_budget=64)
    return pack_preference_examples(PROMPTS, CHOSEN, REJECTED, token_budget=64, share_prompt=mode == "shared")


def varlen_stand_in(q, k, v, cu_q, cu_k, scale, window_left, softcap=None):
    """Per-sequence attention with bottom-right causal alignment, as flash-attn documents."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = torch.empty_like(q)
    for s in range(cu_q.numel() - 1):
        qs, ks, vs = (t[lo:hi] for t, lo, hi in ((q, cu_q[s], cu_q[s + 1]), (k, cu_k[s], cu_k[s + 1]), (v, cu_k[s], cu_k[s + 1])))
        lq, lk = qs.shape[0], ks.shape[0]
        i, j = torch.arange(lq)[:, None] + (lk - lq), torch.arange(lk)[None, :]
        allowed = j <= i
        if window_left >= 0:
            allowed &= i - j <= window_left
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[cu_q[s] : cu_q[s + 1]] = torch.einsum("hqk,khd->qhd", weights, vs)
    return out


def _qkv(tokens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, tokens, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(1, 2, tokens, 8, generator=generator, dtype=torch.float64)
    v = torch.randn(1, 2, tokens, 8, generator=generator, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("mode", ["shared", "unshared", "completion"])
@pytest.mark.parametrize("window", [None, 1, 3])
def test_varlen_description_equals_mask_rule(mode, window):
    (row,) = _rows(mode)
    meta = PackedAttention.from_batch(row)
    q, k, v = _qkv(row.num_tokens)
    expected = kernels.eager_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=window, softcap=None)
    qs, ks, vs = kernels.gather_varlen(q, k, v, meta)
    got = varlen_stand_in(qs, ks, vs, row.cu_seqlens_q, row.cu_seqlens_k, 0.3, window - 1 if window else -1)
    torch.testing.assert_close(got[None], expected, atol=1e-12, rtol=0)


def test_mutation_twin_top_left_alignment_differs():
    """Aligning causal top-left (SDPA's is_causal with Lq != Lk) would be wrong for [R] vs [P R]."""
    (row,) = _rows("shared")
    meta = PackedAttention.from_batch(row)
    q, k, v = _qkv(row.num_tokens)
    expected = kernels.eager_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=None, softcap=None)
    qs, ks, vs = kernels.gather_varlen(q, k, v, meta)
    cu_q = row.cu_seqlens_q
    lengths_q = cu_q.diff()
    # Pretend every key sequence were as long as its query sequence (top-left alignment).
    shortened = torch.nn.functional.pad(lengths_q.cumsum(0), (1, 0))
    gathered = torch.cat([ks[row.cu_seqlens_k[s] : row.cu_seqlens_k[s] + lengths_q[s]] for s in range(len(lengths_q))])
    values = torch.cat([vs[row.cu_seqlens_k[s] : row.cu_seqlens_k[s] + lengths_q[s]] for s in range(len(lengths_q))])
    wrong = varlen_stand_in(qs, gathered, values, cu_q, shortened, 0.3, -1)
    assert (wrong[None] - expected).abs().max() > 1e-2


def test_flash_launcher_arguments(monkeypatch):
    (row,) = _rows("shared")
    meta = PackedAttention.from_batch(row)
    q, k, v = _qkv(row.num_tokens)

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size, softcap):
        assert causal and dropout_p == 0.0 and max_q == row.max_seqlen_q and max_k == row.max_seqlen_k
        assert window_size[1] == 0
        return varlen_stand_in(q, k, v, cu_q, cu_k, softmax_scale, window_size[0], softcap)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func))
    for window, softcap in [(None, None), (3, 2.0)]:
        expected = kernels.eager_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=window, softcap=softcap)
        got = kernels.flash_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=window, softcap=softcap)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("has_window_size", [True, False])
def test_torch_varlen_launcher_detects_the_signature(monkeypatch, has_window_size):
    (row,) = _rows("shared")
    meta = PackedAttention.from_batch(row)
    q, k, v = _qkv(row.num_tokens)

    if has_window_size:  # torch 2.13: causal spelled window_size=(-1, 0); GQA through enable_gqa

        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
            assert window_size[1] == 0 and enable_gqa
            return varlen_stand_in(query, key, value, cu_seq_q, cu_seq_k, scale, window_size[0])

    else:  # older releases: is_causal, no GQA, no windows

        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, is_causal=False):
            assert is_causal and query.shape[1] == key.shape[1]
            return varlen_stand_in(query, key, value, cu_seq_q, cu_seq_k, scale, -1)

    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", varlen_attn)
    kernels.torch_varlen_signature.cache_clear()
    try:
        expected = kernels.eager_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=None, softcap=None)
        got = kernels.torch_varlen_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=None, softcap=None)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
        if not has_window_size:
            with pytest.raises(ValueError, match="no sliding windows"):
                kernels.torch_varlen_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=3, softcap=None)
    finally:
        kernels.torch_varlen_signature.cache_clear()


def dense_reference(q, k, v, meta, scale, window, softcap=None):
    """One [T, T] masked softmax over the whole row: the rule applied literally."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    weights = scores.masked_fill(~meta.dense_mask(window), float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2)


@pytest.mark.parametrize("mode", ["shared", "unshared", "completion"])
@pytest.mark.parametrize(("window", "softcap"), [(None, None), (2, None), (None, 1.5)])
def test_grouped_backends_equal_the_dense_rule(mode, window, softcap):
    from fastalign.packing import PackedBatch

    row = PackedBatch.cat(list(_rows(mode)) + list(_rows(mode)))  # several groups, two rows joined
    meta = PackedAttention.from_batch(row)
    q, k, v = _qkv(row.num_tokens, seed=1)
    expected = dense_reference(q, k, v, meta, 0.3, window, softcap)
    options = dict(scaling=0.3, dropout=0.0, sliding_window=window, softcap=softcap)
    torch.testing.assert_close(kernels.eager_packed(q, k, v, meta, **options), expected, atol=1e-12, rtol=0)
    if softcap is None:
        torch.testing.assert_close(kernels.sdpa_packed(q, k, v, meta, **options), expected, atol=1e-12, rtol=0)
