"""SFT's step loss is the sum of completion-token NLLs over every row of the step divided by the
step's total completion-token count (``/ num_tokens``), checked against the plain HF forward of
each example with ``rows_per_step > 1`` and rows of different token counts; its mutation twin (a
per-row mean) fails the same check."""

from __future__ import annotations

import copy
import random

import datasets
import pytest
import torch

from fastalign.train import SFTConfig, SFTTrainer
from tests.models.tiny_models import tiny_model


def completion_data(count: int = 12, seed: int = 0) -> datasets.Dataset:
    rng = random.Random(seed)

    def tokens(low, high):
        return [rng.randrange(0, 61) for _ in range(rng.randint(low, high))]

    return datasets.Dataset.from_list([dict(prompt_ids=tokens(2, 6), completion_ids=tokens(1, 7))
                                       for _ in range(count)])


def _trainer(cls, tmp_path) -> SFTTrainer:
    config = SFTConfig(output_dir=str(tmp_path), rows_per_step=3, token_budget=24, max_steps=1, progress=False)
    return cls(tiny_model("llama"), None, completion_data(), config)


def _check_step_normalization(trainer: SFTTrainer) -> None:
    """The gradient and loss of one accumulated step equal those of the global token mean."""
    data = completion_data()
    oracle = copy.deepcopy(trainer.policy.model)
    rows = trainer.next_rows()
    counts = [row.targets.numel() for row in rows]
    assert len(rows) == 3 and len(set(counts)) > 1, f"rows must differ in scored tokens, got {counts}"
    trainer.optimizer.zero_grad(set_to_none=True)
    metrics = trainer.accumulate(rows)

    total_nll, total_tokens = 0.0, 0
    for index in torch.cat([row.example_index for row in rows]).tolist():
        prompt, completion = data[index]["prompt_ids"], data[index]["completion_ids"]
        ids = torch.tensor([prompt + completion])
        logprobs = oracle(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        targets = ids[0, 1:]
        scored = logprobs[torch.arange(len(targets)), targets][len(prompt) - 1:]
        total_nll = total_nll - scored.sum()
        total_tokens += len(completion)
    assert total_tokens == sum(counts) == metrics["scored_tokens"]
    expected = total_nll / total_tokens
    expected.backward()
    assert metrics["loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    for (name, got), want in zip(trainer.policy.model.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(got.grad.double(), want.grad.double(), atol=1e-6, rtol=1e-4, msg=name)


def test_sft_step_loss_is_normalized_by_the_global_token_count(tmp_path):
    _check_step_normalization(_trainer(SFTTrainer, tmp_path))


class PerRowMeanSFT(SFTTrainer):
    """The mutation: each row's token mean, averaged over rows (what `/ num_tokens` prevents)."""

    def accumulate(self, rows):
        total = 0.0
        for index, row in enumerate(rows):
            loss = -self.forward(row).logprobs.mean() / len(rows)
            self.backward(loss, last=index == len(rows) - 1)
            total += float(loss.detach())
        return {"loss": total, "scored_tokens": sum(row.targets.numel() for row in rows)}


def test_mutation_twin_a_per_row_mean_fails(tmp_path):
    with pytest.raises(AssertionError):
        _check_step_normalization(_trainer(PerRowMeanSFT, tmp_path))
