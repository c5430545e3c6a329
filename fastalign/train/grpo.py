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
import torch
from torch import nn

from fastalign.losses.rl import grpo_advantages, grpo_loss, kl_estimate
from fastalign.losses.sequence import pad_by_sequence
from fastalign.models import PolicyModel
from fastalign.packing import PackedBatch
from fastalign.rollout.rewards import RewardFn
from fastalign.train.rl_base import RolloutTrainer
from fastalign.train.config import GRPOConfig  # noqa: F401 - re-exported


class GRPOTrainer(RolloutTrainer):
    """Train ``model`` with GRPO on the prompts of ``train_data`` (a ``datasets.Dataset`` with a
    ``prompt`` text column), rewarded by ``reward_fn(prompts, completions) -> list[float]``."""

    config: GRPOConfig
    progress_metrics = {"loss": "loss", "reward": "reward", "kl": "kl"}

    def __init__(self, model: nn.Module, tokenizer, train_data, config: GRPOConfig, *, reward_fn: RewardFn,
                 eval_data=None) -> None:
        if not isinstance(config, GRPOConfig):
            raise ValueError(f"config must be a GRPOConfig, got {type(config).__name__}")
        super().__init__(model, tokenizer, train_data, config, reward_fn=reward_fn, eval_data=eval_data)
        self.reference = None
        if config.beta > 0:
            frozen = copy.deepcopy(self.policy.model).eval().requires_grad_(False)
            self.reference = PolicyModel(frozen, attention=config.attention)
        self._rollout: dict[str, torch.Tensor] = {}

    def next_rows(self) -> list[PackedBatch]:
        """Sample a group per prompt, score it, and pack the completions into rows."""
        c = self.config
        prompts = [p for p in self.local_prompts(c.prompts_per_step) for _ in range(c.num_generations)]
        rollout, rewards, rows = self.rollout(prompts)
        self._rollout = {
            "rewards": rewards,
            "advantages": grpo_advantages(rewards, c.num_generations, scale=c.scale_rewards),
            "lengths": torch.tensor([len(ids) for ids in rollout.completion_ids], dtype=torch.float32),
        }
        return rows

    # -- the loss -------------------------------------------------------------------------
    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        c = self.config
        # Normalized over the whole step: every rank's sequences and tokens (all-reduced).
        num_sequences, num_tokens = (int(n) for n in self.global_sum(sum(row.num_examples for row in rows),
                                                                     sum(row.targets.numel() for row in rows)))
        # Dr. GRPO's constant normalizer: the generation budget, the same for every step.
        max_tokens = c.max_new_tokens if c.aggregation == "seq_mean_token_sum_norm" else None
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        for index, row in enumerate(rows):
            with self.autocast():
                logprobs = self.forward(row, temperature=c.temperature).logprobs
                reference = None
                if self.reference is not None:
                    with torch.no_grad():
                        reference = self.reference(row, temperature=c.temperature).logprobs
            logprobs = self.finite("policy log-probs", logprobs)
            reference = self.finite("reference log-probs", reference)
            new, mask = pad_by_sequence(logprobs, row.label_example, row.num_examples)
            ref = pad_by_sequence(reference, row.label_example, row.num_examples)[0] if reference is not None else None
            advantages = self._rollout["advantages"].to(self.device)[row.example_index]
            result = grpo_loss(new, new.detach(), advantages, mask, ref_logprobs=ref, beta=c.beta, clip_eps=c.clip_eps,
                               clip_eps_high=c.clip_eps_high, aggregation=c.aggregation, num_tokens=num_tokens,
                               num_sequences=num_sequences, max_tokens=max_tokens)
            self.backward(result.loss, last=index == len(rows) - 1)
            totals["loss"] += float(result.loss.detach())
            totals["clip_fraction"] += float(result.clip_fraction) * row.targets.numel() / num_tokens
            if ref is not None:
                kl = (kl_estimate(new.detach(), ref, "k3") * mask).sum()
                totals["kl"] += float(kl) / num_tokens
        reward_mean, reward_std = self.global_mean_std(self._rollout["rewards"])
        length_mean, _ = self.global_mean_std(self._rollout["lengths"])
        return {**self.global_sums(totals), "reward": reward_mean, "reward_std": reward_std,
                "completion_length": length_mean, "sequences": num_sequences}
