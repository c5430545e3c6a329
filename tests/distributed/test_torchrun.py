"""DDP and FSDP2 DPO runs on CPU (gloo, 2 processes under torchrun) give the losses of a
single-process run with the same global batch; sharded checkpoints resume exactly; the
consolidated export loads in transformers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fastalign.train.distributed import assign_rows
from tests.distributed.dpo_run import make_trainer

SCRIPT = Path(__file__).with_name("dpo_run.py")
RL_SCRIPT = Path(__file__).with_name("rl_run.py")
STEPS = 4
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _launch(out: Path, strategy: str, steps: int, *flags: str, script: Path = SCRIPT,
            kind: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), *([kind] if kind else []), str(out), strategy, str(steps), *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def torchrun(out: Path, strategy: str, steps: int, *flags: str, script: Path = SCRIPT, kind: str | None = None) -> list[dict]:
    result = _launch(out, strategy, steps, *flags, script=script, kind=kind)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    history = out / "history.json"
    return json.loads(history.read_text()) if history.exists() else []


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The reference: one process, the same global batch (4 rows per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = make_trainer(str(tmp_path_factory.mktemp("single")), "none", STEPS)
        history = trainer.train()
        step_rows = []  # the rows of each step, to show how the ranks split them
        for step in range(STEPS):
            trainer.epoch, trainer.position = 0, step * 4
            step_rows.append(trainer.next_rows())
        final = {name: tensor.detach().clone() for name, tensor in trainer.policy.model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
    return history, step_rows, final


def _assert_same_losses(history: list[dict], reference: list[dict], steps=range(STEPS)) -> None:
    assert [entry["step"] for entry in history] == [step + 1 for step in steps]
    for entry in history:
        expected = reference[entry["step"] - 1]
        assert entry["pairs"] == expected["pairs"]
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
            assert entry[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), (entry["step"], key)


def test_ranks_hold_different_numbers_of_pairs(single_process):
    _, step_rows, _ = single_process
    uneven = 0
    for rows in step_rows:
        split = assign_rows([row.num_tokens for row in rows], 2)
        pairs = [sum(rows[i].num_examples for i in part) for part in split]
        uneven += pairs[0] != pairs[1]
    assert uneven >= 1  # so the global normalization is actually exercised


def test_ddp_matches_single_process_and_resumes(tmp_path, single_process):
    reference, _, _ = single_process
    # Ranks hold different numbers of pairs (test above): had each rank normalized by its own
    # count, grad_norm would differ from the single-process one. Steps 1-2 come from the run
    # interrupted after its step-2 checkpoint, steps 3-4 from the resumed one.
    assert torchrun(tmp_path, "ddp", STEPS, "--stop-after", "2") == []
    _assert_same_losses(torchrun(tmp_path, "ddp", STEPS, "--resume"), reference)


def test_fsdp2_resume_and_export(tmp_path, single_process):
    reference, _, final = single_process
    # Interrupted after the sharded checkpoint of step 2, then resumed to the end.
    assert torchrun(tmp_path, "fsdp2", STEPS, "--stop-after", "2") == []
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    assert (checkpoint / "trainer.pt").is_file() and (checkpoint / "dcp").is_dir()
    assert sorted(p.name for p in checkpoint.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    history = torchrun(tmp_path, "fsdp2", STEPS, "--resume", "--export")
    _assert_same_losses(history, reference)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    state = exported.state_dict()
    assert state.keys() == final.keys()
    for name, tensor in final.items():
        torch.testing.assert_close(state[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_rl_trainers_under_ddp_match_single_process(tmp_path, kind):
    """Rollouts keep only the most likely token, so both runs sample the same completions."""
    from tests.distributed.rl_run import make_trainer as make_rl_trainer

    steps = 4 if kind == "ppo" else 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = make_rl_trainer(kind, str(tmp_path / "single"), "none", steps).train()
    finally:
        torch.set_num_threads(threads)
    history = torchrun(tmp_path / "ddp", "ddp", steps, script=RL_SCRIPT, kind=kind)
    keys = ("loss", "reward", "grad_norm") + (("value_loss", "kl_to_reference") if kind == "ppo" else ("kl",))
    assert len(history) == steps
    for entry, expected in zip(history, reference):
        for key in keys:
            assert entry[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), (entry["step"], key)
    if kind == "ppo":  # a run that learns something, not a constant
        assert len({round(entry["loss"], 6) for entry in history}) == steps


def test_a_nan_on_one_rank_stops_every_rank_before_the_optimizer(tmp_path):
    """Rank 1's loss turns NaN in step 2, rank 0's does not: both ranks stop at step 2 (one
    all-reduce decides), naming it; the only checkpoint is step 1's, every tensor in it finite."""
    from fastalign.train.checkpoint import list_checkpoints
    from tests.train.test_nonfinite import assert_all_written_tensors_finite

    result = _launch(tmp_path, "ddp", 3, "--nan-at", "2", "--on-nonfinite", "stop")
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "at step 2: non-finite policy log-probs" in log, log[-4000:]  # rank 1
    assert "at step 2: non-finite gradient norm" in log or "at step 2: non-finite values (on another rank)" in log
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert assert_all_written_tensors_finite(tmp_path) > 0


def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    """``on_nonfinite=skip``: every rank skips step 2 and goes on; the ranks' weights stay equal."""
    history = torchrun(tmp_path, "ddp", 3, "--nan-at", "2", "--on-nonfinite", "skip")
    assert [entry["step"] for entry in history] == [1, 2, 3]
    assert [entry.get("skipped") is not None for entry in history] == [False, True, False]
    rank0, rank1 = (json.loads((tmp_path / f"weights-rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0 == rank1 and all(map(math.isfinite, rank0))
