"""``GRPOTrainer``: group sampling per prompt, group-normalized advantages, no critic, KL to
the reference as a loss term (Shao et al. 2024, 2402.03300; Dr. GRPO options).

One optimizer step: ``prompts_per_step`` prompts × ``num_generations`` samples at
``temperature`` from the current policy (HF ``generate``), rewards from ``reward_fn``,
advantages ``(r − mean_group) / std_group``, then the clipped surrogate + ``β·k3`` on packed
``[P C]`` rows. Policy log-probs come from the fused kernel at the sampling temperature — no
full-vocabulary logits in the training pass. On-policy (one pass per rollout batch), so the
"old" log-probs are the current ones detached, as in TRL with ``num_iterations=1``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fastalign.losses.aggregation import AGGREGATIONS
from fastalign.losses.rl import ADVANTAGE_SCALING, grpo_advantages, grpo_loss, kl_estimate
from fastalign.losses.sequence import pad_by_sequence
from fastalign.models import PolicyModel
from fastalign.packing import PackedBatch, pack_completion_examples
from fastalign.rollout import generate
from fastalign.rollout.rewards import RewardFn
from fastalign.train.base import Trainer
from fastalign.train.config import TrainConfig, _choice


@dataclass
class GRPOConfig(TrainConfig):
    """``beta``: weight of the k3 KL-to-reference loss term (0: no reference model at all)."""

    learning_rate: float = 1e-5
    num_generations: int = 8
    prompts_per_step: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.04
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    scale_rewards: str = "std"
    aggregation: str = "seq_mean_token_mean"
    generation_batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        for name in ("num_generations", "prompts_per_step", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_generations < 2 and self.scale_rewards == "std":
            raise ValueError("num_generations must be >= 2 to normalize rewards within a group")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        _choice("scale_rewards", self.scale_rewards, ADVANTAGE_SCALING)
        _choice("aggregation", self.aggregation, AGGREGATIONS)


class GRPOTrainer(Trainer):
    """Train ``model`` with GRPO on the prompts of ``train_data`` (a ``datasets.Dataset`` with a
    ``prompt`` text column), rewarded by ``reward_fn(prompts, completions) -> list[float]``."""

    config: GRPOConfig

    def __init__(self, model: nn.Module, tokenizer, train_data, config: GRPOConfig, *, reward_fn: RewardFn,
                 eval_data=None) -> None:
        if not isinstance(config, GRPOConfig):
            raise ValueError(f"config must be a GRPOConfig, got {type(config).__name__}")
        if not callable(reward_fn):
            raise ValueError("reward_fn must be a callable (prompts, completions) -> list[float]")
        if tokenizer is None:
            raise ValueError("tokenizer is required: GRPO generates text")
        self.reward_fn = reward_fn
        super().__init__(model, tokenizer, train_data, config, eval_data=None)
        self.eval_prompts = _prompts(eval_data, "eval_data") if eval_data is not None else None
        self.reference = None
        if config.beta > 0:
            frozen = copy.deepcopy(self.policy.model).eval().requires_grad_(False)
            self.reference = PolicyModel(frozen, attention=config.attention)
        self._rollout: dict[str, torch.Tensor] = {}

    # -- data: prompts, in a seeded order per epoch -------------------------------------
    def prepare_train_data(self, train_data) -> None:
        self.prompts = _prompts(train_data, "train_data")

    def _next_prompts(self) -> list[str]:
        chosen = []
        while len(chosen) < self.config.prompts_per_step:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.prompts), generator=generator).tolist()
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                continue
            chosen.append(self.prompts[order[self.position]])
            self.position += 1
        return chosen

    def next_rows(self) -> list[PackedBatch]:
        """Sample a group per prompt, score it, and pack the completions into rows."""
        c = self.config
        prompts = [p for p in self._next_prompts() for _ in range(c.num_generations)]
        rollout = generate(self.policy.model, self.tokenizer, prompts, max_new_tokens=c.max_new_tokens,
                           temperature=c.temperature, top_p=c.top_p, batch_size=c.generation_batch_size)
        rewards = torch.tensor(self.reward_fn(rollout.prompts, rollout.completions), dtype=torch.float32)
        if rewards.shape != (len(prompts),) or not torch.isfinite(rewards).all():
            raise ValueError("reward_fn must return one finite float per completion")
        self._rollout = {
            "rewards": rewards,
            "advantages": grpo_advantages(rewards, c.num_generations, scale=c.scale_rewards),
            "lengths": torch.tensor([len(ids) for ids in rollout.completion_ids], dtype=torch.float32),
        }
        rows = pack_completion_examples(rollout.prompt_ids, rollout.completion_ids, token_budget=c.token_budget,
                                        on_overflow="truncate", sort_by_length=False)
        return [row.to(self.device) for row in rows]

    # -- the loss -------------------------------------------------------------------------
    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        c = self.config
        num_sequences = sum(row.num_examples for row in rows)
        num_tokens = sum(row.targets.numel() for row in rows)
        # Dr. GRPO's constant normalizer: the generation budget, the same for every step.
        max_tokens = c.max_new_tokens if c.aggregation == "seq_mean_token_sum_norm" else None
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        for row in rows:
            with self.autocast():
                logprobs = self.policy(row, temperature=c.temperature).logprobs
                reference = None
                if self.reference is not None:
                    with torch.no_grad():
                        reference = self.reference(row, temperature=c.temperature).logprobs
            new, mask = pad_by_sequence(logprobs, row.label_example, row.num_examples)
            ref = pad_by_sequence(reference, row.label_example, row.num_examples)[0] if reference is not None else None
            advantages = self._rollout["advantages"].to(self.device)[row.example_index]
            result = grpo_loss(new, new.detach(), advantages, mask, ref_logprobs=ref, beta=c.beta, clip_eps=c.clip_eps,
                               clip_eps_high=c.clip_eps_high, aggregation=c.aggregation, num_tokens=num_tokens,
                               num_sequences=num_sequences, max_tokens=max_tokens)
            result.loss.backward()
            totals["loss"] += float(result.loss.detach())
            totals["clip_fraction"] += float(result.clip_fraction) * row.targets.numel() / num_tokens
            if ref is not None:
                kl = (kl_estimate(new.detach(), ref, "k3") * mask).sum()
                totals["kl"] += float(kl) / num_tokens
        rewards = self._rollout["rewards"]
        return {**totals, "reward": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
                "completion_length": float(self._rollout["lengths"].mean()), "sequences": num_sequences}

    def can_evaluate(self) -> bool:
        return bool(self.eval_prompts)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean reward of greedy completions of the eval prompts."""
        if not self.eval_prompts:
            raise ValueError("evaluate() needs eval_data")
        rollout = generate(self.policy.model, self.tokenizer, self.eval_prompts, max_new_tokens=self.config.max_new_tokens,
                           batch_size=self.config.generation_batch_size)
        rewards = self.reward_fn(rollout.prompts, rollout.completions)
        return {"reward": sum(rewards) / len(rewards)}


def _prompts(data, name: str) -> list[str]:
    columns = getattr(data, "column_names", None)
    if columns is None or "prompt" not in columns:
        raise ValueError(f"{name} must be a datasets.Dataset with a 'prompt' column")
    prompts = list(data["prompt"])
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{name} must hold non-empty prompt strings")
    return prompts
