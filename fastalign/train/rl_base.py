"""What the RL trainers (PPO, GRPO) share: prompts in a seeded order per epoch, rollouts
through ``fastalign.rollout.generate``, rewards from a ``reward_fn``, packed ``[P C]`` rows of
the sampled completions, and evaluation by the mean reward of greedy completions."""

from __future__ import annotations

import torch
from torch import nn

from fastalign.packing import PackedBatch, pack_completion_examples
from fastalign.rollout import Rollout, generate
from fastalign.rollout.rewards import RewardFn
from fastalign.train import distributed
from fastalign.train.base import Trainer
from fastalign.train.config import TrainConfig
from fastalign.train.config import RolloutConfig  # noqa: F401 - re-exported


class RolloutTrainer(Trainer):
    """Base of the RL trainers. ``train_data`` / ``eval_data``: ``datasets.Dataset`` with a
    ``prompt`` text column; ``reward_fn(prompts, completions) -> list[float]``."""

    config: RolloutConfig

    def __init__(self, model: nn.Module, tokenizer, train_data, config: RolloutConfig, *, reward_fn: RewardFn,
                 eval_data=None) -> None:
        if not callable(reward_fn):
            raise ValueError("reward_fn must be a callable (prompts, completions) -> list[float]")
        if tokenizer is None:
            raise ValueError("tokenizer is required: RL trainers generate text")
        self.reward_fn = reward_fn
        super().__init__(model, tokenizer, train_data, config, eval_data=None)
        self.eval_prompts = prompts_of(eval_data, "eval_data") if eval_data is not None else None

    def fit_to_world(self, config: TrainConfig, world: int, *, main: bool) -> TrainConfig:
        """``prompts_per_step`` rounded up to a multiple of the number of processes (each rank
        samples the same number of prompts), said in one log line."""
        return distributed.round_to_world(config, "prompts_per_step", world, "prompts", main=main)

    def _check_distributed_config(self, config: TrainConfig, strategy: str, world: int) -> None:
        """DDP only: each rank samples its own prompts, and FSDP2 would need every rank to run
        the same number of generation steps and packed rows."""
        if strategy == "fsdp2":
            raise ValueError("PPO / GRPO with strategy='fsdp2' are not supported: use strategy='ddp' (ranks sample "
                             "different numbers of tokens and rows, which FSDP2's collectives cannot follow)")

    @property
    def generator_model(self) -> nn.Module:
        """The HF model that samples (the policy's)."""
        return self.policy.model

    def prepare_train_data(self, train_data) -> None:
        self.prompts = prompts_of(train_data, "train_data")

    def next_prompts(self, count: int) -> list[str]:
        """The next ``count`` prompts of this epoch's seeded order (wrapping epochs)."""
        chosen = []
        order = self.epoch_order(self.epoch, len(self.prompts)).tolist()
        while len(chosen) < count:
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self.epoch_order(self.epoch, len(self.prompts)).tolist()
            chosen.append(self.prompts[order[self.position]])
            self.position += 1
        return chosen

    def local_prompts(self, count: int) -> list[str]:
        """This rank's share of the step's next ``count`` prompts (all of them in one process)."""
        prompts = self.next_prompts(count)
        share = count // self.dist.world_size
        return prompts[self.dist.rank * share : (self.dist.rank + 1) * share]

    def global_mean_std(self, values: torch.Tensor) -> tuple[float, float]:
        """Mean and (population) standard deviation of ``values`` over every rank."""
        flat = values.double().reshape(-1)
        count, total, squares = self.global_sum(flat.numel(), float(flat.sum()), float(flat.square().sum()))
        mean = total / max(count, 1)
        return mean, max(squares / max(count, 1) - mean * mean, 0.0) ** 0.5

    def rollout(self, prompts: list[str]) -> tuple[Rollout, torch.Tensor, list[PackedBatch]]:
        """Sample one completion per prompt; rewards fp32 ``[len(prompts)]``; packed rows on the
        training device (example ``i`` of a row is ``prompts[row.example_index[i]]``)."""
        c = self.config
        rollout = generate(self.generator_model, self.tokenizer, prompts, max_new_tokens=c.max_new_tokens,
                           temperature=c.temperature, top_p=c.top_p, batch_size=c.generation_batch_size)
        rewards = torch.tensor(self.reward_fn(rollout.prompts, rollout.completions), dtype=torch.float32)
        if rewards.shape != (len(prompts),) or not torch.isfinite(rewards).all():
            raise ValueError("reward_fn must return one finite float per completion")
        rows = pack_completion_examples(rollout.prompt_ids, rollout.completion_ids, token_budget=c.token_budget,
                                        on_overflow="truncate", sort_by_length=False)
        return rollout, rewards, [row.to(self.device) for row in rows]

    def can_evaluate(self) -> bool:
        return bool(self.eval_prompts)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean reward of greedy completions of the eval prompts."""
        if not self.eval_prompts:
            raise ValueError("evaluate() needs eval_data")
        rollout = generate(self.generator_model, self.tokenizer, self.eval_prompts,
                           max_new_tokens=self.config.max_new_tokens, batch_size=self.config.generation_batch_size)
        rewards = self.reward_fn(rollout.prompts, rollout.completions)
        return {"reward": sum(rewards) / len(rewards)}


def prompts_of(data, name: str) -> list[str]:
    columns = getattr(data, "column_names", None)
    if columns is None or "prompt" not in columns:
        raise ValueError(f"{name} must be a datasets.Dataset with a 'prompt' column")
    prompts = list(data["prompt"])
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{name} must hold non-empty prompt strings")
    return prompts
