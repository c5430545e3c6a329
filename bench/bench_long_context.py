"""Benchmark: the memory of one full DPO step of one long pair, vs its length — TRL 1.16's
``DPOTrainer`` at its most memory-frugal settings against fastalign with each memory feature on
and off.

The step: policy forward + backward, reference forward (no grad), optimizer step (AdamW), on one
pair whose prompt is 3/4 and whose answers are 1/4 of the context length ``L``: ``P = 3L/4``,
``C = R = L/4``, so each sequence ``[P C]`` / ``[P R]`` holds ``L`` tokens (what TRL runs: two
rows of ``L``) and fastalign's packed row ``[P C R]`` holds ``1.25 L``. Random-weight Llama
models built from configs (nothing downloaded); the reference is a frozen copy of the policy.

Providers (``PROVIDERS``):

- ``trl``: ``trl.DPOTrainer`` (1.16), gradient checkpointing on (non-reentrant), its own fused
  LM head (always on in 1.16: chunked log-probs, no ``[tokens, V]`` logits), reference forward
  under ``no_grad``; on CUDA also transformers' checkpoint offload (``offload=True``: the
  checkpointed activations in pinned host memory). Not used: ``padding_free`` (disabled in
  1.16: it warns and pads — one pair has no padding anyway), ``use_liger_kernel`` (deprecated,
  CUDA only, layer kernels only), ``precompute_ref_log_probs`` (removes the reference forward
  from the step, which this benchmark measures).
- ``fastalign``: ``fastalign.train.DPOTrainer`` with every memory feature: gradient
  checkpointing, the sequence-tiled MLP (``mlp_tile_tokens``), the reference forward first
  (``reference_first``) and on CUDA ``offload_checkpoints``. Packed row, fused head, chunked
  packed attention on CPU (always on).
- ``fastalign-no-<feature>``: the same with one feature off; ``fastalign-none``: all off
  (gradient checkpointing stays on, as for TRL).

Memory: the peak above the memory of the trainer after a warm-up step at a short length (weights
of policy and reference, gradients, AdamW state: "the model's own"). On CPU the resident set
size sampled every 5 ms (``fastalign.bench.memory.memory_meter(..., "rss")``; each case runs
in a fresh process with glibc's mmap threshold fixed, so freed tensors leave the resident set),
on CUDA ``torch.cuda.max_memory_allocated``. Per provider (``summarize``): the memory per token
of context length (the marginal slope at the long end, and a least-squares line over all
lengths) and the longest ``L`` whose total fits the preset's budget (16 GiB on CPU, 80 GiB on
GPU).
Seconds per step: one step, on a shared machine; the 1-minute load average is recorded beside
every case.

    python bench/bench_long_context.py --preset cpu      # H=576 Llama, V=49152, L in 1k..8k
    python bench/bench_long_context.py --preset gpu-1b   # Llama-3.2-1B shape, L in 4k..64k

Writes bench/results/<device>/long_context_<preset>.{json,csv,md,png}. The measured step:
``bench/long_context_steps.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from long_context_steps import PROVIDERS, LongContextPreset, run_case
from fastalign.bench.cli import device_from_args
from fastalign.bench.environment import environment
from fastalign.bench.report import headless_pyplot, results_dir, save_figure, write_results
from fastalign.bench.workloads import LLAMA_1B_SHAPE

RESULT_MARK = "LONG_CONTEXT_RESULT "
# Every large allocation straight from mmap: freed tensors leave the resident set at once, so
# the sampled RSS follows live memory (glibc otherwise raises the threshold as it sees frees).
CASE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


CPU_MODEL = dict(hidden_size=576, num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152, max_position_embeddings=16384, tie_word_embeddings=True)
PRESETS: dict[str, LongContextPreset] = {
    # A tiny model: the harness end to end in seconds (its numbers mean nothing).
    "cpu-smoke": LongContextPreset(model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128, vocab_size=512,
                                              max_position_embeddings=1024),
                                   dtype="float32", lengths=(64, 128), budget_gib=16.0, mlp_tile_tokens=32,
                                   warmup_length=32),
    "cpu": LongContextPreset(model=CPU_MODEL, dtype="float32", lengths=(1024, 2048, 4096, 8192), budget_gib=16.0,
                             mlp_tile_tokens=1024),
    # Llama-3.2-1B's shape, all 16 layers; positions up to 80k for the 64k rows (1.25 L).
    "gpu-1b": LongContextPreset(model={**LLAMA_1B_SHAPE, "max_position_embeddings": 81920}, dtype="bfloat16",
                                lengths=(4096, 8192, 16384, 32768, 65536), budget_gib=80.0, mlp_tile_tokens=4096),
}


# -- the run: every case in its own process -----------------------------------------------------
def _case_in_subprocess(preset_name: str, provider: str, length: int, device: str, timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--preset", preset_name, "--device", device,
               "--case", provider, str(length)]
    env = {**os.environ, **CASE_ENV}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(provider=provider, length=length, status="error", note=f"timed out after {timeout:.0f} s")
    for line in result.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return dict(provider=provider, length=length, status="error",
                note=f"exit {result.returncode}: {(result.stderr or result.stdout)[-300:]}")


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Least-squares ``y = a + b x``: ``(a, b, r²)``, or ``None`` for fewer than 2 points."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for _, y in points)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return intercept, slope, 1 - residual / total if total else 1.0


def summarize(rows: list[dict], budget_gib: float) -> list[dict]:
    """Per provider: memory per token of context length and the longest ``L`` in ``budget_gib``.

    ``kib_per_token`` is the marginal slope between the two longest lengths measured: what one
    more token costs at the long end. Buffers that grow only up to some length (TRL's head works
    in tiles of 4096 tokens, so its tiles stop growing at ``2L = 4096``) make a line through
    all points steeper than that; the least-squares line over all points is reported beside it
    (``fit_kib_per_token``, ``fit_r2``). ``longest_length`` extrapolates from the longest
    measured step with the marginal slope: model's own + peak(L_max) + slope·(L - L_max) = budget.
    """
    summary = []
    for provider in dict.fromkeys(row["provider"] for row in rows):
        ok = sorted((row for row in rows if row["provider"] == provider and row["status"] == "ok"),
                    key=lambda row: row["length"])
        entry: dict[str, Any] = dict(provider=provider, lengths=len(ok))
        if len(ok) >= 2:
            last, before = ok[-1], ok[-2]
            slope = (last["peak_above_mb"] - before["peak_above_mb"]) / (last["length"] - before["length"])
            intercept, fit_slope, r2 = fit_line([(row["length"], row["peak_above_mb"]) for row in ok])
            room = budget_gib * 1024 - last["model_own_mb"] - last["peak_above_mb"]
            longest = last["length"] + room / slope if slope > 0 else None
            entry.update(kib_per_token=slope * 1024, fit_kib_per_token=fit_slope * 1024, fit_intercept_mb=intercept,
                         fit_r2=r2, model_own_mb=last["model_own_mb"], longest_measured=last["length"],
                         peak_at_longest_mb=last["peak_above_mb"], seconds_at_longest=last.get("seconds"),
                         longest_length=int(longest) if longest is not None and longest > 0 else None)
        summary.append(entry)
    trl = next((entry for entry in summary if entry["provider"] == "trl" and "kib_per_token" in entry), None)
    for entry in summary:
        if trl is not None and "kib_per_token" in entry:
            entry["per_token_vs_trl"] = entry["kib_per_token"] / trl["kib_per_token"]
    return summary


def markdown(rows: list[dict], summary: list[dict], env: dict, budget_gib: float) -> str:
    """The results as two Markdown tables (per case, per provider)."""
    lines = [f"Long-context DPO step, preset `{env['benchmark']['preset_name']}` — {env['device']}, "
             f"torch {env['packages'].get('torch')}, trl {env['packages'].get('trl')}, {env['date_utc'][:10]}, "
             f"git {str(env.get('git_commit'))[:10]}", "",
             "| provider | L | row tokens | model's own (MiB) | peak above (MiB) | s/step | load 1m | status |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['provider']} | {row['length']} | {row.get('row_tokens', '')} | "
                     f"{_number(row.get('model_own_mb'), '.0f')} | {_number(row.get('peak_above_mb'), '.0f')} | "
                     f"{_number(row.get('seconds'), '.1f')} | {_number(row.get('load_1m_before'), '.1f')} | "
                     f"{row['status']} {row.get('note', '')[:60]} |")
    lines += ["", "Memory per token: the marginal slope between the two longest lengths (one more token at the long "
              "end); beside it the least-squares slope over all lengths and its r². Longest L: extrapolated from "
              "the longest measured step with the marginal slope.", "",
              f"| provider | KiB per token of L | vs TRL | all-points fit (KiB/token, r²) | longest L in "
              f"{budget_gib:g} GiB | s/step at the longest L |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for entry in summary:
        fit = (f"{entry['fit_kib_per_token']:.1f}, {entry['fit_r2']:.3f}" if "fit_kib_per_token" in entry else "")
        lines.append(f"| {entry['provider']} | {_number(entry.get('kib_per_token'), '.1f')} | "
                     f"{_number(entry.get('per_token_vs_trl'), '.2f')} | {fit} | "
                     f"{_number(entry.get('longest_length'), ',')} | {_number(entry.get('seconds_at_longest'), '.0f')} |")
    return "\n".join(lines) + "\n"


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def plot(rows: list[dict], summary: list[dict], env: dict, path: Path, *, title: str) -> Path | None:
    """Peak memory above the model's own vs ``L``, one line per provider (points measured;
    dashed: the extrapolation with the marginal slope to the longest ``L`` in the budget)."""
    plt = headless_pyplot()
    if plt is None:
        return None
    fig, axis = plt.subplots(figsize=(7.5, 4.8))
    fits = {entry["provider"]: entry for entry in summary if "kib_per_token" in entry}
    for provider in dict.fromkeys(row["provider"] for row in rows):
        ok = sorted((row["length"], row["peak_above_mb"] / 1024) for row in rows
                    if row["provider"] == provider and row["status"] == "ok")
        if not ok:
            continue
        (line,) = axis.plot([x for x, _ in ok], [y for _, y in ok], marker="o", label=provider)
        if provider in fits and fits[provider].get("longest_length"):  # dashed: the extrapolation to the budget
            fit = fits[provider]
            xs = [fit["longest_measured"], fit["longest_length"]]
            ys = [fit["peak_at_longest_mb"] / 1024, (fit["peak_at_longest_mb"] + fit["kib_per_token"] / 1024
                                                     * (xs[1] - xs[0])) / 1024]
            axis.plot(xs, ys, linestyle="--", color=line.get_color(), linewidth=0.8)
    axis.set(xlabel="context length L (tokens of [P C]; prompt 3/4, answers 1/4)",
             ylabel="peak memory above the model's own (GiB)", xscale="log", yscale="log")
    axis.legend(fontsize=8)
    fig.suptitle(f"{title}\n{env['device']} - torch {env['packages'].get('torch')} - {env['date_utc'][:10]}",
                 fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--providers", nargs="+", choices=sorted(PROVIDERS), help="default: all for the device")
    parser.add_argument("--lengths", nargs="+", type=int, help="override the preset's context lengths")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--case", nargs=2, metavar=("PROVIDER", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--resummarize", type=Path, metavar="JSON",
                        help="recompute the summary, tables and plot of a results JSON (rows kept as measured)")
    args = parser.parse_args(argv)
    if args.resummarize:
        print(resummarize(args.resummarize))
        return 0
    preset = PRESETS[args.preset]
    if args.lengths:
        preset = dataclasses.replace(preset, lengths=tuple(args.lengths))
    device = device_from_args(parser, args)  # no --threads: each case sets its own (CASE_ENV)
    if args.case:  # one case, in this (fresh) process: print its row
        provider, length = PROVIDERS[args.case[0]], int(args.case[1])
        print(RESULT_MARK + json.dumps(run_case(preset, provider, length, device)), flush=True)
        return 0
    names = args.providers or [name for name, p in PROVIDERS.items() if device.type == "cuda" or not p.cuda_only]
    rows: list[dict] = []
    for length in preset.lengths:  # interleaved, so load changes on a shared machine hit every provider
        for name in names:
            rows.append(_case_in_subprocess(args.preset, name, length, args.device, args.timeout))
            row = rows[-1]
            print(f"{name:30s} L={length:6d} {row['status']:6s} peak above {row.get('peak_above_mb', 0):9.1f} MiB "
                  f"{row.get('seconds', 0):8.1f} s  {row.get('note', '')[:80]}", flush=True)
            table = _write(rows, preset, args, names, device)  # after every case: a killed run keeps its rows
    print(table)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


def resummarize(path: Path) -> str:
    """Rewrite the summary (JSON), the Markdown tables and the plot of the results JSON at
    ``path`` from its measured rows and recorded environment; returns the tables."""
    from fastalign.bench.environment import _git_commit

    data = json.loads(Path(path).read_text())
    rows, env = data["rows"], data["environment"]
    budget = env["benchmark"]["budget_gib"]
    env = {**env, "summary": summarize(rows, budget), "summarized_at_commit": _git_commit()}
    stem = Path(path).with_suffix("")
    write_results(rows, env, stem.parent, stem.name)
    table = markdown(rows, env["summary"], env, budget)
    stem.with_suffix(".md").write_text(table)
    plot(rows, env["summary"], env, stem.with_suffix(".png"),
         title=f"One DPO step of one pair vs length ({env['benchmark']['preset_name']})")
    return table


def _write(rows: list[dict], preset: LongContextPreset, args, names: list[str], device: torch.device) -> str:
    """JSON (environment, summary, rows), CSV, the Markdown tables and the plot; returns the tables."""
    summary = summarize(rows, preset.budget_gib)
    env = {**environment(device), "benchmark": {"name": "long_context", "preset_name": args.preset,
                                                **dataclasses.asdict(preset), "case_env": CASE_ENV,
                                                "providers": names},
           "summary": summary}
    out_dir = results_dir(args.out, env, device)
    stem = f"long_context_{args.preset}"
    write_results(rows, env, out_dir, stem)
    table = markdown(rows, summary, env, preset.budget_gib)
    (out_dir / f"{stem}.md").write_text(table)
    plot(rows, summary, env, out_dir / f"{stem}.png", title=f"One DPO step of one pair vs length ({args.preset})")
    return table


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
