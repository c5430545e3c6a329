"""The comparison: SFT → RM → PPO, SFT → DPO and SFT → GRPO on one model, data set and device.

One SFT run is shared (timed once, counted in every pipeline's total). Per stage: wall time
(trainer construction + training; evaluation and the final checkpoint write excluded), peak
memory, tokens trained on, and held-out quality; per pipeline: the sums (time, tokens), the
maximum (memory) and the quality of its final model.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset at the start of each
stage (everything resident on the GPU during the stage: policy, reference, critic, reward
model, optimizer state, activations). On CPU either ``rss`` — the peak resident-set size
sampled every few ms by a thread, minus the RSS at the start of the stage (cheap; undercounts
memory the allocator reuses from earlier stages) — or ``tensors`` — the peak bytes of live
tensors allocated during the stage (``fastalign.testing.AllocationRecorder``; exact, but its
Python dispatch hook slows the stage, ~40% on the tiny model, which then skews the times).

Quality (held-out, ``num_test`` prompts of the embedded task): exact match of greedy answers
judged by ``verify``; win rate against the SFT model (``fastalign.eval.win_rate``); preference
log-prob accuracy (``fastalign.eval.preference_accuracy``); for the reward model its own
held-out reward accuracy (``RewardTrainer.evaluate()``). PPO is rewarded by the trained reward
model, GRPO by the task's graded verifier (``verify_score``), as the pipelines are usually run.

    python bench/bench_pipeline.py --preset cpu-tiny    # tiny model, 2-core CPU, ~3-5 minutes
    python bench/bench_pipeline.py --preset gpu-1b      # ~1.2B random Llama, bf16: time and memory only

Writes bench/results/<device>/pipeline_<preset>.{json,csv,png} and prints a table. The stages:
``bench/pipeline_stages.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline_stages import (
    PipelinePreset,
    StageContext,
    StageResult,
    load_model,
    run_dpo,
    run_grpo,
    run_ppo,
    run_rm,
    run_sft,
)
from fastalign.bench.cli import add_device_options, device_from_args
from fastalign.bench.environment import environment, load_average
from fastalign.bench.report import headless_pyplot, results_dir, save_figure, write_results

PIPELINES = {"SFT→RM→PPO": ("sft", "rm", "ppo"), "SFT→DPO": ("sft", "dpo"), "SFT→GRPO": ("sft", "grpo")}

PRESETS = {
    # 2-core CPU, ~3-5 minutes: the demo's SFT and DPO, a matching RM, short PPO / GRPO runs.
    "cpu-tiny": PipelinePreset(),
    # ~1.2B random-init Llama, bf16: time and memory only (its outputs mean nothing).
    "gpu-1b": PipelinePreset(model="1b", dtype="bfloat16", num_train=2000, num_test=32, token_budget=8192,
                             sft_steps=10, rm_steps=10, dpo_steps=10, ppo_steps=8, grpo_steps=8,
                             sft_learning_rate=1e-5, rm_learning_rate=1e-5, dpo_learning_rate=1e-6,
                             rl_learning_rate=1e-6, prompts_per_step=64, max_new_tokens=16, quality=False),
}


@dataclass
class PipelineResult:
    name: str
    stages: list[StageResult]

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.stages)

    @property
    def peak_memory_mb(self) -> float:
        return max(s.peak_memory_mb for s in self.stages)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    def rows(self) -> list[dict[str, Any]]:
        """One row per stage and a ``total`` row (sums; memory: the max; quality: the final model's)."""
        rows = [{"pipeline": self.name, "stage": s.stage, "shared": s.stage == "sft",
                 **{k: v for k, v in dataclasses.asdict(s).items() if k != "stage"}} for s in self.stages]
        final = dataclasses.asdict(self.final)
        total = {**{key: None for key in rows[0]}, "pipeline": self.name, "stage": "total", "shared": False,
                 "steps": sum(s.steps for s in self.stages), "wall_s": self.wall_s,
                 "cpu_s": sum(s.cpu_s for s in self.stages),
                 "peak_memory_mb": self.peak_memory_mb, "memory_method": self.final.memory_method,
                 "tokens": self.tokens, "generated_tokens": sum(s.generated_tokens for s in self.stages)}
        for key in ("exact_match", "win_rate_vs_sft", "preference_accuracy"):
            total[key] = final[key]
        return rows + [total]


def run_pipelines(preset: PipelinePreset, device: torch.device, *, memory_method: str | None = None,
                  work_dir: str | Path | None = None, log=print) -> list[PipelineResult]:
    """Run the shared SFT, then RM → PPO, DPO and GRPO from copies of the SFT model."""
    from fastalign.data import make_preference_task, make_sft_task
    from fastalign.train.config import DPOConfig
    from fastalign.train.dpo import DPOTrainer

    method = memory_method or ("cuda" if device.type == "cuda" else "rss")
    if (method == "cuda") != (device.type == "cuda"):
        raise ValueError(f"memory method {method!r} does not fit device {device}")
    model, tokenizer = load_model(preset)
    sft_data = make_sft_task(preset.num_train, preset.num_test, seed=preset.seed)
    pairs = make_preference_task(preset.num_train, preset.num_test, seed=preset.seed)
    eval_config = DPOConfig(output_dir="unused", token_budget=preset.token_budget, reference="none", progress=False)
    eval_rows = DPOTrainer.pack_rows(pairs["test"], tokenizer, eval_config) if preset.quality else []
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastalign-pipeline-"))
        ctx = StageContext(preset, device, method, tokenizer, sft_data, pairs, eval_rows,
                           list(pairs["test"]["prompt"]), Path(work_dir))
        stages: dict[str, StageResult] = {}
        log(f"[pipeline] sft: {preset.sft_steps} steps")
        stages["sft"] = run_sft(ctx, model)
        del model
        log(f"[pipeline] sft {stages['sft'].wall_s:.1f}s; rm: {preset.rm_steps} steps")
        stages["rm"], reward_model = run_rm(ctx)
        log(f"[pipeline] rm {stages['rm'].wall_s:.1f}s; ppo: {preset.ppo_steps} steps")
        stages["ppo"] = run_ppo(ctx, reward_model)
        del reward_model
        log(f"[pipeline] ppo {stages['ppo'].wall_s:.1f}s; dpo: {preset.dpo_steps} steps")
        stages["dpo"] = run_dpo(ctx)
        log(f"[pipeline] dpo {stages['dpo'].wall_s:.1f}s; grpo: {preset.grpo_steps} steps")
        stages["grpo"] = run_grpo(ctx)
        log(f"[pipeline] grpo {stages['grpo'].wall_s:.1f}s")
    return [PipelineResult(name, [stages[s] for s in chain]) for name, chain in PIPELINES.items()]


# -- report ---------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cpu(result: PipelineResult) -> float:
    return sum(s.cpu_s for s in result.stages)


def format_table(results: list[PipelineResult]) -> str:
    header = (f"{'pipeline':<12} {'stage':<6} {'steps':>5} {'wall s':>8} {'CPU s':>7} {'peak MiB':>9} {'tokens':>9} "
              f"{'gen tok':>8} {'exact':>6} {'win/SFT':>7} {'pref acc':>8} {'RM acc':>6}")
    lines = [header, "-" * len(header)]
    for result in results:
        for row in result.rows():
            stage = row["stage"] + ("*" if row["shared"] else "")
            lines.append(
                f"{row['pipeline']:<12} {stage:<6} {row['steps']:>5} {row['wall_s']:>8.1f} {row['cpu_s']:>7.1f} "
                f"{row['peak_memory_mb']:>9.1f} {row['tokens']:>9} {row['generated_tokens']:>8} "
                f"{_fmt(row['exact_match'], '.3f'):>6} {_fmt(row['win_rate_vs_sft'], '.3f'):>7} "
                f"{_fmt(row['preference_accuracy'], '.3f'):>8} {_fmt(row['reward_accuracy'], '.3f'):>6}")
    by_name = {r.name: r for r in results}
    rlhf, dpo = by_name["SFT→RM→PPO"], by_name["SFT→DPO"]
    lines.append(f"* shared SFT run, counted in every total. SFT→DPO / SFT→RM→PPO: time "
                 f"{dpo.wall_s / rlhf.wall_s:.2f}x (CPU time {_cpu(dpo) / _cpu(rlhf):.2f}x), "
                 f"peak memory {dpo.peak_memory_mb / rlhf.peak_memory_mb:.2f}x "
                 f"(memory: {rlhf.final.memory_method})")
    return "\n".join(lines)


def plot(results: list[PipelineResult], env: dict, path: Path, *, title: str) -> Path | None:
    """Stacked wall time and grouped peak memory per pipeline by stage, plus a quality panel."""
    plt = headless_pyplot()
    if plt is None:
        return None
    colors = {"sft": "#9e9e9e", "rm": "#8c6bb1", "ppo": "#e6550d", "dpo": "#3182bd", "grpo": "#31a354"}
    names = [r.name for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1, 1.2, 1.2]})
    seen: set[str] = set()
    for i, result in enumerate(results):
        bottom = 0.0
        for stage in result.stages:
            label = stage.stage.upper() if stage.stage not in seen else None
            seen.add(stage.stage)
            axes[0].bar(i, stage.wall_s, bottom=bottom, color=colors[stage.stage], label=label)
            bottom += stage.wall_s
        axes[0].text(i, bottom, f"{bottom:.0f}s", ha="center", va="bottom", fontsize=8)
    axes[0].set(xticks=range(len(names)), title="wall time (stacked by stage)", ylabel="s")
    axes[0].set_xticklabels(names, fontsize=8)
    axes[0].legend(fontsize=7)
    width = 0.25
    for i, result in enumerate(results):
        count = len(result.stages)
        for j, stage in enumerate(result.stages):
            x = i + (j - (count - 1) / 2) * width
            axes[1].bar(x, stage.peak_memory_mb, width=width, color=colors[stage.stage])
            axes[1].text(x, stage.peak_memory_mb, stage.stage, ha="center", va="bottom", fontsize=7)
    method = results[0].final.memory_method
    axes[1].set(xticks=range(len(names)), title=f"peak memory per stage ({method})", ylabel="MiB")
    axes[1].set_xticklabels(names, fontsize=8)
    metrics = [("exact_match", "exact match"), ("win_rate_vs_sft", "win rate vs SFT"),
               ("preference_accuracy", "pref. log-p acc.")]
    if any(r.final.exact_match is not None for r in results):
        for k, (key, label) in enumerate(metrics):
            values = [getattr(r.final, key) or 0.0 for r in results]
            axes[2].bar([i + (k - 1) * width for i in range(len(results))], values, width=width, label=label)
        axes[2].set(xticks=range(len(names)), ylim=(0, 1), title="held-out quality of the final model")
        axes[2].set_xticklabels(names, fontsize=8)
        axes[2].legend(fontsize=7)
    else:
        axes[2].text(0.5, 0.5, "quality not measured\n(random-init preset)", ha="center", va="center")
        axes[2].set_axis_off()
    fig.suptitle(f"{title}\n{env['device']} - torch {env['packages'].get('torch')} - {env['date_utc'][:10]}",
                 fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """``python bench/bench_pipeline.py [options]``; returns the exit status."""
    parser = argparse.ArgumentParser(description="SFT→RM→PPO vs SFT→DPO vs SFT→GRPO: time, memory, tokens, "
                                                 "quality.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    add_device_options(parser)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--cpu-memory", choices=("rss", "tensors"), default="rss",
                        help="CPU peak memory: sampled RSS delta (default) or live tensor bytes (slows the run)")
    for field in ("num_train", "num_test", "sft_steps", "rm_steps", "dpo_steps", "ppo_steps", "grpo_steps",
                  "prompts_per_step", "num_generations", "max_new_tokens", "token_budget"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, dest=field, help="override the preset")
    args = parser.parse_args(argv)
    device = device_from_args(parser, args)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(PipelinePreset)
                 if getattr(args, f.name, None) is not None}
    preset = dataclasses.replace(PRESETS[args.preset], **overrides)
    method = "cuda" if device.type == "cuda" else args.cpu_memory

    load_before = load_average()
    results = run_pipelines(preset, device, memory_method=method)
    rows = [row for result in results for row in result.rows()]
    env = {**environment(device), "benchmark": {"name": "pipeline", "preset_name": args.preset,
                                                "memory_method": method, **dataclasses.asdict(preset)},
           # Other processes on the machine skew wall times: the 1-minute load before and after.
           "load_average_1m": {"before": load_before, "after": load_average()},
           "pipelines": {r.name: {"wall_s": r.wall_s, "peak_memory_mb": r.peak_memory_mb, "tokens": r.tokens}
                         for r in results}}
    out_dir = results_dir(args.out, env, device)
    stem = f"pipeline_{args.preset}"
    paths = write_results(rows, env, out_dir, stem)
    figure = plot(results, env, out_dir / f"{stem}.png",
                  title=f"SFT→RM→PPO vs SFT→DPO vs SFT→GRPO ({args.preset}, {preset.model} model)")
    print(format_table(results))
    print("wrote", paths["json"], paths["csv"], figure or "(no plot: matplotlib missing)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
