"""Benchmark packed prefix-shared rows vs padded concatenated batches (policy log-probs, fwd+bwd).

Both methods (``bench/packing_methods.py``) compute the per-example chosen / rejected log-prob
sums of the same synthetic, HH-like preference examples (long prompts, short answers), a
DPO-like scalar from them, and its backward through the whole model: ``padded_concat`` (TRL's
collation, full logits) and ``packed_shared`` (fastalign: ``[P C R]`` rows, the prompt once,
the fused log-prob head).

Before timing, both methods' per-example sums are compared on a few examples (fp32: tight,
bf16: loose tolerance). One model instance serves both methods (the check runs the packed path
through ``packed_logprobs(model, ...)``, which restores the model's attention implementation),
so peak memory counts one set of weights. Reported per method: wall time of a pass over all
examples (median of ``repeats`` after ``warmup``), examples/s, useful tokens/s (useful =
sum of P + C + R, the same for both), tokens actually computed (padding and duplicated prompts
included), peak CUDA memory (``None`` on CPU) and the speedup over ``padded_concat``.

    python bench/bench_packing.py --preset cpu-smoke     # tiny random Llama, fp32, any machine
    python bench/bench_packing.py --preset gpu-core      # H100/H200: 1.24B random Llama, bf16

Writes bench/results/<device>/packing_<preset>.{json,csv,png}. Exits 1 when the equivalence
check (per-example log-prob sums of both methods) fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from packing_methods import (
    CheckResult,
    PackingPreset,
    build_model,
    check_equivalence,
    micro_batches,
    pack_rows,
    pad_concatenated,
    padded_logprobs,
)
from fastalign.bench.cli import add_device_options, device_from_args
from fastalign.bench.environment import environment
from fastalign.bench.measure import is_out_of_memory, time_callable
from fastalign.bench.memory import CudaPeak
from fastalign.bench.report import headless_pyplot, results_dir, save_figure, write_results
from fastalign.bench.runner import dtype_name
from fastalign.bench.workloads import (
    DTYPES,
    HH_LIKE_LENGTHS,
    LLAMA_1B_SHAPE,
    LengthDistribution,
    baseline_attention,
    synthetic_preference_data,
)
from fastalign.models import PolicyModel, packed_logprobs

PRESETS: dict[str, PackingPreset] = {
    # Tiny random Llama in fp32: any machine, about a minute on 2 idle cores.
    "cpu-smoke": PackingPreset(
        model=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=512, vocab_size=1024, max_position_embeddings=2048),
        dtype="float32",
        lengths=LengthDistribution(prompt_mean=112, answer_mean=16, prompt_min=8, prompt_max=384,
                                   answer_min=2, answer_max=64),
        examples=96, micro_batch_pairs=4, token_budget=1024, warmup=1, repeats=5,
    ),
    # Llama-3.2-1B-shaped random model in bf16 (1.24B parameters, tied embeddings). Padded
    # micro-batches of 4 pairs hold ~7-15k tokens; packed rows hold <= 8192 tokens.
    "gpu-core": PackingPreset(
        model=LLAMA_1B_SHAPE,
        dtype="bfloat16",
        lengths=HH_LIKE_LENGTHS,
        examples=128, micro_batch_pairs=4, token_budget=8192, warmup=1, repeats=3,
        check_atol=1.0, check_rtol=1e-2,
    ),
}


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class PackingRow:
    method: str
    status: str  # ok | oom | error
    attention: str
    dtype: str
    examples: int
    forwards: int  # padded micro-batches / packed rows per pass
    useful_tokens: int
    computed_tokens: int
    computed_over_useful: float
    note: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    examples_per_s: float | None = None
    useful_tokens_per_s: float | None = None
    computed_tokens_per_s: float | None = None
    peak_mem_mb: float | None = None  # torch.cuda.max_memory_allocated (weights included); None on CPU
    step_mem_mb: float | None = None  # the same above what was live before the pass
    prep_ms: float | None = None  # host-side collation / packing of all examples (not in median_ms)
    speedup_vs_padded: float | None = None
    check_examples: int = 0
    check_max_abs_diff: float | None = None
    check_max_rel_diff: float | None = None
    check_passed: bool | None = None


def _clear_grads(model) -> None:
    for parameter in model.parameters():
        parameter.grad = None


def _measure(row: PackingRow, model, run_pass, device: torch.device, preset: PackingPreset) -> PackingRow:
    try:
        _clear_grads(model)
        meter = None  # peak memory is a CUDA column: None on CPU
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            meter = CudaPeak(device)
        with meter or contextlib.nullcontext():
            timing = time_callable(run_pass, device, warmup=preset.warmup, repeats=preset.repeats)
        row.median_ms, row.p20_ms, row.p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
        if meter is not None:
            row.peak_mem_mb, row.step_mem_mb = meter.peak_bytes / 2**20, meter.peak_above_start / 2**20
        seconds = timing.median_ms / 1e3
        row.examples_per_s = row.examples / seconds
        row.useful_tokens_per_s = row.useful_tokens / seconds
        row.computed_tokens_per_s = row.computed_tokens / seconds
    except Exception as error:  # noqa: BLE001 - an OOM is a result, not a crash
        row.status = "oom" if is_out_of_memory(error) else "error"
        row.note = f"{type(error).__name__}: {str(error)[:300]}"
    finally:
        _clear_grads(model)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


@dataclass
class PackingResult:
    rows: list[PackingRow]
    check: CheckResult
    config: dict = field(default_factory=dict)

    def as_dicts(self) -> list[dict]:
        return [dataclasses.asdict(row) for row in self.rows]


def run_benchmark(preset: PackingPreset, device: torch.device) -> PackingResult:
    """Check, then time a forward+backward pass over all examples for both methods."""
    device = torch.device(device)
    dtype = DTYPES[preset.dtype]
    if preset.token_budget < preset.lengths.max_example_tokens:
        raise ValueError(f"token_budget {preset.token_budget} < largest possible example "
                         f"{preset.lengths.max_example_tokens}")
    data = synthetic_preference_data(preset.examples, preset.lengths, preset.model["vocab_size"], seed=preset.seed)
    n, useful = len(data), data.useful_tokens
    base_attention = baseline_attention(device)
    model = build_model(preset, device, attn_implementation=base_attention)

    check = check_equivalence(model, data, preset, device)
    restored = model.config._attn_implementation
    if restored != base_attention:
        raise RuntimeError(f"packed_logprobs left the model's attention at {restored!r}, not {base_attention!r}")
    check_fields = dict(check_examples=check.examples, check_max_abs_diff=check.max_abs_diff,
                        check_max_rel_diff=check.max_rel_diff, check_passed=check.passed)

    # padded_concat: host-side collation first (a data-loader cost), then the timed passes.
    begin = time.perf_counter()
    batches = [pad_concatenated(data, index, device) for index in micro_batches(n, preset.micro_batch_pairs)]
    collate_ms = (time.perf_counter() - begin) * 1e3

    def padded_pass() -> None:
        _clear_grads(model)
        for batch in batches:
            chosen, rejected = padded_logprobs(model, batch)
            (-(chosen - rejected).sum() / n).backward()

    padded_tokens = sum(batch.num_tokens for batch in batches)
    padded = PackingRow("padded_concat", "ok", base_attention, dtype_name(dtype), n, len(batches), useful,
                        padded_tokens, padded_tokens / useful, prep_ms=collate_ms, **check_fields)
    _measure(padded, model, padded_pass, device, preset)
    del batches

    # packed_shared: packing first (C++ packer, a data-loader cost), then the timed passes.
    begin = time.perf_counter()
    rows = pack_rows(data, preset, device)
    pack_ms = (time.perf_counter() - begin) * 1e3
    policy = PolicyModel(model, attention="auto")

    def packed_pass() -> None:
        _clear_grads(model)
        for row in rows:
            out = packed_logprobs(policy, row)
            (-(out.chosen - out.rejected).sum() / n).backward()

    packed_tokens = sum(row.num_tokens for row in rows)
    packed = PackingRow("packed_shared", "ok", "", dtype_name(dtype), n, len(rows), useful, packed_tokens,
                        packed_tokens / useful, prep_ms=pack_ms, **check_fields)
    _measure(packed, model, packed_pass, device, preset)
    chosen = model.config._attn_implementation  # fastalign_<backend> picked by "auto" on the first row
    packed.attention = chosen if chosen != base_attention else "fastalign (auto, not reached)"

    if padded.median_ms and packed.median_ms:
        padded.speedup_vs_padded = 1.0
        packed.speedup_vs_padded = padded.median_ms / packed.median_ms
    config = {
        "preset": preset.as_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "baseline_attention": base_attention,
        "packed_attention": packed.attention,
        "token_budget_fill": packed_tokens / (len(rows) * preset.token_budget),
    }
    return PackingResult([padded, packed], check, config)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot_bars(rows: list[dict], environment: dict, path: Path, *, title: str) -> Path | None:
    """Bars per method: time per pass, useful tokens/s, tokens computed, peak memory (CUDA).

    ``None`` without matplotlib or without a successful row.
    """
    plt = headless_pyplot()
    if plt is None:
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    panels = [("median_ms", "time per pass (ms, median)"), ("useful_tokens_per_s", "useful tokens / s"),
              ("computed_tokens", "tokens computed per pass")]
    if any(r["peak_mem_mb"] is not None for r in ok):
        panels.append(("peak_mem_mb", "peak CUDA memory (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    names = [r["method"] for r in ok]
    colors = ["#999999" if name == "padded_concat" else "#1f77b4" for name in names]
    for axis, (key, label) in zip(axes[0], panels):
        values = [r[key] or 0.0 for r in ok]
        bars = axis.bar(names, values, color=colors)
        axis.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], fontsize=8)
        axis.set_title(label, fontsize=10)
        axis.tick_params(axis="x", labelsize=8)
    speedup = next((r["speedup_vs_padded"] for r in ok if r["method"] == "packed_shared"), None)
    headline = f" - packed {speedup:.2f}x padded" if speedup else ""
    fig.suptitle(f"{title}{headline}\n{environment['device']} - torch {environment['packages'].get('torch')}"
                 f" - {environment['date_utc'][:10]}", fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    add_device_options(parser)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--examples", type=int, help="override the preset's number of examples")
    parser.add_argument("--repeats", type=int, help="override the preset's timed passes")
    parser.add_argument("--warmup", type=int, help="override the preset's untimed passes")
    args = parser.parse_args(argv)
    device = device_from_args(parser, args)
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
