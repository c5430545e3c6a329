"""The stages of ``bench/bench_pipeline.py``: SFT, RM, PPO, DPO and GRPO, each timed and
metered from trainer construction to the end of training, then judged on held-out prompts.

Peak memory per stage comes from the harness's meter (``fastalign.bench.memory``): ``cuda``,
``rss`` or ``tensors``. Quality (held-out, ``num_test`` prompts of the embedded task): exact
match of greedy answers judged by ``verify``; win rate against the SFT model
(``fastalign.eval.win_rate``); preference log-prob accuracy
(``fastalign.eval.preference_accuracy``); for the reward model its own held-out reward accuracy
(``RewardTrainer.evaluate()``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastalign.bench.memory import memory_meter, trim_heap

STAGES = ("sft", "rm", "ppo", "dpo", "grpo")


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
class StageContext:
    """What every stage reads: the preset, the device, the data and the SFT model (``baseline``)."""

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


def _common(ctx: StageContext, stage: str, steps: int) -> dict[str, Any]:
    p = ctx.preset
    return dict(output_dir=str(ctx.work_dir / stage), max_steps=steps, token_budget=p.token_budget, seed=p.seed,
                device=str(ctx.device), dtype="bfloat16" if p.dtype == "bfloat16" else "auto", progress=False)


def _timed(ctx: StageContext, stage: str, steps: int, build) -> tuple[Any, StageResult]:
    """Build the trainer and train it under the clock and the memory meter."""
    trim_heap()  # earlier stages' trainers (reference cycles) must not count in this one
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


def _quality(ctx: StageContext, model: torch.nn.Module, result: StageResult) -> None:
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


def _fresh_policy(ctx: StageContext) -> torch.nn.Module:
    """A trainable copy of the SFT model on the device."""
    return copy.deepcopy(ctx.baseline).requires_grad_(True).train().to(ctx.device)


def _release(trainer) -> None:
    """Drop what a finished stage left behind (the caller's reference dies on return)."""
    import gc

    trainer.optimizer.state.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sft(ctx: StageContext, model: torch.nn.Module) -> StageResult:
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


def run_dpo(ctx: StageContext) -> StageResult:
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


def run_rm(ctx: StageContext) -> tuple[StageResult, torch.nn.Module]:
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


def run_ppo(ctx: StageContext, reward_model: torch.nn.Module) -> StageResult:
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


def run_grpo(ctx: StageContext) -> StageResult:
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


def _with_baseline(ctx: StageContext, evaluate) -> None:
    if not ctx.preset.quality:
        return
    ctx.baseline.to(ctx.device)
    try:
        evaluate()
    finally:
        ctx.baseline.cpu()


def load_model(preset: PipelinePreset):
    from fastalign.data import byte_tokenizer
    from fastalign.models.presets import preset_model

    tokenizer = byte_tokenizer()
    dtype = torch.bfloat16 if preset.dtype == "bfloat16" else torch.float32
    model = preset_model(preset.model, len(tokenizer), seed=preset.seed, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype=dtype)
    return model, tokenizer

