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
on CUDA ``torch.cuda.max_memory_allocated``; the same for each phase of the step (forward, loss
and LM head; decoder backward; embedding backward and optimizer), marked by hooks on the
policy's final norm and embeddings. Per provider (``summarize``): the memory per token of
context length (the slope of the phase that grows fastest, which sets the peak at long
lengths; beside it the slope of the step's peak as measured) and the longest ``L`` whose total
fits the preset's budget (16 GiB on CPU, 80 GiB on GPU).
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
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from long_context_steps import PHASES, PROVIDERS, LongContextPreset, run_case
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


def _slopes(points: list[tuple[float, float]]) -> dict[str, float]:
    """MiB per token: the marginal slope between the two longest lengths, and the least-squares
    line over all of them (slope, intercept, r²)."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    intercept, fit_slope, r2 = fit_line(points)
    return dict(slope=(y1 - y0) / (x1 - x0), fit_slope=fit_slope, fit_intercept=intercept, fit_r2=r2)


def _reach(length: int, peak_mb: float, slope: float, room_mb: float) -> float:
    """The ``L`` at which a peak of ``peak_mb`` at ``length``, growing by ``slope`` MiB per
    token, fills ``room_mb`` (infinite when it does not grow)."""
    return length + (room_mb - peak_mb) / slope if slope > 0 else float("inf")


def summarize(rows: list[dict], budget_gib: float) -> list[dict]:
    """Per provider: memory per token of context length and the longest ``L`` in ``budget_gib``.

    A step's peak is the largest of its phases' peaks (``PHASES``: forward, loss and LM head;
    decoder backward; embedding backward and optimizer), and each phase grows at its own rate:
    TRL's LM head works in tiles that stop growing at 4096 tokens, so its head phase has the
    largest peak at the lengths measured while its decoder backward grows fastest. So the
    peak is modelled as the largest of one line per phase, each through that phase's peaks:

    - ``kib_per_token`` (with ``per_token_phase``): the largest per-phase marginal slope (between
      the two longest lengths) — what one more token costs once ``L`` is long enough for that
      phase to set the peak;
    - ``longest_length``: the ``L`` at which the first phase's line, from its peak at the longest
      measured length, reaches the budget (model's own + phase peak = budget);
    - beside them, as measured: the marginal slope of the step's peak itself
      (``peak_kib_per_token``) and the least-squares line through the peaks (``fit_*``).

    Rows without phase peaks (results from before they were recorded) use the step's peak as
    their only phase.
    """
    summary = []
    for provider in dict.fromkeys(row["provider"] for row in rows):
        ok = sorted((row for row in rows if row["provider"] == provider and row["status"] == "ok"),
                    key=lambda row: row["length"])
        entry: dict[str, Any] = dict(provider=provider, lengths=len(ok))
        if len(ok) >= 2:
            last = ok[-1]
            peak = _slopes([(row["length"], row["peak_above_mb"]) for row in ok])
            phases = [phase for phase in PHASES if all(phase in row.get("phase_peaks_above_mb", {}) for row in ok)]
            lines = {phase: _slopes([(row["length"], row["phase_peaks_above_mb"][phase]) for row in ok])
                     for phase in phases} or {"step": peak}
            at_last = {phase: last["phase_peaks_above_mb"][phase] for phase in phases} or {"step": last["peak_above_mb"]}
            room = budget_gib * 1024 - last["model_own_mb"]
            fastest = max(lines, key=lambda phase: lines[phase]["slope"])
            longest = min(_reach(last["length"], at_last[phase], lines[phase]["slope"], room) for phase in lines)
            entry.update(kib_per_token=lines[fastest]["slope"] * 1024, per_token_phase=fastest,
                         phase_kib_per_token={phase: line["slope"] * 1024 for phase, line in lines.items()},
                         phase_peak_at_longest_mb=at_last,
                         peak_kib_per_token=peak["slope"] * 1024, fit_kib_per_token=peak["fit_slope"] * 1024,
                         fit_intercept_mb=peak["fit_intercept"], fit_r2=peak["fit_r2"],
                         model_own_mb=last["model_own_mb"], longest_measured=last["length"],
                         peak_at_longest_mb=last["peak_above_mb"], seconds_at_longest=last.get("seconds"),
                         longest_length=int(longest) if 0 < longest < float("inf") else None)
        summary.append(entry)
    trl = next((entry for entry in summary if entry["provider"] == "trl" and "kib_per_token" in entry), None)
    for entry in summary:
        if trl is not None and "kib_per_token" in entry:
            entry["per_token_vs_trl"] = _ratio(entry["kib_per_token"], trl["kib_per_token"])
            entry["peak_per_token_vs_trl"] = _ratio(entry["peak_kib_per_token"], trl["peak_kib_per_token"])
    return summary


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None  # a reference that does not grow: no ratio


def _extrapolated_peak(entry: dict, length: float) -> float:
    """MiB above the model's own at ``length`` by the per-phase lines of a summary entry."""
    slopes, peaks = entry["phase_kib_per_token"], entry["phase_peak_at_longest_mb"]
    return max(peaks[phase] + slopes[phase] / 1024 * (length - entry["longest_measured"]) for phase in slopes)


_PHASE_SHORT = {PHASES[0]: "fwd+head", PHASES[1]: "decoder bwd", PHASES[2]: "emb+optim", "step": "step"}


def markdown(rows: list[dict], summary: list[dict], env: dict, budget_gib: float) -> str:
    """The results as two Markdown tables (per case, per provider)."""
    lines = [f"Long-context DPO step, preset `{env['benchmark']['preset_name']}` — {env['device']}, "
             f"torch {env['packages'].get('torch')}, trl {env['packages'].get('trl')}, {env['date_utc'][:10]}, "
             f"git {str(env.get('git_commit'))[:10]}", "",
             "| provider | L | row tokens | model's own (MiB) | peak above (MiB) | per phase: "
             f"{' / '.join(_PHASE_SHORT[phase] for phase in PHASES)} (MiB) | s/step | load 1m | status |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        phases = row.get("phase_peaks_above_mb") or {}
        per_phase = " / ".join(_number(phases.get(phase), ".0f") or "-" for phase in PHASES) if phases else ""
        lines.append(f"| {row['provider']} | {row['length']} | {row.get('row_tokens', '')} | "
                     f"{_number(row.get('model_own_mb'), '.0f')} | {_number(row.get('peak_above_mb'), '.0f')} | "
                     f"{per_phase} | {_number(row.get('seconds'), '.1f')} | {_number(row.get('load_1m_before'), '.1f')} | "
                     f"{row['status']} {row.get('note', '')[:60]} |")
    lines += ["", "Memory per token: each phase's marginal slope between the two longest lengths; the step's peak is "
              "the largest of the phases' peaks, so at long L it grows by the fastest phase's slope (the column "
              "\"memory per token\", and \"vs TRL\"). Longest L: where the first phase, extrapolated from its "
              "peak at the longest measured L with its slope, fills the budget with the model's own memory. "
              "Beside them, as measured: the marginal slope of the step's peak itself (vs TRL's) and the "
              "least-squares line through the peaks (r²).", "",
              f"| provider | memory per token (KiB per token of L) | set by | vs TRL | per phase: "
              f"{' / '.join(_PHASE_SHORT[phase] for phase in PHASES)} | step's peak: marginal (vs TRL) | "
              f"all-points fit (KiB/token, r²) | longest L in {budget_gib:g} GiB | s/step at the longest L |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for entry in summary:
        if "kib_per_token" not in entry:
            lines.append(f"| {entry['provider']} | | | | | | | | |")
            continue
        per_phase = " / ".join(_number(entry["phase_kib_per_token"].get(phase), ".1f") or "-" for phase in PHASES)
        lines.append(f"| {entry['provider']} | {entry['kib_per_token']:.1f} | {_PHASE_SHORT[entry['per_token_phase']]} | "
                     f"{_number(entry.get('per_token_vs_trl'), '.2f')} | {per_phase} | "
                     f"{entry['peak_kib_per_token']:.1f} ({_number(entry.get('peak_per_token_vs_trl'), '.2f')}) | "
                     f"{entry['fit_kib_per_token']:.1f}, {entry['fit_r2']:.3f} | "
                     f"{_number(entry.get('longest_length'), ',')} | {_number(entry.get('seconds_at_longest'), '.0f')} |")
    return "\n".join(lines) + "\n"


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def plot(rows: list[dict], summary: list[dict], env: dict, path: Path, *, title: str) -> Path | None:
    """Peak memory above the model's own vs ``L``, one line per provider (points measured;
    dashed: the extrapolation by the per-phase lines to the longest ``L`` in the budget)."""
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
        fit = fits.get(provider)
        if fit and fit.get("longest_length"):  # dashed: the per-phase lines up to the budget
            xs = [fit["longest_measured"] * (fit["longest_length"] / fit["longest_measured"]) ** (step / 16)
                  for step in range(17)]
            axis.plot(xs, [_extrapolated_peak(fit, x) / 1024 for x in xs], linestyle="--", color=line.get_color(),
                      linewidth=0.8)
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
    parser.add_argument("--tag", type=_tag, default=None,
                        help="suffix of the result files (long_context_<preset>_<tag>.*), e.g. for a run at other lengths")
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


def _tag(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", text):
        raise argparse.ArgumentTypeError(f"--tag must be letters, digits, '.' or '-', got {text!r}")
    return text


def _write(rows: list[dict], preset: LongContextPreset, args, names: list[str], device: torch.device) -> str:
    """JSON (environment, summary, rows), CSV, the Markdown tables and the plot; returns the tables."""
    summary = summarize(rows, preset.budget_gib)
    env = {**environment(device), "benchmark": {"name": "long_context", "preset_name": args.preset,
                                                **dataclasses.asdict(preset), "case_env": CASE_ENV,
                                                "providers": names},
           "summary": summary}
    out_dir = results_dir(args.out, env, device)
    stem = f"long_context_{args.preset}" + (f"_{args.tag}" if args.tag else "")
    write_results(rows, env, out_dir, stem)
    table = markdown(rows, summary, env, preset.budget_gib)
    (out_dir / f"{stem}.md").write_text(table)
    plot(rows, summary, env, out_dir / f"{stem}.png", title=f"One DPO step of one pair vs length ({args.preset})")
    return table


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
