"""The CLI's defaults work under torchrun: ``torchrun --nproc-per-node 2 -m fastalign train dpo
--model tiny --data synthetic`` needs no extra option (``rows_per_step=1`` is rounded up to the
world size, said once), writes a sharded checkpoint and the final model (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def test_two_processes_train_dpo_with_the_default_options(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "fastalign", "train", "dpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(out),
               "--max-steps", "2", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rounded = [line for line in result.stderr.splitlines() if "rounded up" in line]
    assert rounded == ["fastalign: rows_per_step=1 rounded up to 2, a multiple of the 2 processes (each process "
                       "takes 1 packed row per step)"]
    assert result.stdout.count(f"model: {out / 'final'}") == 1, "rank 0 alone reports"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in metrics] == [1, 2]
    checkpoint = out / "checkpoints" / "step-00000002"
    assert sorted(path.name for path in checkpoint.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    assert (checkpoint / "trainer.pt").is_file() and (out / "final" / "model.safetensors").is_file()
