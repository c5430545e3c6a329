"""The held-out RL benchmark runs end to end (smoke preset) and writes its results."""

from __future__ import annotations

import json

from bench_rl_heldout import main


def test_smoke_preset_writes_results(tmp_path):
    assert main(["--preset", "cpu-smoke", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*/rl_heldout_cpu-smoke.json")
    rows = {row["method"]: row for row in json.loads(result.read_text())["rows"]}
    assert rows.keys() == {"grpo", "ppo"}
    for row in rows.values():
        assert 0.0 <= row["heldout_reward_before"] <= 1.0 and 0.0 <= row["heldout_reward_after"] <= 1.0
        assert row["heldout_reward_gain"] == row["heldout_reward_after"] - row["heldout_reward_before"]
        assert row["train_seconds"] > 0
