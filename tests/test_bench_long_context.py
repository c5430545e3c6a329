"""The long-context benchmark's harness: a case of each trainer runs on a tiny model (one in its
own process, as the benchmark runs them), and the fit, projection and report are right."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from fastalign.bench.environment import environment  # noqa: E402
from fastalign.bench.long_context import (  # noqa: E402
    PRESETS,
    PROVIDERS,
    _case_in_subprocess,
    fit_line,
    markdown,
    pair,
    plot,
    run_case,
    summarize,
)


def test_one_case_of_each_trainer_runs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trl = run_case(PRESETS["cpu-smoke"], PROVIDERS["trl"], 64, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert trl["status"] == "ok", trl["note"]
    assert trl["row_tokens"] == 128 and trl["seconds"] > 0 and trl["model_own_mb"] > 0
    fastalign = _case_in_subprocess("cpu-smoke", "fastalign", 64, "cpu", timeout=300)
    assert fastalign["status"] == "ok", fastalign["note"]
    assert fastalign["row_tokens"] == 80 and fastalign["peak_above_mb"] >= 0


def test_pair_lengths():
    prompt, chosen, rejected = pair(1024, 100, seed=0)
    assert (len(prompt), len(chosen), len(rejected)) == (768, 256, 256)
    with pytest.raises(ValueError, match="multiple of 4"):
        pair(1022, 100, seed=0)


def test_fit_projection_and_report(tmp_path):
    assert fit_line([(1, 1.0)]) is None
    intercept, slope, r2 = fit_line([(1000, 150.0), (2000, 250.0), (4000, 450.0)])
    assert (round(intercept, 6), round(slope, 6), round(r2, 6)) == (50.0, 0.1, 1.0)
    rows = [dict(provider=name, length=length, row_tokens=length, status="ok", note="", model_own_mb=1024.0,
                 peak_above_mb=base + per_token * length, seconds=1.0, load_1m_before=0.5)
            for name, base, per_token in (("trl", 100.0, 0.2), ("fastalign", 50.0, 0.05))
            for length in (1024, 2048, 4096)]
    rows.append(dict(provider="fastalign-none", length=1024, status="oom", note="out of memory"))
    summary = {entry["provider"]: entry for entry in summarize(rows, budget_gib=16.0)}
    assert summary["trl"]["kib_per_token"] == pytest.approx(0.2 * 1024)
    assert summary["fastalign"]["per_token_vs_trl"] == pytest.approx(0.25)
    # 16 GiB = model's own 1 GiB + 50 MiB + 0.05 MiB per token.
    assert summary["fastalign"]["longest_length"] == pytest.approx((16 * 1024 - 1024 - 50) / 0.05, abs=1)
    assert "kib_per_token" not in summary["fastalign-none"]
    env = {**environment(torch.device("cpu")), "benchmark": {"preset_name": "test"}}
    table = markdown(rows, list(summary.values()), env, 16.0)
    assert "| fastalign | 51.2 | 0.25 |" in table and "oom" in table
    assert plot(rows, list(summary.values()), env, tmp_path / "plot.png", title="test").exists()
