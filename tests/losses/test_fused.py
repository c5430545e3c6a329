"""Fused layers == unfused composition (full logits -> log_softmax -> gather -> loss), values
and gradients, on the torch path and on Triton (interpreter, fp32), under the tolerance rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastalign import (
    FusedLinearCPOLoss,
    FusedLinearDPOLoss,
    FusedLinearGRPOLoss,
    FusedLinearKTOLoss,
    FusedLinearORPOLoss,
    FusedLinearPPOLoss,
    FusedLinearSimPOLoss,
)
from fastalign.losses import LOSS_TYPES, cpo_loss, dpo_loss, grpo_loss, kto_loss, orpo_loss, simpo_loss
from fastalign.testing import assert_close_to_oracle

IMPLS = ["torch", "triton", "triton-fused"]  # triton-fused: FASTALIGN_BACKWARD=fused
PAIRS, T, H, V = 3, 7, 16, 300


def make_inputs(device, seed=0, dtype=torch.float32, pairs=PAIRS):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * pairs, T, H, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64) / H**0.5 * 2
    bias = torch.randn(V, generator=gen, dtype=torch.float64) * 0.1
    target = torch.randint(0, V, (2 * pairs, T), generator=gen)
    for row in range(2 * pairs):  # prompts of 1..3 tokens, answers of varying length
        target[row, : 1 + row % 3] = -100
        target[row, T - row % 2 :] = -100
    ref_hidden = hidden + 0.1 * torch.randn(hidden.shape, generator=gen, dtype=torch.float64)
    to = dict(device=device, dtype=dtype)
    return dict(hidden=hidden.to(**to), weight=weight.to(**to), bias=bias.to(**to), target=target.to(device),
                ref_hidden=ref_hidden.to(**to), ref_weight=(weight * 0.9).to(**to))


def unfused_token_logps(hidden, weight, bias, target, upcast):
    """The composition fused layers replace: full logits, log_softmax, gather."""
    if upcast:
        hidden, weight = hidden.double(), weight.double()
        bias = bias.double() if bias is not None else None
    logits = F.linear(hidden, weight, bias)
    log_probs = torch.log_softmax(logits.float() if not upcast else logits, dim=-1)
    scored = target != -100
    picked = log_probs.gather(-1, torch.where(scored, target, 0).unsqueeze(-1)).squeeze(-1)
    return picked * scored, scored.sum(1)


def compare(fused_fn, unfused_fn, inputs, *, dtype=torch.float32, what="loss"):
    """fused (at dtype) vs unfused float64 oracle, baseline = unfused at dtype; values and grads."""

    def run(fn, cast):
        leaves = {k: inputs[k].detach().to(cast).requires_grad_(k in ("hidden", "weight", "bias"))
                  for k in ("hidden", "weight", "bias")}
        rest = {k: (v.to(cast) if v.is_floating_point() else v) for k, v in inputs.items() if k not in leaves}
        loss = fn(**leaves, **rest)
        grads = torch.autograd.grad(loss, [leaves["hidden"], leaves["weight"], leaves["bias"]])
        return loss.detach().cpu(), [g.cpu() for g in grads]

    actual = run(fused_fn, dtype)
    oracle = run(lambda **kw: unfused_fn(upcast=True, **kw), torch.float64)
    baseline = run(lambda **kw: unfused_fn(upcast=False, **kw), dtype)
    assert_close_to_oracle(actual[0].reshape(1), oracle[0].reshape(1), baseline[0].reshape(1),
                           dtype=dtype, kind="value", what=what)
    for name, a, o, b in zip(("hidden", "weight", "bias"), actual[1], oracle[1], baseline[1]):
        assert_close_to_oracle(a, o, b, dtype=dtype, kind="grad", what=f"d{name}")


def layer_impl(impl: str) -> str:
    return "triton" if impl == "triton-fused" else impl


@pytest.fixture
def device(kernel_device, request, monkeypatch):
    impl = request.node.callspec.params.get("impl", "")
    if impl == "triton-fused":
        # The layers take impl= only; the backward mode comes from the environment.
        monkeypatch.setenv("FASTALIGN_BACKWARD", "fused")
    return kernel_device if impl.startswith("triton") else torch.device("cpu")


def _dpo_unfused(loss_type, **kw):
    def run(hidden, weight, bias, target, ref_hidden, ref_weight, upcast):
        logps, lengths = unfused_token_logps(hidden, weight, bias, target, upcast)
        with torch.no_grad():
            ref_logps, _ = unfused_token_logps(ref_hidden, ref_weight, None, target, upcast)
        sums, ref_sums = logps.sum(1), ref_logps.sum(1)
        out = dpo_loss(sums[:PAIRS], sums[PAIRS:], ref_sums[:PAIRS], ref_sums[PAIRS:], beta=0.5,
                       loss_type=loss_type, chosen_lengths=lengths[:PAIRS], rejected_lengths=lengths[PAIRS:], **kw)
        nll = -logps[:PAIRS].sum() / lengths[:PAIRS].sum()
        return out.loss + 0.3 * nll
    return run


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "sft"])
def test_dpo_layer_matches_composition(impl, loss_type, device):
    inputs = make_inputs(device)
    layer = FusedLinearDPOLoss(beta=0.5, alpha=0.3, compute_nll_loss=True, loss_type=loss_type, impl=layer_impl(impl))

    def fused(hidden, weight, bias, target, ref_hidden, ref_weight):
        return layer(weight, hidden, target, bias, ref_hidden, ref_weight)[0]

    compare(fused, _dpo_unfused(loss_type), inputs)
    with pytest.raises(AssertionError):  # twin: chosen and rejected halves swapped
        def swapped(hidden, weight, bias, target, ref_hidden, ref_weight):
            flip = lambda x: torch.cat([x[PAIRS:], x[:PAIRS]])  # noqa: E731
            return layer(weight, flip(hidden), flip(target), bias, flip(ref_hidden), ref_weight)[0]
        compare(swapped, _dpo_unfused(loss_type), inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_reference_free_layers_match_composition(impl, device):
    inputs = make_inputs(device, seed=1)

    def unfused(kind):
        def run(hidden, weight, bias, target, ref_hidden, ref_weight, upcast):
            logps, lengths = unfused_token_logps(hidden, weight, bias, target, upcast)
            s, c, r = logps.sum(1), lengths[:PAIRS], lengths[PAIRS:]
            nll = -logps[:PAIRS].sum() / c.sum()
            if kind == "simpo":
                return simpo_loss(s[:PAIRS], s[PAIRS:], c, r, beta=0.1, gamma=0.5).loss + nll
            if kind == "cpo":
                return cpo_loss(s[:PAIRS], s[PAIRS:], beta=0.1, alpha=0.0).loss + nll
            return orpo_loss(s[:PAIRS], s[PAIRS:], c, r, beta=0.1).loss
        return run

    layers = dict(simpo=FusedLinearSimPOLoss(impl=layer_impl(impl)), cpo=FusedLinearCPOLoss(impl=layer_impl(impl)),
                  orpo=FusedLinearORPOLoss(impl=layer_impl(impl)))
    for kind, layer in layers.items():
        compare(lambda hidden, weight, bias, target, **_: layer(weight, hidden, target, bias)[0],
                unfused(kind), inputs, what=kind)


@pytest.mark.parametrize("impl", IMPLS)
def test_kto_layer_matches_composition(impl, device):
    inputs = make_inputs(device, seed=2)
    labels = torch.tensor([True, False, True, True, False, False], device=device)
    layer = FusedLinearKTOLoss(beta=0.2, use_ref_model=True, impl=layer_impl(impl))

    def fused(hidden, weight, bias, target, ref_hidden, ref_weight):
        return layer(hidden, weight, target, bias, labels, ref_hidden, ref_weight, None, kl=0.05)[0]

    def unfused(hidden, weight, bias, target, ref_hidden, ref_weight, upcast):
        logps, _ = unfused_token_logps(hidden, weight, bias, target, upcast)
        with torch.no_grad():
            ref, _ = unfused_token_logps(ref_hidden, ref_weight, None, target, upcast)
        return kto_loss(logps.sum(1), ref.sum(1), labels, kl=0.05, beta=0.2).loss

    compare(fused, unfused, inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_grpo_layer_matches_composition(impl, device):
    inputs = make_inputs(device, seed=3)
    target = inputs["target"]
    mask = target != -100
    tokens = target.clamp(min=0)
    gen = torch.Generator().manual_seed(0)
    advantages = torch.randn(2 * PAIRS, generator=gen).to(device)
    old = (-torch.rand(target.shape, generator=gen) * 6).to(device)
    ref = (-torch.rand(target.shape, generator=gen) * 6).to(device)
    layer = FusedLinearGRPOLoss(beta=0.04, loss_type="grpo", temperature=0.8, impl=layer_impl(impl))

    def fused(hidden, weight, bias, target, **_):
        return layer(hidden, weight, tokens, mask, advantages, bias, ref_per_token_logps=ref,
                     old_per_token_logps=old)[0]

    def unfused(hidden, weight, bias, target, upcast, **_):
        logps, _ = unfused_token_logps(hidden / 1.0, weight / 0.8, bias / 0.8, target, upcast)
        return grpo_loss(logps, old.to(logps.dtype), advantages.to(logps.dtype), mask,
                         ref_logprobs=ref.to(logps.dtype), beta=0.04).loss

    compare(fused, unfused, inputs)


def test_ppo_layer_entropy_and_kl_terms():
    inputs = make_inputs("cpu", seed=4)
    mask = inputs["target"] != -100
    tokens = inputs["target"].clamp(min=0)
    advantages = torch.linspace(-1, 1, 2 * PAIRS)
    ref = torch.full(tokens.shape, -5.0)
    plain = FusedLinearPPOLoss(impl="torch")
    loss0, metrics = plain(inputs["hidden"], inputs["weight"], tokens, mask, advantages)
    full = FusedLinearPPOLoss(entropy_coef=0.01, kl_coef=0.1, impl="torch")
    loss1, metrics1 = full(inputs["hidden"], inputs["weight"], tokens, mask, advantages, ref_per_token_logps=ref)
    assert loss1.item() == pytest.approx(loss0.item() - 0.01 * metrics["entropy"].item() + 0.1 * metrics1["kl"].item(),
                                         rel=1e-5)
    assert metrics["entropy"].item() > 0 and metrics1["kl"].item() > 0
    assert metrics["logprobs"].shape == tokens.shape and metrics["clip_fraction"].item() == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_all_ignored_answer_is_finite(impl, device):
    """An answer truncated to nothing: finite loss and finite gradients (its log-prob is 0)."""
    inputs = make_inputs(device, seed=5)
    inputs["target"][0] = -100  # first chosen answer empty
    inputs["target"][PAIRS + 1] = -100  # a rejected answer empty
    hidden = inputs["hidden"].clone().requires_grad_()
    weight = inputs["weight"].clone().requires_grad_()
    for layer in (FusedLinearDPOLoss(loss_type=["sigmoid", "ipo", "sft"], impl=layer_impl(impl)),
                  FusedLinearSimPOLoss(impl=layer_impl(impl)), FusedLinearCPOLoss(impl=layer_impl(impl))):
        if isinstance(layer, FusedLinearDPOLoss):
            loss = layer(weight, hidden, inputs["target"], None, inputs["ref_hidden"], inputs["ref_weight"])[0]
        else:
            loss = layer(weight, hidden, inputs["target"])[0]
        grads = torch.autograd.grad(loss, [hidden, weight])
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
        assert grads[0][0].abs().sum() == 0  # the empty answer's hidden states get no gradient
    # ORPO's odds of an empty answer are infinite: a clear error, as documented.
    with pytest.raises(ValueError, match=r"chosen_lengths\[0\] is 0"):
        FusedLinearORPOLoss(impl=layer_impl(impl))(weight, hidden, inputs["target"])


def test_precomputed_reference_equals_reference_model():
    inputs = make_inputs("cpu", seed=6)
    layer = FusedLinearDPOLoss(impl="torch")
    with_model = layer(inputs["weight"], inputs["hidden"], inputs["target"], None,
                       inputs["ref_hidden"], inputs["ref_weight"])
    ref_logps, _ = unfused_token_logps(inputs["ref_hidden"], inputs["ref_weight"], None, inputs["target"], False)
    precomputed = layer(inputs["weight"], inputs["hidden"], inputs["target"], ref_logps=ref_logps.sum(1))
    assert precomputed[0].item() == pytest.approx(with_model[0].item(), rel=1e-5)
    other = layer(inputs["weight"], inputs["hidden"], inputs["target"], ref_logps=ref_logps.sum(1) + 1.0 * torch.arange(6))
    assert other[0].item() != pytest.approx(with_model[0].item(), rel=1e-3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda i: FusedLinearDPOLoss()(i["weight"], i["hidden"][:5], i["target"][:5]), "odd first dimension"),
        (lambda i: FusedLinearDPOLoss()(i["weight"], i["hidden"], i["target"]), "ref_input"),
        (lambda i: FusedLinearDPOLoss(loss_type="slic"), "loss_type must be one of"),
        (lambda i: FusedLinearDPOLoss(beta=-1.0, use_ref_model=False)(i["weight"], i["hidden"], i["target"]), "beta"),
        (lambda i: FusedLinearDPOLoss(use_ref_model=False)(i["weight"], i["hidden"], i["target"][:, :3]), "target shape"),
        (lambda i: FusedLinearDPOLoss(use_ref_model=False)(i["weight"][:, :3], i["hidden"], i["target"]), "lin_weight"),
        (lambda i: FusedLinearKTOLoss()(i["hidden"], i["weight"], i["target"]), "preference_labels"),
        (lambda i: FusedLinearGRPOLoss(loss_type="dr_grpo"), "max_completion_length"),
        (lambda i: FusedLinearGRPOLoss(loss_type="ppo"), "loss_type"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_inputs("cpu"))


def test_every_loss_type_runs_through_the_layer():
    inputs = make_inputs("cpu", seed=7)
    for loss_type in LOSS_TYPES:
        layer = FusedLinearDPOLoss(loss_type=loss_type, label_smoothing=0.1 if loss_type in ("robust", "exo_pair") else 0.0,
                                   impl="torch")
        loss = layer(inputs["weight"], inputs["hidden"], inputs["target"], None, inputs["ref_hidden"], inputs["ref_weight"])[0]
        assert torch.isfinite(loss), loss_type
