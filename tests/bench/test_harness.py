"""The benchmark harness on CPU at tiny sizes: correctness-checked providers, complete
records, files written. Timings are reported by the harness, never asserted here."""

from __future__ import annotations

import json

import pytest
import torch

from bench_linear_logprobs import run_benchmark
from fastalign.bench.environment import environment
from fastalign.bench.memory import memory_meter, peak_memory_bytes
from fastalign.bench.report import plot_results, write_results
from fastalign.bench.runner import rows_as_dicts
from fastalign.testing.memory import AllocationRecorder


def test_cpu_benchmark_writes_complete_results(tmp_path):
    rows = run_benchmark(
        ["naive", "chunked_torch", "fastalign", "liger"], [(64, 32, 500), (128, 32, 500)],
        dtype=torch.float32, device=torch.device("cpu"), repeats=2,
    )
    records = rows_as_dicts(rows)
    assert len(records) == 4 * 2 * 2
    by_status = {(r["provider"], r["status"]) for r in records}
    assert ("naive", "ok") in by_status and ("chunked_torch", "ok") in by_status
    assert ("fastalign", "skipped") in by_status and ("liger", "skipped") in by_status
    for r in records:
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["peak_mem_mb"] > 0 and r["tflops"] > 0
        else:
            assert r["note"], r
    env = environment(torch.device("cpu"))
    paths = write_results(records, env, tmp_path, "lp")
    saved = json.loads(paths["json"].read_text())
    assert saved["environment"]["packages"]["torch"] == torch.__version__
    assert saved["environment"]["date_utc"] and len(saved["rows"]) == len(records)
    assert paths["csv"].read_text().count("\n") == len(records) + 1
    assert plot_results(records, env, tmp_path / "lp.png", title="t").stat().st_size > 0


def test_failed_oracle_check_is_recorded_not_timed(monkeypatch):
    from fastalign.bench import providers

    broken = providers.Provider(
        "broken", lambda: lambda h, w, t: providers.naive_logprobs(h, w, t) + 0.1, lambda d: None
    )
    monkeypatch.setitem(providers.PROVIDERS, "broken", broken)
    rows = run_benchmark(["broken"], [(16, 8, 50)], dtype=torch.float32, device=torch.device("cpu"), repeats=1)
    assert {r.status for r in rows} == {"failed_check"}
    assert all(r.median_ms is None for r in rows)


def test_dpo_layer_benchmark_checks_and_measures():
    from bench_dpo_layer import run_benchmark as run_dpo

    rows = run_dpo(["naive", "liger", "fastalign"], [(2, 32, 16, 300)], dtype=torch.float32,
                   device=torch.device("cpu"), repeats=2)
    assert {r.provider for r in rows} == {"naive", "liger", "fastalign"}
    for r in rows:
        assert r.status == "ok", r.note
        assert r.n == 2 * 2 * 32 and r.median_ms > 0 and r.peak_mem_mb > 0


def test_one_memory_meter_for_every_method():
    cpu = torch.device("cpu")
    # Tensors: the allocation recorder itself, so tests and benchmarks count the same bytes.
    with memory_meter(cpu, "tensors") as meter:
        kept = torch.empty(1 << 20, dtype=torch.uint8)
    assert isinstance(meter, AllocationRecorder) and meter.peak_bytes == kept.numel()
    assert peak_memory_bytes(lambda: torch.empty(1 << 16, dtype=torch.uint8), cpu) == 1 << 16
    # RSS: a sampled delta above entry, never negative.
    with memory_meter(cpu, "rss") as meter:
        touched = torch.ones(8 << 20, dtype=torch.uint8)
    assert meter.peak_bytes >= 0 and touched.sum() > 0
    with pytest.raises(ValueError, match="memory method"):
        memory_meter(cpu, "heap")


def test_the_rss_meter_keeps_a_peak_per_phase():
    with memory_meter(torch.device("cpu"), "rss") as meter:
        assert meter.phase_peaks.keys() <= {"all"}
        big = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched; freed before the next phase
        del big
        meter.mark("after")
        small = torch.ones(16 << 20, dtype=torch.uint8)
        meter.mark("after")  # marking the current phase again changes nothing
    assert set(meter.phase_peaks) == {"all", "after"}
    assert meter.phase_peaks["all"] >= 48 << 20, "the 64 MiB tensor counts for the first phase"
    assert meter.phase_peaks["after"] < meter.phase_peaks["all"] - (24 << 20) and small.sum() > 0
    assert meter.peak_bytes == max(meter.phase_peaks.values())
