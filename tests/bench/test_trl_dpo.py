"""The TRL-vs-fastalign benchmark runs end to end on CPU and writes its results."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("trl")

from bench_trl_dpo import main  # noqa: E402


def test_cpu_smoke_writes_results(tmp_path, capsys):
    assert main(["--preset", "cpu-smoke", "--examples", "8", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*/trl_dpo_cpu-smoke.json")
    data = json.loads(result.read_text())
    env = data["environment"]
    assert env["check_passed"] and env["loss_difference"] <= 1e-4
    # Policy and reference differ, so the check compares a loss that is not log(2) on both sides.
    assert abs(env["first_batch_loss"]["trl"] - math.log(2)) > 1e-3
    rows = {row["trainer"]: row for row in data["rows"]}
    assert rows.keys() == {"trl", "fastalign"}
    assert rows["fastalign"]["shared_prompt_fraction"] == 1.0 and rows["trl"]["shared_prompt_fraction"] == 0.0
    assert rows["trl"]["useful_tokens"] == rows["fastalign"]["useful_tokens"] > 0
    assert all(row["median_ms"] > 0 for row in rows.values())
    assert (result.parent / "trl_dpo_cpu-smoke.csv").exists()
