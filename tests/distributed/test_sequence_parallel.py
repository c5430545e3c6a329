"""Ulysses sequence parallelism: 2 gloo processes splitting one packed row give the
single-process DPO loss and every gradient (fp32, rel. 1e-5) for Llama, Gemma2 (softcaps,
alternating sliding windows) and Mistral (sliding window), on a row that needs padding; an
all-to-all joining chunks in the wrong order (the mutation twin) is caught. 4 processes as
2 sequence-parallel ranks x 2 DDP replicas train like one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fastalign.testing import relative_error
from tests.distributed.dpo_run import make_trainer
from tests.distributed.sp_run import FAMILIES, dpo_on_row

SCRIPT = Path(__file__).with_name("sp_run.py")
RTOL = 1e-5
STEPS = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> Path:
    """One torchrun launch of 4 processes: the row results and the 2 x 2 training history."""
    out = tmp_path_factory.mktemp("sp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
               str(SCRIPT), str(out), str(STEPS)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


def _single_process(family: str) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dpo_on_row(family, None)
    finally:
        torch.set_num_threads(threads)


def _errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, float]:
    assert got.keys() == expected.keys()
    return {name: relative_error(got[name], expected[name]) for name in expected}


@pytest.mark.parametrize("family", FAMILIES)
def test_two_rank_groups_match_one_process(four_ranks, family):
    errors = _errors(torch.load(four_ranks / f"{family}.pt"), _single_process(family))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{family}: {worst} off by {errors[worst]:.2e}"


def test_wrong_all_to_all_order_is_caught(four_ranks):
    errors = _errors(torch.load(four_ranks / "llama-mutated.pt"), _single_process("llama"))
    assert errors["loss"] > 100 * RTOL
    assert max(errors.values()) > 1e-2


def test_two_by_two_sequence_parallel_and_ddp_trains_like_one_process(four_ranks, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = make_trainer(str(tmp_path), "none", STEPS).train()
    finally:
        torch.set_num_threads(threads)
    history = json.loads((four_ranks / "history.json").read_text())
    assert [entry["step"] for entry in history] == list(range(1, STEPS + 1))
    for entry, expected in zip(history, reference):
        assert entry["pairs"] == expected["pairs"]  # each pair counted once, not once per rank
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "grad_norm"):
            assert entry[key] == pytest.approx(expected[key], rel=RTOL, abs=1e-6), (entry["step"], key)
