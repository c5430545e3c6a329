"""Benchmark of a DPO training step's head: policy forward+backward plus reference forward.

Providers: ``naive`` (full logits for policy and reference, log_softmax, gather, DPO loss),
``liger`` (LigerFusedLinearDPOLoss), ``fastalign`` (FusedLinearDPOLoss). Rows hold 2B
sequences of T tokens (chosen then rejected); the first ``prompt_fraction`` of each row is
prompt (ignored), like HH's long prompts. Every provider is first checked against a float64
full-logits composition at a small size.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from fastalign.bench.runner import Row, dtype_name, gemm_ms, measure_case
from fastalign.losses import FusedLinearDPOLoss, dpo_loss

BETA = 0.1
DPOStep = Callable[..., torch.Tensor]  # (weight, hidden, target, ref_hidden, ref_weight) -> loss


def naive_dpo(weight, hidden, target, ref_hidden, ref_weight) -> torch.Tensor:
    def sequence_logps(h, w):
        logits = (h @ w.T).float()
        scored = target != -100
        picked = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * scored).sum(-1)

    policy = sequence_logps(hidden, weight)
    with torch.no_grad():
        ref = sequence_logps(ref_hidden, ref_weight)
    half = policy.shape[0] // 2
    return dpo_loss(policy[:half], policy[half:], ref[:half], ref[half:], beta=BETA).loss


def _liger(device: torch.device) -> DPOStep:
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    layer = LigerFusedLinearDPOLoss(beta=BETA, compiled=device.type == "cuda")
    return lambda w, h, t, rh, rw: layer(w, h, t, None, rh, rw)[0]


def _fastalign(device: torch.device) -> DPOStep:
    layer = FusedLinearDPOLoss(beta=BETA)
    return lambda w, h, t, rh, rw: layer(w, h, t, None, rh, rw)[0]


def _available(module: str) -> Callable[[torch.device], str | None]:
    return lambda device: None if importlib.util.find_spec(module) else f"{module} is not installed"


PROVIDERS: dict[str, tuple[Callable[[torch.device], DPOStep], Callable[[torch.device], str | None]]] = {
    "naive": (lambda device: naive_dpo, lambda device: None),
    "liger": (_liger, _available("liger_kernel")),
    "fastalign": (_fastalign, lambda device: None),
}


def make_batch(pairs: int, seq: int, h: int, v: int, dtype, device, *, prompt_fraction=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * pairs, seq, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device, dtype)
    target = torch.randint(0, v, (2 * pairs, seq), generator=gen)
    target[:, : int(prompt_fraction * seq)] = -100
    ref_hidden = (hidden.float() + 0.05 * torch.randn(hidden.shape, generator=gen).to(device)).to(dtype)
    return weight, hidden, target.to(device), ref_hidden, weight.detach().clone()


def check(step: DPOStep, device) -> float:
    """Relative error of loss and d(hidden) vs the float64 composition at a small size."""
    w, h, t, rh, rw = make_batch(2, 16, 32, 500, torch.float32, device, seed=1)
    h.requires_grad_()
    loss = step(w, h, t, rh, rw)
    (grad,) = torch.autograd.grad(loss, h)
    h64 = h.detach().double().requires_grad_()
    ref = naive_dpo(w.double(), h64, t, rh.double(), rw.double())
    (ref_grad,) = torch.autograd.grad(ref, h64)
    return max(abs(loss.item() - ref.item()) / max(abs(ref.item()), 1e-6),
               ((grad.double() - ref_grad).norm() / ref_grad.norm()).item())


def run_benchmark(providers: Iterable[str], shapes: Iterable[tuple[int, int, int, int]], *, dtype, device,
                  repeats: int = 10, check_tolerance: float = 1e-3) -> list[Row]:
    """``shapes``: (pairs, seq_len, H, V). Row.n is the token count 2 * pairs * seq_len."""
    shapes = list(shapes)
    rows, usable = [], {}
    for name in providers:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; known: {sorted(PROVIDERS)}")
        build, needs = PROVIDERS[name]
        reason, status = needs(device), "skipped"
        if reason is None:
            try:
                step = build(device)
                error = check(step, device)
                if error > check_tolerance:
                    reason, status = f"check failed: relative error {error:.2e}", "failed_check"
                else:
                    usable[name] = step
            except Exception as exc:  # noqa: BLE001
                reason, status = f"{type(exc).__name__}: {str(exc)[:200]}", "error"
        if reason is not None:
            rows += [Row(name, "policy_fwd_bwd+ref_fwd", 2 * p * s, h, v, dtype_name(dtype), status, reason)
                     for p, s, h, v in shapes]
    gemm = {shape: gemm_ms(2 * shape[0] * shape[1], shape[2], shape[3], dtype, device) for shape in shapes}
    cases = [(name, shape) for shape in shapes for name in usable]
    for name, (pairs, seq, h, v) in tqdm(cases, desc="dpo_layer", disable=len(cases) < 2):
        def build_step(pairs=pairs, seq=seq, h=h, v=v, step=usable[name]):
            w, hid, t, rh, rw = make_batch(pairs, seq, h, v, dtype, device)
            w.requires_grad_()
            hid.requires_grad_()

            def run():
                w.grad = hid.grad = None
                step(w, hid, t, rh, rw).backward()

            return run

        tokens = 2 * pairs * seq
        row = Row(name, "policy_fwd_bwd+ref_fwd", tokens, h, v, dtype_name(dtype), "ok")
        # Useful work: policy forward + dH + dW, reference forward = 4 GEMMs of [tokens, H] x [H, V].
        rows.append(measure_case(row, build_step, device, repeats=repeats, useful_flops=8 * tokens * h * v,
                                 gemm_ms=gemm[(pairs, seq, h, v)], gemm_count=5))
    return rows
