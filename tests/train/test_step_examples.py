"""Batches a user can state: ``pairs_per_step`` (DPO, RM) and ``examples_per_step`` (SFT) put
exactly that many examples in every step, packed into as many rows as the token budget needs,
visiting each example once per epoch; the loss is normalized the same way however they are
packed. And the end-of-run optimizer checkpoint is optional (``save_final_state``)."""

from __future__ import annotations

import datasets
import pytest
import torch

from fastalign.train import DPOConfig, DPOTrainer, RewardConfig, SFTConfig, SFTTrainer
from fastalign.train.checkpoint import list_checkpoints
from tests.models.tiny_models import tiny_model
from tests.train.test_reference_and_resume import random_pairs


def _record_steps(trainer) -> list[list]:
    """Per step, the rows the step trained on (recorded as the loop consumes them)."""
    steps = []
    original = trainer.accumulate

    def accumulate(rows):
        steps.append([row.example_index.tolist() for row in rows])
        return original(rows)

    trainer.accumulate = accumulate
    return steps


def test_pairs_per_step_gives_that_many_pairs_in_every_step(tmp_path):
    pairs = random_pairs(20, seed=3)
    config = DPOConfig(output_dir=str(tmp_path), max_steps=6, pairs_per_step=8, token_budget=40, learning_rate=1e-3,
                       progress=False, save_every=0, save_final_state=False)
    trainer = DPOTrainer(tiny_model("llama"), None, pairs, config)
    steps = _record_steps(trainer)
    history = trainer.train()
    assert [entry["pairs"] for entry in history] == [8] * 6
    assert [sum(len(row) for row in rows) for rows in steps] == [8] * 6
    assert all(len(rows) > 1 for rows in steps), "a 40-token budget needs several rows for 8 pairs"
    # Each epoch visits each of the 20 pairs once (48 pairs = epoch 0, epoch 1, 8 of epoch 2).
    visited = [index for rows in steps for row in rows for index in row]
    assert sorted(visited[:20]) == list(range(20)) and sorted(visited[20:40]) == list(range(20))


def test_examples_per_step_for_sft(tmp_path):
    rows = random_pairs(12, seed=5)
    data = datasets.Dataset.from_dict({"prompt_ids": rows["prompt_ids"], "completion_ids": rows["chosen_ids"]})
    config = SFTConfig(output_dir=str(tmp_path), max_steps=4, examples_per_step=5, token_budget=16, progress=False,
                       save_every=0)
    trainer = SFTTrainer(tiny_model("llama"), None, data, config)
    steps = _record_steps(trainer)
    trainer.train()
    assert [sum(len(row) for row in rows) for rows in steps] == [5] * 4
    assert max(len(rows) for rows in steps) > 1


def test_the_loss_does_not_depend_on_how_the_pairs_fall_into_rows(tmp_path):
    """Same 8 pairs, a budget that needs several rows vs one that holds them all: same step."""
    pairs = random_pairs(16, seed=7)
    results = {}
    for budget in (40, 400):
        config = DPOConfig(output_dir=str(tmp_path / str(budget)), max_steps=2, pairs_per_step=8, token_budget=budget,
                           learning_rate=1e-3, progress=False, save_every=0)
        trainer = DPOTrainer(tiny_model("llama"), None, pairs, config)
        steps = _record_steps(trainer)
        history = trainer.train()
        results[budget] = ([sorted(sum(rows, [])) for rows in steps], [len(rows) for rows in steps],
                           [entry["loss"] for entry in history], [entry["grad_norm"] for entry in history])
    (examples_small, rows_small, loss_small, norm_small), (examples_big, rows_big, loss_big, norm_big) = \
        results.values()
    assert examples_small == examples_big and rows_big == [1, 1] and min(rows_small) > 1
    torch.testing.assert_close(torch.tensor(loss_small), torch.tensor(loss_big), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(norm_small), torch.tensor(norm_big), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("values, message", [
    (dict(pairs_per_step=0), "pairs_per_step must be None or >= 1, got 0"),
    (dict(pairs_per_step=8, rows_per_step=2), "set either rows_per_step or pairs_per_step, not both"),
])
def test_bad_pair_counts_are_refused_naming_the_option(values, message):
    for config_class in (DPOConfig, RewardConfig):
        with pytest.raises(ValueError, match=message):
            config_class(**values).validate()
    with pytest.raises(ValueError, match="examples_per_step must be None or >= 1"):
        SFTConfig(examples_per_step=-1).validate()


def test_pairs_per_step_is_refused_under_torchrun():
    with pytest.raises(ValueError, match="pairs_per_step=8 runs in a single process"):
        DPOTrainer.check_step_examples(DPOConfig(pairs_per_step=8), world_size=2)
    DPOTrainer.check_step_examples(DPOConfig(rows_per_step=2), world_size=2)


@pytest.mark.parametrize("save_final_state", [True, False])
def test_the_end_of_run_checkpoint_is_optional(tmp_path, save_final_state):
    config = DPOConfig(output_dir=str(tmp_path), max_steps=2, token_budget=48, progress=False, save_every=0,
                       save_every_minutes=0, save_final_state=save_final_state)
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(8), config)
    trainer.train()
    trainer.save_model()
    assert [path.name for path in list_checkpoints(tmp_path)] == (["step-00000002"] if save_final_state else [])
    assert (tmp_path / "final" / "config.json").is_file()
