"""The long-row options of the trainers: validation, the same training with the MLP tiled,
``max_length`` giving a long pair a row of its own, and the reference forward run first keeping
only its per-example sums — with the step's peak of live tensors measured lower for it."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from fastalign.app.recipes import load_model
from fastalign.data import make_preference_task
from fastalign.models import packed_logprobs
from fastalign.testing import AllocationRecorder
from fastalign.train import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: a second thread only adds OpenMP overhead
    yield
    torch.set_num_threads(threads)


def _trainer(tmp_path, data=None, **options) -> DPOTrainer:
    model, tokenizer = load_model("tiny", seed=0)
    data = data if data is not None else make_preference_task(num_train=16, num_test=4, seed=0)["train"]
    config = DPOConfig(**(dict(output_dir=str(tmp_path), max_steps=2, rows_per_step=2, token_budget=160,
                               learning_rate=5e-4, device="cpu", progress=False, save_every=0) | options))
    return DPOTrainer(model, tokenizer, data, config)


@pytest.mark.parametrize("options, match", [
    (dict(mlp_tile_tokens=-1), "mlp_tile_tokens must be >= 0"),
    (dict(sequence_parallel=0), "sequence_parallel must be >= 1"),
    (dict(max_length=100), "max_length must be None or >= token_budget"),
    (dict(offload_checkpoints=True), "needs gradient_checkpointing=True"),
    (dict(offload_checkpoints=True, gradient_checkpointing=True), "needs a CUDA device"),
    (dict(sequence_parallel=2), "needs a multiple of 2 processes"),
])
def test_bad_long_row_options_are_refused(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, **options)


def test_sequence_parallel_is_refused_by_trainers_without_it(tmp_path):
    model, tokenizer = load_model("tiny", seed=0)
    data = Dataset.from_dict({"prompt_ids": [[1, 2]], "completion_ids": [[3, 4]]})
    config = SFTConfig(output_dir=str(tmp_path), device="cpu", progress=False, sequence_parallel=2)
    with pytest.raises(ValueError, match="sequence_parallel > 1 is supported by the DPO trainer, not SFTTrainer"):
        SFTTrainer(model, tokenizer, data, config)


def test_tiled_mlp_trains_like_the_plain_model(tmp_path):
    keys = ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins")
    plain = _trainer(tmp_path / "plain", gradient_checkpointing=True).train()
    tiled = _trainer(tmp_path / "tiled", gradient_checkpointing=True, mlp_tile_tokens=24).train()
    for got, expected in zip(tiled, plain):
        for key in keys:
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_a_pair_longer_than_the_budget_gets_its_own_row(tmp_path):
    rows = {"prompt_ids": [[5] * 200, [6] * 10, [7] * 12], "chosen_ids": [[8] * 30, [9] * 3, [9] * 4],
            "rejected_ids": [[10] * 20, [11] * 2, [11] * 5]}
    trainer = _trainer(tmp_path, data=Dataset.from_dict(rows), max_length=400, rows_per_step=1)
    sizes = sorted(row.num_tokens for row in trainer.rows_for_epoch(0))
    assert sizes == [36, 250]  # the two short pairs share a row; the 250-token pair has its own
    assert trainer.train()[-1]["pairs"] >= 1


def test_the_reference_runs_first_and_keeps_only_its_sums(tmp_path):
    trainer = _trainer(tmp_path)
    reference = trainer.references["train"]
    row = trainer.next_rows()[0]
    with torch.no_grad(), AllocationRecorder() as kept:
        chosen, rejected = reference(row)
    assert kept.live_bytes == 2 * row.num_examples * 4  # one [E, 2] fp32 storage of sums
    with torch.no_grad(), AllocationRecorder() as full:  # twin: the policy's result keeps token log-probs
        out = packed_logprobs(trainer.policy, row)
    assert full.live_bytes > kept.live_bytes + row.targets.numel() * 4 - 1
    del out, chosen, rejected

    def step(first: bool) -> tuple[dict, int]:
        trainer.config.reference_first = first
        trainer.optimizer.zero_grad(set_to_none=True)
        with AllocationRecorder() as recorder:
            metrics = trainer.accumulate([row])
        return metrics, recorder.peak_bytes

    after, peak_after = step(False)
    first, peak_first = step(True)
    assert first == pytest.approx(after, rel=1e-6)  # the same numbers
    assert peak_first < peak_after  # the reference's activations no longer sit on the policy's


def test_cli_sequence_parallel_flag_reaches_the_config(tmp_path, capsys):
    from fastalign.cli import main

    code = main(["train", "dpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "run"),
                 "--sequence-parallel", "2", "--max-steps", "1"])
    assert code == 2  # one process cannot split a row over two
    assert "sequence_parallel=2 needs a multiple of 2 processes" in capsys.readouterr().err
