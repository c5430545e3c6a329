"""Benchmark the DPO head step (policy fwd+bwd + reference fwd): naive vs Liger vs fastalign.

Providers (``fastalign.bench.providers.DPO_PROVIDERS``): ``naive`` (full logits for policy and
reference, log_softmax, gather, DPO loss), ``liger`` (LigerFusedLinearDPOLoss), ``fastalign``
(FusedLinearDPOLoss). Rows hold 2B sequences of T tokens (chosen then rejected); the first
``prompt_fraction`` of each row is prompt (ignored), like HH's long prompts. Every provider is
first checked against a float64 full-logits composition at a small size.

    python bench/bench_dpo_layer.py --preset cpu-smoke
    python bench/bench_dpo_layer.py --preset gpu-core     # H100/H200: 8k-32k tokens, H=4096, V=128256

Writes bench/results/<device>/dpo_layer_<preset>.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from fastalign.bench.cli import add_device_options, device_from_args
from fastalign.bench.environment import environment
from fastalign.bench.providers import DPO_PROVIDERS as PROVIDERS
from fastalign.bench.providers import DPOStep, dpo_training_step, make_dpo_batch, naive_dpo
from fastalign.bench.report import plot_results, results_dir, write_results
from fastalign.bench.runner import Row, dtype_name, gemm_ms, measure_case, rows_as_dicts
from fastalign.bench.workloads import DTYPES

PRESETS = {
    "cpu-smoke": dict(shapes=[(2, 256, 256, 8192), (4, 256, 256, 8192)], dtype="float32", repeats=3),
    # (pairs, seq_len, H, V): 8k, 16k and 32k tokens per step.
    "gpu-core": dict(shapes=[(4, 1024, 4096, 128256), (8, 1024, 4096, 128256), (16, 1024, 4096, 128256)],
                     dtype="bfloat16", repeats=10),
}
def check(step: DPOStep, device) -> float:
    """Relative error of loss and d(hidden) vs the float64 composition at a small size."""
    w, h, t, rh, rw = make_dpo_batch(2, 16, 32, 500, torch.float32, device, seed=1)
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
            return dpo_training_step(step, pairs, seq, h, v, dtype, device)

        tokens = 2 * pairs * seq
        row = Row(name, "policy_fwd_bwd+ref_fwd", tokens, h, v, dtype_name(dtype), "ok")
        # Useful work: policy forward + dH + dW, reference forward = 4 GEMMs of [tokens, H] x [H, V].
        rows.append(measure_case(row, build_step, device, repeats=repeats, useful_flops=8 * tokens * h * v,
                                 gemm_ms=gemm[(pairs, seq, h, v)], gemm_count=5))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--providers", nargs="+", choices=sorted(PROVIDERS), default=sorted(PROVIDERS))
    add_device_options(parser)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    preset, device = PRESETS[args.preset], device_from_args(parser, args)
    rows = rows_as_dicts(run_benchmark(args.providers, preset["shapes"], dtype=DTYPES[preset["dtype"]],
                                       device=device, repeats=preset["repeats"]))
    env = environment(device)
    out_dir = results_dir(args.out, env, device)
    stem = f"dpo_layer_{args.preset}"
    paths = write_results(rows, env, out_dir, stem)
    plot = plot_results(rows, env, out_dir / f"{stem}.png", title="DPO head: policy fwd+bwd + reference fwd")
    for r in rows:
        timing = f"{r['median_ms']:.2f} ms, {r['peak_mem_mb']:.0f} MiB" if r["status"] == "ok" else r["note"]
        print(f"{r['provider']:>10} tokens={r['n']:<6} {r['status']:>7}  {timing}")
    print("wrote", paths["json"], paths["csv"], plot or "(no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
