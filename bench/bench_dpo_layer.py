"""Benchmark the DPO head step (policy fwd+bwd + reference fwd): naive vs Liger vs fastalign.

    python bench/bench_dpo_layer.py --preset cpu-smoke
    python bench/bench_dpo_layer.py --preset gpu-core     # H100/H200: 8k-32k tokens, H=4096, V=128256

Writes bench/results/<device>/dpo_layer_<preset>.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastalign.bench.dpo_layer import PROVIDERS, run_benchmark
from fastalign.bench.environment import environment
from fastalign.bench.report import plot_results, results_dir, write_results
from fastalign.bench.runner import rows_as_dicts

PRESETS = {
    "cpu-smoke": dict(shapes=[(2, 256, 256, 8192), (4, 256, 256, 8192)], dtype="float32", repeats=3),
    # (pairs, seq_len, H, V): 8k, 16k and 32k tokens per step.
    "gpu-core": dict(shapes=[(4, 1024, 4096, 128256), (8, 1024, 4096, 128256), (16, 1024, 4096, 128256)],
                     dtype="bfloat16", repeats=10),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--providers", nargs="+", choices=sorted(PROVIDERS), default=sorted(PROVIDERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    preset, device = PRESETS[args.preset], torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
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
