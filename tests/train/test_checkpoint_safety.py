"""Loading a checkpoint never runs code: every file type (single-process ``state.pt`` and the
``trainer.pt`` marker; sharded ``trainer.pt`` and ``rank-*.pt``) holding a pickle payload that
would create a file is refused with an error naming it, and the file is not created. Keep-last-k
rotation never deletes through a symbolic link."""

from __future__ import annotations

import builtins
import datetime
import os

import pytest
import torch
import torch.distributed as dist

from fastalign.cli import main
from fastalign.train import DPOTrainer
from fastalign.train.checkpoint import CheckpointError, list_checkpoints, load_latest_checkpoint, save_checkpoint
from fastalign.train.checkpoint_io import UnsafeCheckpointError, load_file
from fastalign.train.distributed import DistributedEnv
from tests.models.tiny_models import tiny_model
from tests.train.test_reference_and_resume import _config, random_pairs


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appears if the payload ever runs."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def _plant(path, marker) -> None:
    torch.save({"step": 2, "history": [], "payload": CreatesAFile(marker)}, path)


def test_the_payload_runs_under_a_plain_unpickler(tmp_path):
    """The twin of the tests below: the planted files really are live payloads."""
    marker = tmp_path / "pwned"
    _plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.fixture
def finished_run(tmp_path):
    """A single-process run with checkpoints at steps 1 and 2."""
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(8), _config(tmp_path, max_steps=2, save_every=1))
    trainer.train()
    return tmp_path


def test_state_pt_payload_is_refused_by_resume(finished_run, capsys):
    marker = finished_run / "pwned"
    state = finished_run / "checkpoints" / "step-00000002" / "state.pt"
    _plant(state, marker)
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(8), _config(finished_run, max_steps=2))
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {state}"):
        trainer.train(resume=True)
    assert not marker.exists()
    assert state.is_file(), "the file is left for the user to inspect, not silently skipped"


def test_state_pt_payload_through_the_cli_exits_2_with_one_line(finished_run, capsys):
    marker = finished_run / "pwned"
    state = finished_run / "checkpoints" / "step-00000002" / "state.pt"
    _plant(state, marker)
    code = main(["train", "dpo", "--model", "tiny", "--data", str(_pairs_file(finished_run)), "--output-dir",
                 str(finished_run), "--resume", "progress=false", "max_steps=2", "token_budget=128"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not marker.exists()
    assert err[-1].startswith(f"error: refusing to load {state}") and "Traceback" not in "".join(err)


def _pairs_file(directory):
    path = directory / "pairs.jsonl"
    path.write_text("".join('{"prompt": "p%d", "chosen": "c", "rejected": "r"}\n' % i for i in range(4)))
    return path


def test_a_lone_trainer_pt_payload_is_refused_before_the_distributed_error(finished_run):
    marker = finished_run / "pwned"
    step = finished_run / "checkpoints" / "step-00000003"
    step.mkdir()
    _plant(step / "trainer.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=str(step / "trainer.pt")):
        load_latest_checkpoint(finished_run)
    assert not marker.exists()


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, so that sharded checkpoints can be written and read here."""
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("needs gloo and no running process group")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield DistributedEnv("ddp", 0, 1, 0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["trainer.pt", "rank-00000.pt"])
def test_sharded_checkpoint_payloads_are_refused(tmp_path, process_group, name):
    from fastalign.train.checkpoint_sharded import (
        latest_sharded_checkpoint,
        load_sharded_checkpoint,
        save_sharded_checkpoint,
    )

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_sharded_checkpoint(tmp_path / "run", 1, model, optimizer, {"step": 1, "history": []}, process_group,
                                   keep_last=2, rank_state={"kl_coef": 0.1})
    assert latest_sharded_checkpoint(tmp_path / "run", process_group) == path, "the genuine checkpoint is readable"
    marker = tmp_path / "pwned"
    _plant(path / name, marker)
    with pytest.raises(UnsafeCheckpointError, match=str(path / name)):
        latest_sharded_checkpoint(tmp_path / "run", process_group)
    with pytest.raises(UnsafeCheckpointError, match=str(path / name)):
        load_sharded_checkpoint(path, model, optimizer, process_group)
    assert not marker.exists()


def test_every_file_a_run_writes_loads_with_weights_only(finished_run):
    for path in finished_run.rglob("*.pt"):
        assert isinstance(load_file(path), dict), path


def test_rotation_does_not_follow_a_symlinked_checkpoints_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    for step in (1, 2, 3):
        (elsewhere / f"step-{step:08d}").mkdir(parents=True)
        (elsewhere / f"step-{step:08d}" / "state.pt").write_bytes(b"someone else's")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "checkpoints")
    with pytest.raises(CheckpointError, match="is a symbolic link"):
        save_checkpoint(out, 4, {"step": 4}, keep_last=1)
    trainer = DPOTrainer(tiny_model("llama"), None, random_pairs(8), _config(out, max_steps=1, save_every=1,
                                                                              keep_last=1))
    with pytest.raises(CheckpointError, match="is a symbolic link"):
        trainer.train(overwrite=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["step-00000001", "step-00000002", "step-00000003"]


def test_rotation_never_deletes_a_symlinked_step(tmp_path):
    outside = tmp_path / "outside" / "step-00000001"
    outside.mkdir(parents=True)
    (outside / "state.pt").write_bytes(b"keep me")
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    os.symlink(outside, out / "checkpoints" / "step-00000001")
    save_checkpoint(out, 2, {"step": 2}, keep_last=1)
    save_checkpoint(out, 3, {"step": 3}, keep_last=1)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000003"]
    assert (outside / "state.pt").read_bytes() == b"keep me"
