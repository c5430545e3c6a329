"""Reference strategies stay the initial model; checkpoints resume exactly and survive crashes."""

from __future__ import annotations

import copy
import random

import datasets
import pytest
import torch

import fastalign.train.checkpoint_io as checkpoint_io
from fastalign.models import PolicyModel, packed_logprobs
from fastalign.train import DPOConfig, DPOTrainer
from fastalign.train.checkpoint import list_checkpoints, load_latest_checkpoint
from tests.models.tiny_models import tiny_model


def random_pairs(count: int = 24, seed: int = 0) -> datasets.Dataset:
    rng = random.Random(seed)

    def tokens(low, high):
        return [rng.randrange(0, 61) for _ in range(rng.randint(low, high))]

    return datasets.Dataset.from_list(
        [dict(prompt_ids=tokens(2, 8), chosen_ids=tokens(1, 5), rejected_ids=tokens(1, 5)) for _ in range(count)]
    )


def _config(tmp_path, **overrides) -> DPOConfig:
    values = dict(output_dir=str(tmp_path), max_steps=4, learning_rate=5e-3, token_budget=48, rows_per_step=2,
                  progress=False, warmup_steps=1)
    values.update(overrides)
    return DPOConfig(**values)


class Recorder:
    """Wraps a reference and records what it returned for each (step, example)."""

    def __init__(self, inner, trainer):
        self.inner, self.trainer, self.seen = inner, trainer, []

    def __call__(self, batch):
        chosen, rejected = self.inner(batch)
        self.seen.append((self.trainer.step, batch, chosen.clone(), rejected.clone()))
        return chosen, rejected


class FollowsPolicy:
    """A broken reference that silently tracks the policy (what the test must catch)."""

    def __init__(self, trainer):
        self.trainer = trainer

    @torch.no_grad()
    def __call__(self, batch):
        out = packed_logprobs(self.trainer.policy, batch)
        return out.chosen, out.rejected


def _check_reference_is_initial_model(trainer, initial: torch.nn.Module) -> None:
    recorder = Recorder(trainer.references["train"], trainer)
    trainer.references["train"] = recorder
    trainer.train()
    frozen = PolicyModel(initial)
    steps = {step for step, *_ in recorder.seen}
    assert len(steps) == trainer.config.max_steps and max(steps) > 0
    for _, batch, chosen, rejected in recorder.seen:
        with torch.no_grad():
            expected = packed_logprobs(frozen, batch)
        torch.testing.assert_close(chosen, expected.chosen, atol=1e-5, rtol=0)
        torch.testing.assert_close(rejected, expected.rejected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reference", ["separate", "precomputed", "adapter"])
def test_reference_logprobs_are_the_initial_model_at_every_step(tmp_path, reference):
    if reference == "adapter":
        pytest.importorskip("peft")
    model = tiny_model("llama")
    initial = copy.deepcopy(model)  # LoRA starts with B = 0: the adapted model equals its base
    lora = 4 if reference == "adapter" else 0
    trainer = DPOTrainer(model, None, random_pairs(), _config(tmp_path, reference=reference, lora_r=lora))
    before = [p.detach().clone() for p in trainer.policy.parameters() if p.requires_grad]
    _check_reference_is_initial_model(trainer, initial)
    after = [p.detach() for p in trainer.policy.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the policy must have moved"


def test_mutation_twin_a_reference_following_the_policy_fails(tmp_path):
    model = tiny_model("llama")
    initial = copy.deepcopy(model)
    trainer = DPOTrainer(model, None, random_pairs(), _config(tmp_path, reference="separate"))
    trainer.references["train"] = FollowsPolicy(trainer)
    with pytest.raises(AssertionError):
        _check_reference_is_initial_model(trainer, initial)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path / "full", max_steps=6, save_every=3))
    expected = [entry["loss"] for entry in full.train()]

    first = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path / "cut", max_steps=6, save_every=3))
    original = first.accumulate

    def crash_after_three(rows):
        if first.step == 4:
            raise KeyboardInterrupt("simulated crash")
        return original(rows)

    first.accumulate = crash_after_three
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert [path.name for path in list_checkpoints(tmp_path / "cut")] == ["step-00000003"]

    # Resuming starts from the same initial model (it is the reference); the policy weights,
    # optimizer, schedule, RNG and data position come from the checkpoint.
    resumed = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path / "cut", max_steps=6, save_every=3))
    got = [entry["loss"] for entry in resumed.train(resume=True)]
    assert len(got) == 6
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-6, rtol=0)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6, "metrics of the interrupted run after the checkpoint are dropped"


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path, max_steps=4, save_every=2))
    real_save = torch.save
    calls = {"count": 0}

    def dying_save(obj, path, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:  # the step-4 checkpoint: write half a file, then die
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000002"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")], "no partial left"
    path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "step-00000002" and state["step"] == 2
    fresh = DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path, max_steps=4, save_every=2))
    assert fresh.resume() and fresh.step == 2


def test_bad_configuration_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="reference='adapter' needs LoRA adapters"):
        _config(tmp_path, reference="adapter").validate()
    with pytest.raises(ValueError, match="loss_type 'simpo' is reference-free"):
        _config(tmp_path, loss_type="simpo").validate()
    with pytest.raises(ValueError, match="token_budget must be > 0"):
        DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(tmp_path, token_budget=0))
    with pytest.raises(ValueError, match="train_data holds text but no tokenizer"):
        DPOTrainer(tiny_model("llama"), None, datasets.Dataset.from_list([dict(prompt="a", chosen="b", rejected="c")]),
                   _config(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_config_from_yaml_values_checks_types(tmp_path):
    import yaml

    values = yaml.safe_load("learning_rate: 1e-4\nloss_type: [sigmoid, sft]\nadam_betas: [0.9, 0.95]\nmax_steps: 3\n")
    assert values["learning_rate"] == "1e-4", "YAML reads 1e-4 as a string"
    config = DPOConfig.from_dict({**values, "output_dir": str(tmp_path)})
    assert config.learning_rate == 1e-4 and config.loss_type == ["sigmoid", "sft"] and config.adam_betas == (0.9, 0.95)
    for bad, message in [({"max_steps": "3"}, "option max_steps must be an int"),
                         ({"progress": "yes"}, "option progress must be true or false"),
                         ({"learning_rate": "fast"}, "option learning_rate must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            DPOConfig.from_dict(bad)
