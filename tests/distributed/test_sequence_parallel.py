"""Ulysses sequence parallelism: 2 gloo processes splitting one packed row give the
single-process DPO loss and every gradient (fp32, rel. 1e-5) for Llama, Gemma2 (softcaps,
alternating sliding windows) and Mistral (sliding window), on a row that needs padding; an
all-to-all joining chunks in the wrong order (the mutation twin) is caught."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fastalign.testing import relative_error
from tests.distributed.sp_run import FAMILIES, dpo_on_row

SCRIPT = Path(__file__).with_name("sp_run.py")
RTOL = 1e-5
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(SCRIPT), str(out)]
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
def test_two_ranks_match_one_process(two_ranks, family):
    errors = _errors(torch.load(two_ranks / f"{family}.pt"), _single_process(family))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{family}: {worst} off by {errors[worst]:.2e}"


def test_wrong_all_to_all_order_is_caught(two_ranks):
    errors = _errors(torch.load(two_ranks / "llama-mutated.pt"), _single_process("llama"))
    assert errors["loss"] > 100 * RTOL
    assert max(errors.values()) > 1e-2
