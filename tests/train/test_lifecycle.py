"""A run's life cycle through the CLI (in-process, tiny preset, small synthetic task): a second
run into a used output directory exits 2 with one line and changes nothing; ``--overwrite``
deletes the old run first; ``--resume`` says where it starts, or that there is nothing to resume;
SIGINT / SIGTERM mid-run write a checkpoint and exit 130 / 143 with one line, and ``--resume``
continues exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import fastalign.app.recipes as recipes
from fastalign.cli import main
from fastalign.train.checkpoint import list_checkpoints
from fastalign.train.sft import SFTTrainer


@pytest.fixture(autouse=True)
def small_synthetic(monkeypatch):
    monkeypatch.setitem(recipes.SYNTHETIC_SIZES, "num_train", 64)
    monkeypatch.setitem(recipes.SYNTHETIC_SIZES, "num_test", 4)


def train(out, *extra: str, steps: int = 4) -> int:
    return main(["train", "sft", "--model", "tiny", "--data", "synthetic", "--output-dir", str(out), "--max-steps",
                 str(steps), "progress=false", "token_budget=128", "lr_schedule=constant", *extra])


def snapshot(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def losses(out) -> list[float]:
    import json

    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def stderr_lines(capsys) -> list[str]:
    """stderr without the tokenizer's progress bars."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and "tokenize" not in line]


def test_a_second_run_into_a_used_directory_exits_2_and_changes_nothing(tmp_path, capsys):
    assert train(tmp_path, "save_every=2") == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tmp_path, steps=2) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "holds another run (metrics.jsonl, checkpoints, final)" in err[0]
    assert "--resume" in err[0] and "--overwrite" in err[0]
    assert snapshot(tmp_path) == before


def test_overwrite_deletes_the_old_run_first(tmp_path, capsys):
    assert train(tmp_path, "save_every=1", "keep_last=10") == 0
    assert train(tmp_path, "--overwrite", "save_every=1", "keep_last=10", steps=2) == 0
    assert "--overwrite: deleted metrics.jsonl, checkpoints, final" in capsys.readouterr().err
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]
    assert len(losses(tmp_path)) == 2


def test_resume_says_where_it_starts_or_that_there_is_nothing(tmp_path, capsys):
    assert train(tmp_path / "new", "--resume", steps=1) == 0
    assert "nothing to resume in" in capsys.readouterr().err
    assert train(tmp_path / "new", "--resume", steps=3) == 0
    assert "resuming from step 1 of 3" in capsys.readouterr().err
    assert len(losses(tmp_path / "new")) == 3

    metrics_only = tmp_path / "metrics-only"  # e.g. killed before its first checkpoint
    metrics_only.mkdir()
    (metrics_only / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    capsys.readouterr()
    assert train(metrics_only, "--resume") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0] and "--overwrite" in err[0]
    assert (metrics_only / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n', "not overwritten"

    assert train(tmp_path / "both", "--resume", "--overwrite") == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _signal_during_step(monkeypatch, signum: int, step: int) -> None:
    """Deliver ``signum`` to this process while step ``step`` is being computed."""
    original = SFTTrainer.accumulate

    def accumulate(self, rows):
        if self.step == step - 1:
            os.kill(os.getpid(), signum)
        return original(self, rows)

    monkeypatch.setattr(SFTTrainer, "accumulate", accumulate)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_checkpoints_and_exits_with_one_line(tmp_path, monkeypatch, capsys, signum, code):
    _signal_during_step(monkeypatch, signum, 3)
    assert train(tmp_path, steps=6) == code
    err = stderr_lines(capsys)
    checkpoint = tmp_path / "checkpoints" / "step-00000003"
    assert err == [f"interrupted by {signal.Signals(signum).name} after step 3: checkpoint {checkpoint} written; "
                   "continue with --resume"]
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000003"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers are restored"


def test_resume_after_sigint_continues_exactly(tmp_path, monkeypatch, capsys):
    assert train(tmp_path / "whole", steps=6) == 0
    with monkeypatch.context() as patch:
        _signal_during_step(patch, signal.SIGINT, 3)
        assert train(tmp_path / "cut", steps=6) == 130
    capsys.readouterr()
    assert train(tmp_path / "cut", "--resume", steps=6) == 0
    assert "resuming from step 3 of 6" in capsys.readouterr().err
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    from safetensors.torch import load_file

    whole, cut = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[key], cut[key]) for key in whole)


def test_checkpoints_are_written_by_default_by_steps_and_by_time(tmp_path):
    from fastalign.train import DPOConfig, DPOTrainer
    from tests.models.tiny_models import tiny_model
    from tests.train.test_reference_and_resume import random_pairs

    defaults = DPOConfig()
    assert (defaults.save_every, defaults.save_every_minutes, defaults.keep_last) == (500, 30.0, 2)
    config = DPOConfig(output_dir=str(tmp_path), max_steps=3, save_every=0, save_every_minutes=1e-9, keep_last=10,
                       token_budget=48, progress=False)
    DPOTrainer(tiny_model("llama"), None, random_pairs(8), config).train()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002", "step-00000003"]


def test_a_full_disk_through_the_cli_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import fastalign.train.checkpoint_io as checkpoint_io

    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if ".step-00000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    assert train(tmp_path, "save_every=1", steps=3) == 1
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: no space left on device while writing")
    assert f"{tmp_path / 'checkpoints' / 'step-00000001'}, is intact" in err[0]


def test_a_signal_after_the_last_step_still_names_the_final_checkpoint(tmp_path, monkeypatch):
    from fastalign.train import DPOConfig, DPOTrainer, TrainingInterrupted
    from tests.models.tiny_models import tiny_model
    from tests.train.test_reference_and_resume import random_pairs

    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(8),
                         DPOConfig(output_dir=str(tmp_path), max_steps=2, token_budget=48, progress=False))
    log = trainer._log

    def log_then_signal(entry):  # after the step's all-reduce: only the end of the loop can see it
        log(entry)
        if entry["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(trainer, "_log", log_then_signal)
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.train()
    assert caught.value.exit_code == 130 and caught.value.checkpoint == tmp_path / "checkpoints" / "step-00000002"
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000002"]
