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

import fastalign.train.recipes as recipes
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
