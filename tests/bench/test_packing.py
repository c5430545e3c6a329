"""The packed-vs-padded benchmark on CPU at a tiny size: the script runs end to end, both
methods agree on per-example log-probs, and complete records are written. Timings are
reported by the benchmark, never asserted here."""

from __future__ import annotations

import json

import torch

import bench_packing
from bench_packing import PRESETS
from fastalign.bench.workloads import synthetic_preference_data


def test_synthetic_lengths_are_hh_like_and_seeded():
    lengths = PRESETS["cpu-smoke"].lengths
    data = synthetic_preference_data(400, lengths, 1024, seed=3)
    again = synthetic_preference_data(400, lengths, 1024, seed=3)
    assert data.prompts == again.prompts and data.rejected == again.rejected
    prompt = sum(map(len, data.prompts)) / len(data)
    answer = sum(map(len, data.chosen + data.rejected)) / (2 * len(data))
    assert 4 < prompt / answer < 10
    assert max(len(p) + len(c) + len(r) for p, c, r in zip(data.prompts, data.chosen, data.rejected)) \
        <= lengths.max_example_tokens


def test_cpu_smoke_writes_checked_positive_results(tmp_path):
    threads = torch.get_num_threads()
    try:  # one thread: steady on a shared machine; restored for the tests after this one
        code = bench_packing.main(["--preset", "cpu-smoke", "--device", "cpu", "--examples", "6", "--repeats", "1",
                               "--warmup", "0", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for suffix in ("json", "csv", "png"):
        assert (folder / f"packing_cpu-smoke.{suffix}").stat().st_size > 0
    saved = json.loads((folder / "packing_cpu-smoke.json").read_text())
    env, rows = saved["environment"], saved["rows"]
    assert env["packages"]["torch"] == torch.__version__ and env["date_utc"]
    assert env["benchmark"]["preset"]["examples"] == 6
    assert [r["method"] for r in rows] == ["padded_concat", "packed_shared"]
    padded, packed = rows
    for r in rows:
        assert r["status"] == "ok", r["note"]
        assert r["check_passed"] is True and r["check_max_abs_diff"] < 1e-3
        assert r["examples"] == 6 and r["useful_tokens"] == padded["useful_tokens"]
        for key in ("median_ms", "examples_per_s", "useful_tokens_per_s", "computed_tokens", "speedup_vs_padded"):
            assert r[key] > 0, key
        assert r["peak_mem_mb"] is None  # CUDA only
    assert packed["computed_tokens"] == packed["useful_tokens"] < padded["computed_tokens"]
    assert packed["attention"].startswith("fastalign_") and padded["attention"] == "sdpa"
    assert (folder / "packing_cpu-smoke.csv").read_text().count("\n") == 3
