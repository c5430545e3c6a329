"""``SFTTrainer``: token-mean NLL of completions, packed ``[P C]`` rows, prompt not scored."""

from __future__ import annotations

import torch

from fastalign.data.token_lists import sft_token_lists
from fastalign.packing import PackedBatch, pack_completion_examples
from fastalign.train.base import Trainer
from fastalign.train.config import SFTConfig


class SFTTrainer(Trainer):
    """Supervised fine-tuning. Data: ``prompt``/``completion`` text or ``prompt_ids``/
    ``completion_ids`` columns. The loss of a step is the sum of completion-token NLLs divided by
    the step's total completion-token count (independent of how examples fall into rows)."""

    config: SFTConfig
    progress_metrics = {"loss": "nll"}  # the loss is the token-mean NLL

    def token_lists(self, data, name: str) -> tuple[list[list[int]], ...]:
        return sft_token_lists(data, self.tokenizer, name, self.config.prompt_boundary)

    def pack_lists(self, lists, *, sort_by_length: bool) -> list[PackedBatch]:
        c = self.config
        return pack_completion_examples(
            *lists, token_budget=c.token_budget, max_prompt_length=c.max_prompt_length,
            max_completion_length=c.max_completion_length, on_overflow=c.on_overflow, sort_by_length=sort_by_length,
            max_length=c.max_length,
        )

    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        # Token-mean over the whole step: the scored tokens of every rank (all-reduced).
        (num_tokens,) = self.global_sum(sum(row.targets.numel() for row in rows))
        num_tokens = int(num_tokens)
        total = 0.0
        for index, row in enumerate(rows):
            with self.autocast():
                logprobs = self.finite("policy log-probs", self.forward(row).logprobs)
            loss = -logprobs.sum() / num_tokens
            self.backward(loss, last=index == len(rows) - 1)
            total += float(loss.detach())
        (total,) = self.global_sum(total)
        return {"loss": total, "scored_tokens": num_tokens}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-mean NLL of the eval completions."""
        if not self.eval_rows:
            raise ValueError("evaluate() needs eval_data")
        was_training = self.policy.training
        self.policy.eval()
        nll, tokens = 0.0, 0
        try:
            for row in self.eval_rows:
                with self.autocast():
                    logprobs = self.policy(row.to(self.device)).logprobs
                nll -= float(logprobs.sum())
                tokens += logprobs.numel()
        finally:
            self.policy.train(was_training)
        return {"nll": nll / max(tokens, 1)}
