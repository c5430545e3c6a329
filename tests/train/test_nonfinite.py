"""The non-finite guard: every trainer (SFT, RM, DPO, PPO, GRPO) run with ``learning_rate=1e6``
stops with a non-zero exit and a message naming the step, and writes no non-finite tensor in any
checkpoint and no ``final/``; ``on_nonfinite=skip`` skips a bad step and stops after K in a row;
nothing with a non-finite parameter is ever saved."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file as load_safetensors

import fastalign.app.recipes as recipes
from fastalign.cli import main
from fastalign.models import PolicyModel
from fastalign.train import DPOTrainer
from fastalign.train.checkpoint import list_checkpoints
from fastalign.train.checkpoint_io import load_file
from fastalign.train.nonfinite import NonFiniteError
from tests.distributed.rl_run import checksum_reward
from tests.models.tiny_models import tiny_model
from tests.train.test_reference_and_resume import _config, random_pairs

RL_OPTIONS = ["max_new_tokens=4", "prompts_per_step=2", "generation_batch_size=8"]
EXTRA = {"ppo": RL_OPTIONS, "grpo": RL_OPTIONS + ["num_generations=2"]}


def tensors(value):
    """Every tensor nested in a loaded checkpoint."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)


def assert_all_written_tensors_finite(out) -> int:
    count = 0
    for path in out.rglob("*.pt"):
        for tensor in tensors(load_file(path)):
            assert not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()), path
            count += 1
    for path in out.rglob("*.safetensors"):
        assert all(bool(torch.isfinite(t).all()) for t in load_safetensors(path).values()), path
    return count


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo", "ppo", "grpo"])
def test_learning_rate_1e6_stops_with_the_step_named_and_writes_nothing_non_finite(kind, tmp_path, monkeypatch,
                                                                                    capsys):
    monkeypatch.setitem(recipes.SYNTHETIC_SIZES, "num_train", 32)
    monkeypatch.setitem(recipes.SYNTHETIC_SIZES, "num_test", 2)
    # The verifier gives a random model's answers 0 everywhere: no advantage, no gradient for
    # GRPO to blow up with. A reward that varies across completions gives it one.
    monkeypatch.setattr(recipes, "reward_function", lambda *args, **kwargs: checksum_reward)
    out = tmp_path / kind
    code = main(["train", kind, "--model", "tiny", "--data", "synthetic", "--output-dir", str(out), "--max-steps",
                 "12", "learning_rate=1e6", "save_every=1", "keep_last=20", "progress=false", "token_budget=128",
                 *EXTRA.get(kind, [])])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 1 and len(err) == 1, err
    match = re.search(r"training diverged at step (\d+): non-finite (.+?);", err[0])
    assert match, err[0]
    step = int(match.group(1))
    assert [path.name for path in list_checkpoints(out)] == [f"step-{s:08d}" for s in range(1, step)]
    assert not (out / "final").exists()
    assert assert_all_written_tensors_finite(out) > 0


def _nan_at(trainer: DPOTrainer, steps: set[int]) -> None:
    """Policy log-probs turn NaN during the given (1-based) steps."""
    forward = trainer.forward

    def poisoned(row, **kwargs):
        out = forward(row, **kwargs)
        if trainer.step + 1 in steps:
            return out._replace(logprobs=out.logprobs * float("nan"))
        return out

    trainer.forward = poisoned


def _weights(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.policy.parameters()]


def test_stop_names_the_step_and_the_quantity_and_leaves_the_weights_alone(tmp_path):
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path, max_steps=4))
    _nan_at(trainer, {2})
    with pytest.raises(NonFiniteError, match=r"at step 2: non-finite policy log-probs; the optimizer step was "
                                             r"skipped and training stopped \(on_nonfinite='stop'"):
        trainer.train()
    assert [entry.get("skipped") for entry in trainer.history] == [None, "policy log-probs"]
    after_step_1 = _weights(trainer)
    assert all(bool(torch.isfinite(p).all()) for p in after_step_1)


def test_skip_goes_on_after_a_bad_step_and_stops_after_k_in_a_row(tmp_path, capsys):
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(),
                         _config(tmp_path / "a", max_steps=5, on_nonfinite="skip", max_nonfinite_skips=2))
    _nan_at(trainer, {2})
    history = trainer.train()
    assert [entry.get("skipped") for entry in history] == [None, "policy log-probs", None, None, None]
    assert "step 2: non-finite policy log-probs; the optimizer step was skipped (1 in a row; stopping after 2)" in \
        capsys.readouterr().err

    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(),
                         _config(tmp_path / "b", max_steps=6, on_nonfinite="skip", max_nonfinite_skips=2))
    _nan_at(trainer, {2, 4, 5})
    with pytest.raises(NonFiniteError, match="step 5: .* 2 consecutive steps were non-finite"):
        trainer.train()


def test_a_skipped_step_leaves_the_weights_alone(tmp_path):
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(),
                         _config(tmp_path, max_steps=3, on_nonfinite="skip", lr_schedule="constant"))
    _nan_at(trainer, {2})
    entering = {}  # step -> the weights the step starts from
    accumulate = trainer.accumulate

    def recording(rows):
        entering[trainer.step + 1] = _weights(trainer)
        return accumulate(rows)

    trainer.accumulate = recording
    trainer.train()
    assert not all(torch.equal(a, b) for a, b in zip(entering[1], entering[2])), "a finite step moves them"
    assert all(torch.equal(a, b) for a, b in zip(entering[2], entering[3])), "the skipped step 2 does not"


def test_nothing_with_a_non_finite_parameter_is_saved(tmp_path):
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path, max_steps=1))
    trainer.train()
    with torch.no_grad():
        next(trainer.policy.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="is non-finite at step 1: the checkpoint was not written"):
        trainer.save_checkpoint()
    with pytest.raises(NonFiniteError, match="the final model was not written"):
        trainer.save_model()
    assert not (tmp_path / "final").exists()
    assert isinstance(trainer.policy, PolicyModel)
