"""The layout helpers and checks of fastalign/attention/kernels.py, tested directly: the group
table round trip (views for a one-group row), shared key/value heads, the varlen gather, mask
rows of a chunk, the chunk schedule and length of a long group, the chunked function's
gradients and dropout replay, and the options each backend refuses.

(The attention values of every backend against the dense rule and the varlen launchers are in
test_varlen_layout.py; chunked loss and gradients through a model in test_chunked_attention.py.)
"""

from __future__ import annotations

import pytest
import torch

from fastalign.attention import PackedAttention, kernels
from fastalign.packing import pack_preference_examples


def _meta(share_prompt: bool = True) -> PackedAttention:
    # Example 0: P = [1, 2], C = [4, 5], R = [7]; example 1: P = [3], C = [6], R = [8, 9].
    (row,) = pack_preference_examples([[1, 2], [3]], [[4, 5], [6]], [[7], [8, 9]], token_budget=64,
                                      share_prompt=share_prompt)
    return PackedAttention.from_batch(row)


def _numbered(heads: int, tokens: int, dim: int = 2) -> torch.Tensor:
    """``[1, H, T, D]`` whose entry ``[0, h, t, d]`` is ``100 h + 10 t + d``: every slot readable."""
    h, t, d = torch.meshgrid(torch.arange(heads), torch.arange(tokens), torch.arange(dim), indexing="ij")
    return (100 * h + 10 * t + d)[None].double()


def _qkv(tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, tokens, 8, generator=generator, dtype=torch.float64) for heads in (4, 2, 2))


def test_group_table_layout_and_round_trip():
    meta = _meta()  # groups of 5 and 4 tokens
    states = _numbered(2, 9)
    index, valid = meta.groups()
    grouped = kernels._to_groups(states, index)
    assert grouped.shape == (2, 2, 5, 2)  # [G, H, L, D]
    assert grouped[0, 1, :, 0].tolist() == [100, 110, 120, 130, 140]  # head 1, tokens 0-4
    assert grouped[1, 0, :4, 0].tolist() == [50, 60, 70, 80]  # head 0, tokens 5-8
    assert grouped[1, 0, 4, 0].item() == 0  # the padding slot reads token 0
    back = kernels._from_groups(grouped, valid)  # [1, T, H, D]: transformers' output layout
    assert torch.equal(back, states.transpose(1, 2))


def test_gather_varlen_lays_out_the_key_sequences():
    meta = _meta()
    q, k, v = _numbered(4, 9), _numbered(2, 9), _numbered(2, 9) + 0.5
    qs, ks, vs = kernels.gather_varlen(q, k, v, meta)
    assert qs.shape == (9, 4, 2) and ks.shape == vs.shape == (12, 2, 2)
    assert all(t.is_contiguous() for t in (qs, ks, vs))
    assert torch.equal(qs, q[0].transpose(0, 1))
    # Key sequences [P0 C0] [P0 R0] [P1 C1] [P1 R1]: the prompt is gathered once per answer.
    assert (ks[:, 0, 0] / 10).long().tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6, 5, 7, 8]
    assert torch.equal(vs - 0.5, ks)


@pytest.mark.parametrize("share_prompt", [True, False])
@pytest.mark.parametrize("window", [None, 1, 2])
def test_mask_rows_are_the_group_mask_sliced(share_prompt, window):
    meta = _meta(share_prompt)
    full = meta.group_mask(window)
    length = full.shape[1]
    for start in range(length):
        for stop in range(start + 1, length + 1):
            for keys in range(1, length + 1):
                rows = kernels._mask_rows(meta, start, stop, keys, window)
                assert torch.equal(rows, full[:, start:stop, :keys]), (start, stop, keys)


def test_a_long_group_is_attended_in_query_chunks(monkeypatch):
    meta = _meta()  # group length 5
    q, k, v = kernels._grouped(*_qkv(9), meta)[:3]
    calls = []

    def attend(q_rows, k_cols, v_cols, mask):
        calls.append((q_rows.shape[2], k_cols.shape[2], v_cols.shape[2], tuple(mask.shape)))
        k_cols, v_cols = (t.repeat_interleave(2, dim=1) for t in (k_cols, v_cols))  # 4 query heads, 2 kv heads
        weights = (q_rows @ k_cols.transpose(2, 3)).masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return weights @ v_cols

    with torch.no_grad():
        whole = kernels._attend_in_chunks(attend, q, k, v, meta, None)
        assert calls == [(5, 5, 5, (2, 5, 5))]
        monkeypatch.setattr(kernels, "QUERY_CHUNK", 2)
        calls.clear()
        chunked = kernels._attend_in_chunks(attend, q, k, v, meta, None)
    # Slots [0, 2), [2, 4), [4, 5), each against the keys up to its last slot only.
    assert calls == [(2, 2, 2, (2, 2, 2)), (2, 4, 4, (2, 2, 4)), (1, 5, 5, (2, 1, 5))]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_chunks_are_recomputed_for_the_gradients(monkeypatch):
    monkeypatch.setattr(kernels, "QUERY_CHUNK", 2)
    meta = _meta()
    leaves = [t.requires_grad_() for t in _qkv(9)]
    options = {"scaling": 0.3, "dropout": 0.0, "sliding_window": None, "softcap": None}
    out = kernels.eager_packed(*leaves, meta, **options)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    monkeypatch.setattr(kernels, "QUERY_CHUNK", 1024)
    plain = [t.detach().requires_grad_() for t in leaves]
    expected = kernels.eager_packed(*plain, meta, **options)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), plain)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_a_one_group_row_is_attended_on_views():
    (row,) = pack_preference_examples([[1, 2, 3]], [[4, 5]], [[6]], token_budget=64)
    meta = PackedAttention.from_batch(row)
    states = _numbered(2, meta.num_tokens)
    index, valid = meta.groups()
    assert kernels._to_groups(states, index) is states
    out = kernels._from_groups(states, valid)
    assert out.data_ptr() == states.data_ptr() and torch.equal(out, states.transpose(1, 2))


@pytest.mark.parametrize("backend", [kernels.eager_packed, kernels.sdpa_packed])
def test_shared_key_value_heads_equal_repeated_heads(backend):
    # Query heads 0-1 read key/value head 0, heads 2-3 head 1 (transformers' repeat_kv order).
    meta = _meta()
    q, k, v = _qkv(9, seed=3)
    options = {"scaling": 0.3, "dropout": 0.0, "sliding_window": None, "softcap": None}
    shared = backend(q, k, v, meta, **options)
    repeated = backend(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), meta, **options)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-12)


def test_the_chunk_length_follows_the_score_budget(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(kernels, "SCORE_BUDGET_BYTES", {"cpu": 8 * 1000 * 100, "cuda": 8 * 1000 * 400})
    assert kernels._chunk_length(1, 1000, 0, cpu) == 100  # 8 bytes of mask per key: 100 rows of 1000 keys
    assert kernels._chunk_length(1, 1000, 0, cuda) == 400  # the device's own budget
    assert kernels._chunk_length(1, 1000, 0, torch.device("meta")) == 100  # other devices: the CPU's
    assert kernels._chunk_length(2, 1000, 0, cpu) == 50  # two groups share the budget
    assert kernels._chunk_length(1, 1000, 8, cpu) == 50  # scores as large as the mask again
    assert kernels._chunk_length(1, 80, 0, cpu) == 80  # the whole group fits
    assert kernels._chunk_length(1, 10**6, 0, cpu) == 16  # never below 16 rows
    monkeypatch.setattr(kernels, "QUERY_CHUNK", 40)
    assert kernels._chunk_length(1, 1000, 0, cpu) == 40


def test_chunked_dropout_replays_its_masks_in_backward(monkeypatch):
    """With dropout, backward recomputes each chunk under the forward's random state: the
    gradients are those of the same chunks run under autograd from that state."""
    monkeypatch.setattr(kernels, "QUERY_CHUNK", 2)
    meta = _meta()
    leaves = [t.requires_grad_() for t in _qkv(9, seed=4)]
    options = {"scaling": 0.3, "dropout": 0.5, "sliding_window": None, "softcap": None}
    torch.manual_seed(7)
    out = kernels.eager_packed(*leaves, meta, **options)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    after = torch.rand(1)  # the next draw after forward and backward

    torch.manual_seed(7)
    plain = [t.detach().requires_grad_() for t in leaves]
    q, k, v, valid = kernels._grouped(*plain, meta)
    scores_of = []
    shared = 2
    for start, stop, keys in kernels._chunk_schedule(meta, q.shape[2], 2, None):
        kc, vc = (t[:, :, :keys].repeat_interleave(shared, dim=1) for t in (k, v))
        scores = (q[:, :, start:stop] @ kc.transpose(2, 3) * 0.3).masked_fill(
            ~kernels._mask_rows(meta, start, stop, keys, None)[:, None], float("-inf"))
        scores_of.append(torch.nn.functional.dropout(scores.softmax(-1), p=0.5) @ vc)
    expected = kernels._from_groups(torch.cat(scores_of, dim=2), valid)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.equal(after, torch.rand(1)), "backward leaves the random stream where the forward left it"
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), plain)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_eager_keeps_a_half_precision_dtype():
    meta = _meta()
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(9))
    out = kernels.eager_packed(q, k, v, meta, scaling=0.3, dropout=0.0, sliding_window=None, softcap=None)
    assert out.dtype == torch.bfloat16
    reference = kernels.eager_packed(*(t.double() for t in (q, k, v)), meta, scaling=0.3, dropout=0.0,
                                     sliding_window=None, softcap=None)
    assert (out.double() - reference).abs().max() < 2e-2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_on_cpu_equals_eager_with_softcap_and_window():
    meta = _meta()
    q, k, v = (t.float() for t in _qkv(9, seed=2))
    options = {"scaling": 0.3, "dropout": 0.0, "sliding_window": 2, "softcap": 1.5}
    with torch.no_grad():
        flex = kernels.flex_packed(q, k, v, meta, **options)
        eager = kernels.eager_packed(q, k, v, meta, **options)
    assert flex.shape == (1, 9, 4, 8)
    torch.testing.assert_close(flex, eager, rtol=0, atol=1e-5)
    assert ("flex", 2, False) in meta._cache, "the block mask is built once per forward and window"


def test_options_a_backend_cannot_apply_are_refused():
    meta = _meta()
    q, k, v = _qkv(9)
    base = {"scaling": 0.3, "sliding_window": None}
    with pytest.raises(ValueError, match="the sdpa backend cannot apply an attention logit softcap"):
        kernels.sdpa_packed(q, k, v, meta, dropout=0.0, softcap=2.0, **base)
    with pytest.raises(ValueError, match="the flex backend does not support attention dropout"):
        kernels.flex_packed(q, k, v, meta, dropout=0.1, softcap=None, **base)
    for dropout, softcap in [(0.0, 2.0), (0.1, None)]:
        with pytest.raises(ValueError, match="torch varlen_attn supports neither an attention softcap nor dropout"):
            kernels.torch_varlen_packed(q, k, v, meta, dropout=dropout, softcap=softcap, **base)
