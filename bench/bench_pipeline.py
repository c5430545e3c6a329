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

Used by ``bench/bench_pipeline.py`` and ``fastalign bench pipeline``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastalign.bench.environment import environment
from fastalign.bench.report import headless_pyplot, results_dir, save_figure, write_results

STAGES = ("sft", "rm", "ppo", "dpo", "grpo")
PIPELINES = {"SFT→RM→PPO": ("sft", "rm", "ppo"), "SFT→DPO": ("sft", "dpo"), "SFT→GRPO": ("sft", "grpo")}
MEMORY_METHODS = ("cuda", "rss", "tensors")


@dataclass
class PipelinePreset:
    """Model, data and step counts of one comparison."""

    model: str = "tiny"  # a ``fastalign.models.presets`` name
    dtype: str = "float32"  # weights; "bfloat16" also turns on bf16 autocast
    num_train: int = 5000
    num_test: int = 200
    token_budget: int = 1536
    sft_steps: int = 600
    rm_steps: int = 150
    dpo_steps: int = 150
    ppo_steps: int = 30
    grpo_steps: int = 30
    sft_learning_rate: float = 3e-3
    rm_learning_rate: float = 3e-4
    dpo_learning_rate: float = 2e-4
    rl_learning_rate: float = 1e-4
    prompts_per_step: int = 16  # PPO prompts per rollout; GRPO: prompts_per_step // num_generations groups
    num_generations: int = 8
    ppo_epochs: int = 2
    max_new_tokens: int = 12
    eval_max_new_tokens: int = 16
    quality: bool = True  # held-out evaluations (off for the random-init 1B preset)
    seed: int = 0


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
class StageResult:
    """One training stage (SFT is shared by all pipelines)."""

    stage: str
    steps: int
    wall_s: float
    cpu_s: float  # process CPU time (all threads): less sensitive than wall time to other load
    peak_memory_mb: float
    memory_method: str
    tokens: int  # packed row tokens trained on, summed over optimizer steps (rollout rows included)
    generated_tokens: int = 0  # tokens sampled in rollouts (PPO / GRPO)
    exact_match: float | None = None
    win_rate_vs_sft: float | None = None
    preference_accuracy: float | None = None
    reward_accuracy: float | None = None  # RM: its own held-out accuracy; DPO: implicit-reward accuracy
    final_train_reward: float | None = None  # PPO / GRPO: mean rollout reward of the last step


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


# -- memory ---------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim_heap() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc), so that a stage's RSS
    delta is not hidden by memory an earlier stage freed but the allocator kept."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RSSSampler:
    """Peak RSS above the RSS at entry, sampled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self):
        _trim_heap()
        self._base = self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_bytes = self._peak - self._base


class _CudaPeak:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device)


def memory_meter(device: torch.device, method: str):
    """A context manager with ``peak_bytes`` after exit."""
    if method == "cuda":
        return _CudaPeak(device)
    if method == "tensors":
        from fastalign.testing.memory import AllocationRecorder

        return AllocationRecorder()
    if method == "rss":
        return _RSSSampler()
    raise ValueError(f"memory method must be one of {MEMORY_METHODS}, got {method!r}")


# -- stages ---------------------------------------------------------------------------------
class _Counter:
    """Counts the packed row tokens each optimizer step trains on and the rollouts' sampled tokens."""

    def __init__(self, trainer) -> None:
        self.tokens = 0
        self.generated = 0
        next_rows = trainer.next_rows
        trainer.next_rows = lambda: self._rows(next_rows())
        if hasattr(trainer, "rollout"):
            rollout = trainer.rollout

            def counted(prompts):
                out = rollout(prompts)
                self.generated += sum(len(ids) for ids in out[0].completion_ids)
                return out

            trainer.rollout = counted
        trainer.save_checkpoint = lambda: None  # the final checkpoint write is I/O, not training

    def _rows(self, rows):
        self.tokens += sum(int(row.num_tokens) for row in rows)
        return rows


@dataclass
class _Context:
    preset: PipelinePreset
    device: torch.device
    memory_method: str
    tokenizer: Any
    sft_data: Any
    pairs: Any
    eval_rows: list
    prompts: list[str]
    work_dir: Path
    baseline: torch.nn.Module | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _common(ctx: _Context, stage: str, steps: int) -> dict[str, Any]:
    p = ctx.preset
    return dict(output_dir=str(ctx.work_dir / stage), max_steps=steps, token_budget=p.token_budget, seed=p.seed,
                device=str(ctx.device), dtype="bfloat16" if p.dtype == "bfloat16" else "auto", progress=False)


def _timed(ctx: _Context, stage: str, steps: int, build) -> tuple[Any, StageResult]:
    """Build the trainer and train it under the clock and the memory meter."""
    _trim_heap()  # earlier stages' trainers (reference cycles) must not count in this one
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    meter = memory_meter(ctx.device, ctx.memory_method)
    _sync(ctx.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with meter:
        trainer = build()
        counter = _Counter(trainer)
        trainer.train()
        _sync(ctx.device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = StageResult(stage=stage, steps=steps, wall_s=wall, cpu_s=cpu, peak_memory_mb=meter.peak_bytes / 2**20,
                         memory_method=ctx.memory_method, tokens=counter.tokens, generated_tokens=counter.generated)
    if trainer.history and "reward" in trainer.history[-1]:
        result.final_train_reward = float(trainer.history[-1]["reward"])
    return trainer, result


def _quality(ctx: _Context, model: torch.nn.Module, result: StageResult) -> None:
    if not ctx.preset.quality:
        return
    from fastalign.data import verify
    from fastalign.eval import preference_accuracy, win_rate
    from fastalign.models import PolicyModel

    judged = win_rate(model, ctx.baseline, ctx.tokenizer, ctx.prompts, verify,
                      max_new_tokens=ctx.preset.eval_max_new_tokens)
    result.exact_match, result.win_rate_vs_sft = judged["accuracy"], judged["win_rate"]
    rows = [row.to(ctx.device) for row in ctx.eval_rows]
    result.preference_accuracy = preference_accuracy(PolicyModel(model), rows)["logp_accuracy"]


def _fresh_policy(ctx: _Context) -> torch.nn.Module:
    """A trainable copy of the SFT model on the device."""
    return copy.deepcopy(ctx.baseline).requires_grad_(True).train().to(ctx.device)


def _release(trainer) -> None:
    """Drop what a finished stage left behind (the caller's reference dies on return)."""
    import gc

    trainer.optimizer.state.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sft(ctx: _Context, model: torch.nn.Module) -> StageResult:
    from fastalign.train.config import SFTConfig
    from fastalign.train.sft import SFTTrainer

    p = ctx.preset
    config = SFTConfig(learning_rate=p.sft_learning_rate, warmup_steps=min(20, p.sft_steps // 10),
                       **_common(ctx, "sft", p.sft_steps))
    trainer, result = _timed(ctx, "sft", p.sft_steps,
                             lambda: SFTTrainer(model, ctx.tokenizer, ctx.sft_data["train"], config))
    # The SFT model: the start of every pipeline and the win-rate baseline (kept off the GPU).
    ctx.baseline = copy.deepcopy(trainer.policy.model).cpu().eval().requires_grad_(False)
    if p.quality:
        ctx.baseline.to(ctx.device)
        _quality(ctx, ctx.baseline, result)
        ctx.baseline.cpu()
    _release(trainer)
    return result


def run_dpo(ctx: _Context) -> StageResult:
    from fastalign.train.config import DPOConfig
    from fastalign.train.dpo import DPOTrainer

    p = ctx.preset
    config = DPOConfig(learning_rate=p.dpo_learning_rate, warmup_steps=min(5, p.dpo_steps // 10), beta=0.1,
                       rpo_alpha=1.0, reference="separate", **_common(ctx, "dpo", p.dpo_steps))
    trainer, result = _timed(ctx, "dpo", p.dpo_steps,
                             lambda: DPOTrainer(_fresh_policy(ctx), ctx.tokenizer, ctx.pairs["train"], config,
                                                eval_data=ctx.pairs["test"] if p.quality else None))
    if p.quality:
        result.reward_accuracy = trainer.evaluate().get("reward_accuracy")
        _with_baseline(ctx, lambda: _quality(ctx, trainer.policy.model, result))
    _release(trainer)
    return result


def run_rm(ctx: _Context) -> tuple[StageResult, torch.nn.Module]:
    """Train the reward model; returns it (a frozen ``RewardModel``) for PPO."""
    from fastalign.train.reward import RewardConfig, RewardTrainer

    p = ctx.preset
    config = RewardConfig(learning_rate=p.rm_learning_rate, warmup_steps=min(10, p.rm_steps // 10),
                          **_common(ctx, "rm", p.rm_steps))
    trainer, result = _timed(ctx, "rm", p.rm_steps,
                             lambda: RewardTrainer(_fresh_policy(ctx), ctx.tokenizer, ctx.pairs["train"], config,
                                                   eval_data=ctx.pairs["test"] if p.quality else None))
    if p.quality:
        result.reward_accuracy = trainer.evaluate()["reward_accuracy"]
    reward_model = trainer.policy.eval().requires_grad_(False).cpu()
    _release(trainer)
    return result, reward_model


def run_ppo(ctx: _Context, reward_model: torch.nn.Module) -> StageResult:
    from fastalign.rollout.rewards import reward_model_reward
    from fastalign.train.ppo import PPOConfig, PPOTrainer

    p = ctx.preset
    config = PPOConfig(learning_rate=p.rl_learning_rate, prompts_per_step=p.prompts_per_step,
                       max_new_tokens=p.max_new_tokens, ppo_epochs=p.ppo_epochs, kl_coef=0.05,
                       **_common(ctx, "ppo", p.ppo_steps))

    def build():
        # The reward model sits on the device for the whole stage: part of PPO's memory.
        scorer = reward_model_reward(reward_model.to(ctx.device), ctx.tokenizer, token_budget=p.token_budget)
        return PPOTrainer(_fresh_policy(ctx), ctx.tokenizer, ctx.pairs["train"], config, reward_fn=scorer)

    trainer, result = _timed(ctx, "ppo", p.ppo_steps, build)
    reward_model.cpu()
    _with_baseline(ctx, lambda: _quality(ctx, trainer.policy.model, result))
    _release(trainer)
    return result


def run_grpo(ctx: _Context) -> StageResult:
    from fastalign.data import verify_score
    from fastalign.rollout.rewards import verifier_reward
    from fastalign.train.grpo import GRPOConfig, GRPOTrainer

    p = ctx.preset
    groups = max(1, p.prompts_per_step // p.num_generations)
    config = GRPOConfig(learning_rate=p.rl_learning_rate, prompts_per_step=groups, num_generations=p.num_generations,
                        max_new_tokens=p.max_new_tokens, beta=0.04, **_common(ctx, "grpo", p.grpo_steps))
    trainer, result = _timed(ctx, "grpo", p.grpo_steps,
                             lambda: GRPOTrainer(_fresh_policy(ctx), ctx.tokenizer, ctx.pairs["train"], config,
                                                 reward_fn=verifier_reward(verify_score)))
    _with_baseline(ctx, lambda: _quality(ctx, trainer.policy.model, result))
    _release(trainer)
    return result


def _with_baseline(ctx: _Context, evaluate) -> None:
    if not ctx.preset.quality:
        return
    ctx.baseline.to(ctx.device)
    try:
        evaluate()
    finally:
        ctx.baseline.cpu()


def _load_model(preset: PipelinePreset):
    from fastalign.data import byte_tokenizer
    from fastalign.models.presets import preset_model

    tokenizer = byte_tokenizer()
    dtype = torch.bfloat16 if preset.dtype == "bfloat16" else torch.float32
    model = preset_model(preset.model, len(tokenizer), seed=preset.seed, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype=dtype)
    return model, tokenizer


def run_pipelines(preset: PipelinePreset, device: torch.device, *, memory_method: str | None = None,
                  work_dir: str | Path | None = None, log=print) -> list[PipelineResult]:
    """Run the shared SFT, then RM → PPO, DPO and GRPO from copies of the SFT model."""
    from fastalign.data import make_preference_task, make_sft_task
    from fastalign.train.config import DPOConfig
    from fastalign.train.dpo import DPOTrainer

    method = memory_method or ("cuda" if device.type == "cuda" else "rss")
    if (method == "cuda") != (device.type == "cuda"):
        raise ValueError(f"memory method {method!r} does not fit device {device}")
    model, tokenizer = _load_model(preset)
    sft_data = make_sft_task(preset.num_train, preset.num_test, seed=preset.seed)
    pairs = make_preference_task(preset.num_train, preset.num_test, seed=preset.seed)
    eval_config = DPOConfig(output_dir="unused", token_budget=preset.token_budget, reference="none", progress=False)
    eval_rows = DPOTrainer.pack_rows(pairs["test"], tokenizer, eval_config) if preset.quality else []
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastalign-pipeline-"))
        ctx = _Context(preset, device, method, tokenizer, sft_data, pairs, eval_rows, list(pairs["test"]["prompt"]),
                       Path(work_dir))
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


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """``bench/bench_pipeline.py`` / ``fastalign bench pipeline``."""
    parser = argparse.ArgumentParser(prog="fastalign bench pipeline",
                                     description="SFT→RM→PPO vs SFT→DPO vs SFT→GRPO: time, memory, tokens, "
                                                 "quality.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--cpu-memory", choices=("rss", "tensors"), default="rss",
                        help="CPU peak memory: sampled RSS delta (default) or live tensor bytes (slows the run)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    for field in ("num_train", "num_test", "sft_steps", "rm_steps", "dpo_steps", "ppo_steps", "grpo_steps",
                  "prompts_per_step", "num_generations", "max_new_tokens", "token_budget"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, dest=field, help="override the preset")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(PipelinePreset)
                 if getattr(args, f.name, None) is not None}
    preset = dataclasses.replace(PRESETS[args.preset], **overrides)
    method = "cuda" if device.type == "cuda" else args.cpu_memory

    load_before = _load_average()
    results = run_pipelines(preset, device, memory_method=method)
    rows = [row for result in results for row in result.rows()]
    env = {**environment(device), "benchmark": {"name": "pipeline", "preset_name": args.preset,
                                                "memory_method": method, **dataclasses.asdict(preset)},
           # Other processes on the machine skew wall times: the 1-minute load before and after.
           "load_average_1m": {"before": load_before, "after": _load_average()},
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
