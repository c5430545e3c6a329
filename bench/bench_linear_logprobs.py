"""Benchmark fused linear log-probs vs naive / torch.compile / chunked / peers.

    python bench/bench_linear_logprobs.py --preset cpu-smoke        # any machine, ~2 min
    python bench/bench_linear_logprobs.py --preset gpu-core         # H100/H200, < 10 min

Writes bench/results/<device>/linear_logprobs_<preset>.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastalign.bench.environment import environment, load_average
from fastalign.bench.linear_logprobs import MODES, add_comparisons, rows_as_dicts, run_benchmark
from fastalign.bench.report import plot_results, results_dir, write_results

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
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results root folder")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
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
