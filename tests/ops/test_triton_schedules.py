"""Triton launch schedules: vocab chunks and their exact combine; the chunked backward (one
or several chunks, the row gather of non-viewable hidden, the memory budget); the fused
backward (atomic vs deterministic, frozen-hidden and bias-only schedules, gradient filtering)."""

from __future__ import annotations

import pytest
import torch

from fastalign.ops.calls import GradientRequest, LogitsCall
from fastalign.ops.linear_logprobs import linear_logprob_stats
from fastalign.ops.linear_logprobs_triton import triton_backward, triton_forward
from fastalign.ops.reference import reference_linear_logprob_stats
from fastalign.testing import max_abs_error, relative_error
from tests.ops.oracle_check import assert_matches_oracle, make_case

pytest.importorskip("triton")

def _call(case) -> LogitsCall:
    return LogitsCall(case.hidden, case.weight, case.bias, case.targets, ignore_index=-100, temperature=1.0,
                      softcap=None)


def _forward(case, splits):
    return triton_forward(_call(case), with_entropy=True, with_logit_sum=True, num_splits=splits)


def test_split_vocab_combine_is_exact(kernel_device):
    """3 vocab splits merged by the combine kernel == one sweep == the oracle."""
    case = make_case(7, 32, 1000, device=kernel_device, logit_scale=5.0, ignored=[2])
    one, three = _forward(case, 1), _forward(case, 3)
    oracle = reference_linear_logprob_stats(case.hidden, case.weight, case.targets)
    for name in ("logprobs", "entropy", "lse", "logit_sum"):
        a, b = getattr(one, name).cpu(), getattr(three, name).cpu()
        ref = getattr(oracle, name).reshape(-1).cpu()
        assert max_abs_error(a, b) < 5e-5 * max(1.0, ref.abs().max().item()), name
        assert max_abs_error(b, ref) < 5e-5 * max(1.0, ref.abs().max().item()), name
    # Twin: averaging partial entropies instead of rescaling moments must be visibly wrong.
    assert max_abs_error(three.entropy.cpu(), oracle.entropy.cpu()) < 1e-4
    naive = _naive_split_entropy(case, splits=3)
    assert max_abs_error(naive, oracle.entropy.cpu()) > 1e-2


def _naive_split_entropy(case, splits):
    """The bug the combine avoids: mean of per-split entropies."""
    vocab = case.weight.shape[0]
    bounds = torch.linspace(0, vocab, splits + 1).long().tolist()
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        logits = (case.hidden.double() @ case.weight[lo:hi].double().T).cpu()
        logp = torch.log_softmax(logits, -1)
        parts.append(-(logp.exp() * logp).sum(-1))
    entropy = torch.stack(parts).mean(0)
    return torch.where(case.targets.cpu() != -100, entropy, 0.0).float()


def _grads(case, *, deterministic, splits, needs=(True, True, True), backward="fused", budget=1 << 30):
    stats = _forward(case, 1)
    gen = torch.Generator().manual_seed(0)
    upstream = {
        name: torch.randn(case.targets.numel(), generator=gen).to(case.hidden.device)
        for name in ("logprobs", "entropy", "lse")
    }
    upstream["logit_sum"] = None
    request = GradientRequest(stats.lse, stats.entropy, upstream, *needs)
    return triton_backward(_call(case), request, deterministic=deterministic, num_splits=splits, backward=backward,
                           memory_budget=budget), upstream


def test_atomic_and_deterministic_backward_agree(kernel_device):
    case = make_case(45, 32, 1000, device=kernel_device, with_bias=True, ignored=[1, 2])
    (dh1, dw1, db1), _ = _grads(case, deterministic=True, splits=None)
    (dh2, dw2, db2), _ = _grads(case, deterministic=True, splits=None)
    # Deterministic mode is bitwise reproducible.
    assert torch.equal(dh1, dh2) and torch.equal(dw1, dw2) and torch.equal(db1, db2)
    for splits in (1, 3):
        (dh, dw, db), _ = _grads(case, deterministic=False, splits=splits)
        for a, b in ((dh, dh1), (dw, dw1), (db, db1)):
            assert relative_error(a.cpu(), b.cpu()) < 1e-5


def test_frozen_hidden_and_bias_only_schedules(kernel_device):
    """Owning vocab blocks (hidden frozen) and skipping dW (only bias trained) both match."""
    case = make_case(45, 32, 1000, device=kernel_device, with_bias=True)
    (dh_all, dw_all, db_all), _ = _grads(case, deterministic=False, splits=1)
    (dh, dw, db), _ = _grads(case, deterministic=False, splits=2, needs=(False, True, True))
    assert dh is None
    assert relative_error(dw.cpu(), dw_all.cpu()) < 1e-5
    assert relative_error(db.cpu(), db_all.cpu()) < 1e-5
    (dh, dw, db), _ = _grads(case, deterministic=False, splits=1, needs=(True, False, True))
    assert dw is None
    assert relative_error(dh.cpu(), dh_all.cpu()) < 1e-5
    assert relative_error(db.cpu(), db_all.cpu()) < 1e-5


def test_deterministic_flag_through_the_op(kernel_device):
    case = make_case(33, 32, 1000, device=kernel_device, softcap=8.0, logit_scale=10.0)
    assert_matches_oracle(case, "triton", deterministic=True)
    with pytest.raises(AssertionError):
        assert_matches_oracle(case, "triton", deterministic=True, op_options={"softcap": None})


# The interpreter's vocab tile (kernels/autotune.py): filtering skips whole tiles.
_TILE = 256


def _peaked_case(device):
    """Peaked rows (as in a trained LM): most vocab tiles carry probability far below 1e-6."""
    case = make_case(32, 32, 1000, device=device, logit_scale=1.0, seed=4)
    case.weight = case.weight.clone()
    case.weight[:_TILE] *= 40.0  # only the first tile holds real mass
    case.targets = torch.randint(0, _TILE, (32,), generator=torch.Generator().manual_seed(1)).to(device)
    return case


def _filter_grads(case, filter_eps):
    hidden = case.hidden.clone().requires_grad_()
    weight = case.weight.clone().requires_grad_()
    out = linear_logprob_stats(hidden, weight, case.targets, filter_eps=filter_eps, impl="triton",
                               backward="fused")
    out.logprobs.sum().backward()
    return hidden.grad.cpu(), weight.grad.cpu()


def test_gradient_filtering_tradeoff(kernel_device):
    """filter_eps skips negligible tiles: on peaked rows the skipped tiles' dW rows become
    exactly 0 and gradients stay close; on flat rows a coarse eps is visibly wrong."""
    peaked = _peaked_case(kernel_device)
    exact = _filter_grads(peaked, None)
    filtered = _filter_grads(peaked, 1e-7)
    assert exact[1][_TILE:].abs().max() > 0
    assert torch.equal(filtered[1][_TILE:], torch.zeros_like(filtered[1][_TILE:]))
    assert relative_error(filtered[0], exact[0]) < 1e-3
    assert relative_error(filtered[1], exact[1]) < 1e-3

    # Two rows: most vocab tiles hold neither target, so a coarse eps drops them.
    flat = make_case(2, 32, 1000, device=kernel_device, seed=4)
    exact = _filter_grads(flat, None)
    assert relative_error(_filter_grads(flat, 1e-7)[1], exact[1]) < 1e-6
    assert relative_error(_filter_grads(flat, 0.5)[1], exact[1]) > 1e-2


# One 128-row chunk of a [rows, V=1000] fp32 gradient (stride padded to 1024): 512 KiB.
_ONE_CHUNK = 128 * 1024 * 4


def test_chunked_backward_matches_fused_and_is_deterministic(kernel_device):
    """Several chunks == one chunk == the fused kernel; the chunked backward is bitwise
    reproducible without asking for it."""
    case = make_case(300, 32, 1000, device=kernel_device, with_bias=True, ignored=[0, 7, 299],
                     softcap=9.0, logit_scale=6.0)
    (dh_f, dw_f, db_f), _ = _grads(case, deterministic=True, splits=None)
    (dh_1, dw_1, db_1), _ = _grads(case, deterministic=False, splits=None, backward="chunked")
    (dh_3, dw_3, db_3), _ = _grads(case, deterministic=False, splits=None, backward="chunked",
                                   budget=_ONE_CHUNK)
    (dh_3b, dw_3b, db_3b), _ = _grads(case, deterministic=False, splits=None, backward="chunked",
                                      budget=_ONE_CHUNK)
    assert torch.equal(dh_3, dh_3b) and torch.equal(dw_3, dw_3b) and torch.equal(db_3, db_3b)
    for chunked, fused in ((dh_1, dh_f), (dw_1, dw_f), (db_1, db_f), (dh_3, dh_f), (dw_3, dw_f), (db_3, db_f)):
        assert relative_error(chunked.cpu(), fused.cpu()) < 1e-5
    # Twin: a chunk loop that drops the last partial chunk is caught by the same comparison.
    dh_trunc = dh_3.clone()
    dh_trunc[256:] = 0
    assert relative_error(dh_trunc.cpu(), dh_f.cpu()) > 1e-2


def test_chunked_backward_reads_strided_rows(kernel_device):
    """hidden[:, :-1] of [B, T, H] cannot be viewed as [N, H]: dW gathers each chunk's rows."""
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(3, 101, 32, generator=gen).to(kernel_device)
    weight = (torch.randn(1000, 32, generator=gen) / 4).to(kernel_device)
    targets = torch.randint(0, 1000, (3, 100), generator=gen).to(kernel_device)

    def grads(hidden, **options):
        hidden = hidden.detach().clone().requires_grad_()
        w = weight.clone().requires_grad_()
        source = hidden[:, :-1] if hidden.shape[1] == 101 else hidden
        linear_logprob_stats(source, w, targets, impl="triton", **options).logprobs.sum().backward()
        return hidden.grad[:, :100].cpu(), w.grad.cpu()

    strided = grads(full, backward="chunked", backward_memory_budget=_ONE_CHUNK)
    contiguous = grads(full[:, :-1].contiguous(), backward="chunked")
    assert relative_error(strided[0], contiguous[0]) < 1e-6
    assert relative_error(strided[1], contiguous[1]) < 1e-6


def test_backward_mode_choice_and_budget_errors():
    from fastalign.ops.linear_logprobs_triton import choose_backward

    assert choose_backward("auto", 16384, 128256, 2, 1 << 30) == ("chunked", 4096)
    assert choose_backward("auto", 100, 128256, 2, 1 << 30) == ("chunked", 128)
    assert choose_backward("auto", 16384, 128256, 2, 1 << 20) == ("fused", 0)
    assert choose_backward("fused", 16384, 128256, 2, 1 << 30) == ("fused", 0)
    with pytest.raises(ValueError, match="backward_memory_budget"):
        choose_backward("chunked", 16384, 128256, 2, 1 << 20)
    with pytest.raises(ValueError, match="backward must be one of"):
        choose_backward("fast", 16384, 128256, 2, 1 << 30)
    hidden = torch.randn(4, 8)
    weight = torch.randn(16, 8)
    targets = torch.randint(0, 16, (4,))
    with pytest.raises(ValueError, match="backward must be one of"):
        linear_logprob_stats(hidden, weight, targets, backward="fast")
    with pytest.raises(ValueError, match="backward_memory_budget"):
        linear_logprob_stats(hidden, weight, targets, backward_memory_budget=-1)


@pytest.mark.parametrize("env,expected", [(None, "chunked"), ("fused", "fused"), ("chunked", "chunked")])
def test_environment_picks_the_auto_backward(kernel_device, monkeypatch, env, expected):
    """FASTALIGN_BACKWARD decides what backward="auto" runs (the fused loss layers rely on it)."""
    import fastalign.ops.linear_logprobs_triton as launcher

    if env is None:
        monkeypatch.delenv("FASTALIGN_BACKWARD", raising=False)
    else:
        monkeypatch.setenv("FASTALIGN_BACKWARD", env)
    seen = []
    for name in ("chunked", "fused"):
        original = getattr(launcher, f"_{name}_backward")
        monkeypatch.setattr(launcher, f"_{name}_backward",
                            lambda *a, _n=name, _f=original, **k: seen.append(_n) or _f(*a, **k))
    case = make_case(9, 16, 500, device=kernel_device)
    hidden = case.hidden.clone().requires_grad_()
    linear_logprob_stats(hidden, case.weight, case.targets, impl="triton").logprobs.sum().backward()
    assert seen == [expected]
    monkeypatch.setenv("FASTALIGN_BACKWARD", "fastest")
    with pytest.raises(ValueError, match="FASTALIGN_BACKWARD"):
        linear_logprob_stats(hidden, case.weight, case.targets, impl="triton")
