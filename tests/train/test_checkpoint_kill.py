"""Checkpoints survive SIGKILL at every point of a write (fresh and re-saved steps), a damaged
newest checkpoint, and a full disk.

Each kill runs in a forked child (the parent has already imported everything, so a child costs
a fraction of a second) that installs ``checkpoint_io.fault_hook`` to SIGKILL itself at one
named point of the write. The parent then resumes in-process: the run must continue to the
same losses as an uninterrupted one, and the next start must leave no temporary folder.
"""

from __future__ import annotations

import errno
import os
import signal
from types import SimpleNamespace

import pytest
import torch

import fastalign.train.checkpoint_io as checkpoint_io
from fastalign.train import DPOTrainer
from fastalign.train.checkpoint import list_checkpoints
from fastalign.train.checkpoint_io import CheckpointWriteError
from tests.models.tiny_models import tiny_model
from tests.train.test_reference_and_resume import _config, random_pairs

STEPS = 4


def _trainer(out, **overrides) -> DPOTrainer:
    options = dict(max_steps=STEPS, save_every=2, keep_last=1, lr_schedule="constant")
    options.update(overrides)
    return DPOTrainer(tiny_model("llama"), None, random_pairs(), _config(out, **options))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[float]:
    return [entry["loss"] for entry in _trainer(tmp_path_factory.mktemp("whole")).train()]


def _killed_child(work) -> None:
    """Run ``work()`` in a forked child that must die of SIGKILL (raised by the fault hook)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            torch.set_num_threads(1)
            work()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child exit status {status}"


def _kill_at(point: str, when=lambda: True):
    def hook(name: str) -> None:
        if name == point and when():
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def _leftovers(out) -> list[str]:
    root = out / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def _resume_and_check(out, uninterrupted: list[float], expected_start: int, capsys) -> None:
    capsys.readouterr()
    resumed = _trainer(out)
    history = resumed.train(resume=True)
    assert f"resuming from step {expected_start} of {STEPS}" in capsys.readouterr().err
    assert _leftovers(out) == [], "the next start removes every temporary folder"
    assert list_checkpoints(out)[-1].name == f"step-{STEPS:08d}"
    torch.testing.assert_close(torch.tensor([entry["loss"] for entry in history]), torch.tensor(uninterrupted),
                               atol=1e-6, rtol=0)


# point of the step-4 write -> the step the next run resumes from
FRESH_SAVE = {"temp-created": 2, "state-written": 2, "new-renamed-in": 4, "renamed-for-deletion": 4, "rotated": 4}


@pytest.mark.parametrize("point", sorted(FRESH_SAVE))
def test_kill_during_a_fresh_checkpoint_write_resumes(tmp_path, uninterrupted, point, capsys):
    def work():
        trainer = _trainer(tmp_path)
        checkpoint_io.fault_hook = _kill_at(point, when=lambda: trainer.step == STEPS)
        trainer.train()

    _killed_child(work)
    if point in ("temp-created", "state-written", "renamed-for-deletion"):
        assert _leftovers(tmp_path), "the kill left a temporary folder (what the next start must remove)"
    _resume_and_check(tmp_path, uninterrupted, FRESH_SAVE[point], capsys)


@pytest.mark.parametrize("point", ["old-moved-away", "new-renamed-in", "renamed-for-deletion"])
def test_kill_while_re_saving_an_existing_step_resumes(tmp_path, uninterrupted, point, capsys):
    _trainer(tmp_path).train()

    def work():
        trainer = _trainer(tmp_path)
        assert trainer.resume() and trainer.step == STEPS
        checkpoint_io.fault_hook = _kill_at(point)
        trainer.save_checkpoint()  # the same step again: the old copy is replaced

    _killed_child(work)
    if point == "old-moved-away":  # the only copy of step 4 is the renamed old one
        assert list_checkpoints(tmp_path) == [] and any(name.startswith(".old-step-") for name in _leftovers(tmp_path))
    _resume_and_check(tmp_path, uninterrupted, STEPS, capsys)


def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, uninterrupted, capsys):
    _trainer(tmp_path, keep_last=2).train()
    state = tmp_path / "checkpoints" / "step-00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a torn copy
    capsys.readouterr()
    history = _trainer(tmp_path, keep_last=2).train(resume=True)
    err = capsys.readouterr().err
    assert "checkpoint step-00000004 is unreadable" in err and str(state) in err
    assert "moved it to corrupt-step-00000004" in err and "resuming from step 2 of 4" in err
    assert (tmp_path / "checkpoints" / "corrupt-step-00000004" / "state.pt").is_file()
    torch.testing.assert_close(torch.tensor([entry["loss"] for entry in history]), torch.tensor(uninterrupted),
                               atol=1e-6, rtol=0)


TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")


@pytest.mark.parametrize("failure", ["enospc", "torch-inline-container"])
def test_disk_full_says_so_and_names_the_checkpoint_that_stays_valid(tmp_path, monkeypatch, failure):
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if ".step-00000002" in str(path):
            if failure == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise TORCH_FULL_DISK
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", lambda path: SimpleNamespace(free=4096))
    trainer = _trainer(tmp_path, save_every=1, keep_last=3)
    with pytest.raises(CheckpointWriteError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "no space left on device" in message and "state.pt" in message
    assert f"the newest complete checkpoint, {tmp_path / 'checkpoints' / 'step-00000001'}, is intact" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"] and _leftovers(tmp_path) == []


def test_a_failed_write_with_free_space_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_io.torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(TORCH_FULL_DISK))
    monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**40))
    with pytest.raises(CheckpointWriteError, match="writing .*state.pt failed") as caught:
        _trainer(tmp_path, save_every=1).train()
    assert "no space" not in str(caught.value) and "no earlier checkpoint exists" in str(caught.value)
