"""The pipeline comparison (SFT→RM→PPO, SFT→DPO, SFT→GRPO) end to end on CPU with a few
steps per stage, through the script ``bench/bench_pipeline.py``: complete records are written. Timings and qualities are reported by the benchmark, never compared here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench_pipeline
from bench_pipeline import PIPELINES, PRESETS

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_pipeline.py"
TINY = ["--num-train", "64", "--num-test", "8", "--sft-steps", "2", "--rm-steps", "2", "--dpo-steps", "2",
        "--ppo-steps", "2", "--grpo-steps", "1", "--prompts-per-step", "4", "--num-generations", "2",
        "--max-new-tokens", "6", "--token-budget", "512"]


def test_pipeline_bench_writes_all_three_pipelines(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops gain nothing from two, and a busy machine makes OpenMP spin
        assert bench_pipeline.main(["--preset", "cpu-tiny", "--device", "cpu", "--out", str(tmp_path), "--threads", "1",
                               *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    stem = folder / "pipeline_cpu-tiny"
    for suffix in (".json", ".csv", ".png"):
        assert stem.with_suffix(suffix).is_file(), suffix
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["environment"]["device_type"] == "cpu"
    assert record["environment"]["benchmark"]["memory_method"] == "rss"
    rows = record["rows"]
    assert {r["pipeline"] for r in rows} == set(PIPELINES)
    with open(stem.with_suffix(".csv")) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    for name, chain in PIPELINES.items():
        mine = [r for r in rows if r["pipeline"] == name]
        assert [r["stage"] for r in mine] == [*chain, "total"]
        total = mine[-1]
        assert total["wall_s"] == pytest.approx(sum(r["wall_s"] for r in mine[:-1]))
        assert total["tokens"] == sum(r["tokens"] for r in mine[:-1])
        for row in mine:
            assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["tokens"] > 0 and row["peak_memory_mb"] >= 0
            if row["stage"] in ("ppo", "grpo"):
                assert 0 < row["generated_tokens"] <= row["tokens"]
            keys = ("reward_accuracy",) if row["stage"] == "rm" else ("exact_match", "win_rate_vs_sft",
                                                                      "preference_accuracy")
            for key in keys:
                assert 0.0 <= row[key] <= 1.0, (name, row["stage"], key)
    # The SFT run is shared: the same measurement in every pipeline.
    sft = [{k: v for k, v in r.items() if k != "pipeline"} for r in rows if r["stage"] == "sft"]
    assert len(sft) == 3 and sft[0] == sft[1] == sft[2] and sft[0]["shared"]
    assert "SFT→DPO / SFT→RM→PPO" in capsys.readouterr().out


def test_script_runs_from_any_directory_and_gpu_preset_exists(tmp_path):
    # As documented: `python bench/bench_pipeline.py ...`, here from another directory, so the
    # script itself must make its sibling module importable.
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300, check=True).stdout
    assert "--preset" in help_text and "gpu-1b" in help_text and "--cpu-memory" in help_text
    assert PRESETS["gpu-1b"].model == "1b" and PRESETS["gpu-1b"].dtype == "bfloat16"
    assert not PRESETS["gpu-1b"].quality
