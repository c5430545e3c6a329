"""Benchmark packed prefix-shared rows vs padded concatenated batches (policy log-probs, fwd+bwd).

    python bench/bench_packing.py --preset cpu-smoke     # tiny random Llama, fp32, any machine
    python bench/bench_packing.py --preset gpu-core      # H100/H200: 1.24B random Llama, bf16

Writes bench/results/<device>/packing_<preset>.{json,csv,png}. Exits 1 when the equivalence
check (per-example log-prob sums of both methods) fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from fastalign.bench.environment import environment
from fastalign.bench.packing import PRESETS, plot_bars, run_benchmark
from fastalign.bench.report import results_dir, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--examples", type=int, help="override the preset's number of examples")
    parser.add_argument("--repeats", type=int, help="override the preset's timed passes")
    parser.add_argument("--warmup", type=int, help="override the preset's untimed passes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    overrides = {key: getattr(args, key) for key in ("examples", "repeats", "warmup") if getattr(args, key) is not None}
    preset = dataclasses.replace(PRESETS[args.preset], **overrides)

    result = run_benchmark(preset, device)
    rows = result.as_dicts()
    env = {**environment(device), "benchmark": {"name": "packing", "preset_name": args.preset, **result.config}}
    out_dir = results_dir(args.out, env, device)
    stem = f"packing_{args.preset}"
    paths = write_results(rows, env, out_dir, stem)
    plot = plot_bars(rows, env, out_dir / f"{stem}.png",
                     title=f"Policy log-probs fwd+bwd: packed prefix-shared vs padded ({args.preset})")
    check = result.check
    print(f"check on {check.examples} examples: max |diff| {check.max_abs_diff:.3g} "
          f"(relative {check.max_rel_diff:.3g}) -> {'passed' if check.passed else 'FAILED'}")
    for r in rows:
        if r["status"] == "ok":
            memory = f", peak {r['peak_mem_mb']:.0f} MiB" if r["peak_mem_mb"] is not None else ""
            print(f"{r['method']:>14} [{r['attention']}] {r['median_ms']:9.1f} ms/pass  "
                  f"{r['examples_per_s']:8.1f} ex/s  {r['useful_tokens_per_s']:10.0f} useful tok/s  "
                  f"computed {r['computed_tokens']} tok ({r['computed_over_useful']:.2f}x useful)"
                  f"{memory}  speedup {r['speedup_vs_padded'] or float('nan'):.2f}x")
        else:
            print(f"{r['method']:>14} {r['status']}: {r['note']}")
    print("wrote", paths["json"], paths["csv"], plot or "(no plot)")
    return 0 if check.passed and all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
