"""Benchmark fused linear log-probs vs naive / torch.compile / chunked / peers.

For every provider (``fastalign.bench.providers.PROVIDERS``): a correctness check against the
float64 oracle at a small size, then for each (N, H, V) of the grid: median/spread time of the
forward (no grad, as for a reference model) and of forward+backward, and peak memory above the
inputs. On CUDA a bf16 cuBLAS GEMM of the same shape is timed in the same run, giving the
4-GEMM roofline ratio.

    python bench/bench_linear_logprobs.py --preset cpu-smoke        # any machine, ~2 min
    python bench/bench_linear_logprobs.py --preset gpu-core         # H100/H200, < 10 min

Writes bench/results/<device>/linear_logprobs_<preset>.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from fastalign.bench.cli import add_device_options, device_from_args
from fastalign.bench.environment import environment, load_average
from fastalign.bench.providers import PROVIDERS, Provider
from fastalign.bench.report import plot_results, results_dir, write_results
from fastalign.bench.runner import Row, dtype_name, gemm_ms, measure_case, rows_as_dicts
from fastalign.bench.workloads import DTYPES
from fastalign.ops.reference import reference_linear_logprob_stats

MODES = ("forward", "forward_backward")
# GEMM-equivalents per mode: forward = 1 (h W^T); forward+backward with exact gradients =
# 4 (forward, one recompute, dH, dW) -- the roofline of docs/architecture.md and kernels/cost.py.
GEMMS_PER_MODE = {"forward": 1, "forward_backward": 4}


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device, dtype)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    return hidden, weight, targets


def check_provider(fn, device: torch.device, *, n: int = 64, h: int = 64, v: int = 1000) -> float:
    """Max abs error of the provider's fp32 log-probs (and grads) vs the float64 oracle."""
    hidden, weight, targets = _inputs(n, h, v, torch.float32, device, seed=1)
    hidden.requires_grad_()
    weight.requires_grad_()
    actual = fn(hidden, weight, targets)
    actual.sum().backward()
    oracle_h = hidden.detach().double().requires_grad_()
    oracle = reference_linear_logprob_stats(oracle_h, weight.detach(), targets).logprobs
    oracle.sum().backward()
    value_error = (actual.detach().double() - oracle.detach()).abs().max().item()
    grad_error = ((hidden.grad.double() - oracle_h.grad).norm() / oracle_h.grad.norm()).item()
    return max(value_error, grad_error)


def _step(fn, mode: str, hidden, weight, targets):
    if mode == "forward":

        def forward_only():
            with torch.no_grad():
                return fn(hidden, weight, targets)

        return forward_only

    def run():
        hidden.grad = weight.grad = None
        fn(hidden, weight, targets).sum().backward()

    return run


def run_case(provider: Provider, fn, mode: str, n: int, h: int, v: int, dtype: torch.dtype,
             device: torch.device, gemm: float | None, repeats: int) -> Row:
    def build():
        hidden, weight, targets = _inputs(n, h, v, dtype, device)
        if mode == "forward_backward":
            hidden.requires_grad_()
            weight.requires_grad_()
        return _step(fn, mode, hidden, weight, targets)

    row = Row(provider.name, mode, n, h, v, dtype_name(dtype), "ok")
    return measure_case(row, build, device, repeats=repeats,
                        useful_flops=2 * n * h * v * (1 if mode == "forward" else 3),
                        gemm_ms=gemm, gemm_count=GEMMS_PER_MODE[mode])


def run_benchmark(
    providers: Iterable[str],
    shapes: Iterable[tuple[int, int, int]],
    *,
    dtype: torch.dtype,
    device: torch.device,
    modes: Iterable[str] = MODES,
    repeats: int = 10,
    check_tolerance: float = 1e-3,
) -> list[Row]:
    """Check, then time every provider on every shape and mode; returns one Row per case."""
    shapes, modes = list(shapes), list(modes)
    rows: list[Row] = []
    usable: dict[str, object] = {}
    for name in providers:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; known: {sorted(PROVIDERS)}")
        provider = PROVIDERS[name]
        reason = provider.needs(device)
        if reason is None:
            try:
                fn = provider.build()
                error = check_provider(fn, device)
                reason = None if error <= check_tolerance else f"oracle check failed: error {error:.2e}"
                status = "failed_check" if reason else "ok"
            except Exception as exc:  # noqa: BLE001
                reason, status = f"{type(exc).__name__}: {str(exc)[:200]}", "error"
        else:
            status = "skipped"
        if reason is not None:
            rows += [Row(name, m, n, h, v, dtype_name(dtype), status, reason)
                     for (n, h, v) in shapes for m in modes]
        else:
            usable[name] = fn
    gemm = {shape: gemm_ms(*shape, dtype, device) for shape in shapes}
    cases = [(name, shape, mode) for shape in shapes for name in usable for mode in modes]
    for name, (n, h, v), mode in tqdm(cases, desc="linear_logprobs", disable=len(cases) < 2):
        rows.append(run_case(PROVIDERS[name], usable[name], mode, n, h, v, dtype, device, gemm[(n, h, v)], repeats))
    return rows


def _cost_model_gpu(device_name: str) -> str | None:
    """The cost model's name for this GPU (``H100``, ``H200``, ``A100``), or None."""
    from fastalign.kernels.cost import GPUS

    upper = device_name.upper()
    return next((key for key in GPUS if key in upper), None)


def add_comparisons(records: list[dict], device_name: str) -> list[dict]:
    """Add, per row, time and peak memory relative to ``naive`` on the same shape and mode
    (``time_vs_naive``, ``cpu_time_vs_naive`` on CPU, ``memory_vs_naive``), and for fastalign on a modeled GPU the cost
    model's prediction (``predicted_ms``) and ``measured_over_predicted``."""
    from fastalign.kernels.cost import predict

    naive = {(r["mode"], r["n"], r["h"], r["v"]): r for r in records
             if r["provider"] == "naive" and r["status"] == "ok"}
    gpu = _cost_model_gpu(device_name)
    elem = {"bfloat16": 2, "float16": 2, "float32": 4}
    for r in records:
        r["time_vs_naive"] = r["cpu_time_vs_naive"] = r["memory_vs_naive"] = None
        r["predicted_ms"] = r["measured_over_predicted"] = None
        if r["status"] != "ok":
            continue
        base = naive.get((r["mode"], r["n"], r["h"], r["v"]))
        if base is not None:
            r["time_vs_naive"] = r["median_ms"] / base["median_ms"]
            if r.get("cpu_median_ms") and base.get("cpu_median_ms"):
                r["cpu_time_vs_naive"] = r["cpu_median_ms"] / base["cpu_median_ms"]
            if base["peak_mem_mb"]:
                r["memory_vs_naive"] = r["peak_mem_mb"] / base["peak_mem_mb"]
        if r["provider"] == "fastalign" and gpu is not None and r["dtype"] in elem:
            mode = "forward" if r["mode"] == "forward" else "train"
            predicted = predict(r["n"], r["h"], r["v"], dtype_bytes=elem[r["dtype"]], mode=mode, gpu=gpu)
            r["predicted_ms"] = predicted.predicted_ms
            r["measured_over_predicted"] = r["median_ms"] / predicted.predicted_ms
    return records


PRESETS = {
    # The PyTorch path against naive full logits, side by side (issue: within 1.2x of naive's
    # time at 1/5 of its peak memory).
    "cpu-smoke": dict(
        shapes=[(2048, 256, 65536)], dtype="float32",
        providers=["naive", "chunked_torch", "fastalign"], repeats=5,
    ),
    "gpu-core": dict(
        shapes=[(4096, 4096, 128256), (16384, 4096, 128256)], dtype="bfloat16",
        providers=["naive", "torch_compile", "chunked_torch", "fastalign", "liger", "cut_cross_entropy"],
        repeats=10,
    ),
    # The cost model's core grid (kernels/cost.py): predictions stored beside each measurement.
    "gpu-grid": dict(
        shapes=[(n, 4096, 128256) for n in (4096, 16384, 32768)], dtype="bfloat16",
        providers=["naive", "torch_compile", "fastalign", "fastalign_fused", "liger", "cut_cross_entropy"],
        repeats=10,
    ),
}


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        n, h, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like NxHxV, got {text!r}") from None
    if min(n, h, v) < 1:
        raise argparse.ArgumentTypeError(f"shape entries must be >= 1, got {text!r}")
    return n, h, v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--shapes", nargs="+", type=_parse_shape, help="override: NxHxV ...")
    parser.add_argument("--providers", nargs="+", help="override the preset's providers")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="override the preset's dtype")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, help="timed repeats per case")
    add_device_options(parser)
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results root folder")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    device = device_from_args(parser, args)
    repeats = args.repeats or preset["repeats"]
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    load_before = load_average()
    rows = run_benchmark(
        args.providers or preset["providers"], args.shapes or preset["shapes"],
        dtype=DTYPES[args.dtype or preset["dtype"]], device=device, modes=args.modes, repeats=repeats,
    )
    env = environment(device)
    env["load_average"] = {"before": load_before, "after": load_average()}
    out_dir = results_dir(args.out, env, device)
    stem = f"linear_logprobs_{args.preset}"
    records = add_comparisons(rows_as_dicts(rows), env["device"])
    paths = write_results(records, env, out_dir, stem)
    plot = plot_results(records, env, out_dir / f"{stem}.png", title="fused linear log-probs")
    for r in records:
        timing = f"{r['median_ms']:.2f} ms, {r['peak_mem_mb']:.0f} MiB" if r["status"] == "ok" else r["note"]
        if r.get("time_vs_naive") is not None and r["provider"] != "naive":
            timing += f"  ({r['time_vs_naive']:.2f}x naive time, {r['memory_vs_naive']:.3f}x its memory"
            if r.get("cpu_time_vs_naive") is not None:
                timing += f", {r['cpu_time_vs_naive']:.2f}x its process CPU time"
            timing += ")"
        if r.get("measured_over_predicted") is not None:
            timing += f"  [cost model {r['predicted_ms']:.2f} ms: measured/predicted {r['measured_over_predicted']:.2f}]"
        print(f"{r['provider']:>18} {r['mode']:>16} N={r['n']:<6} V={r['v']:<7} {r['status']:>7}  {timing}")
    print("wrote", paths["json"], paths["csv"], plot or "(no plot: matplotlib missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
