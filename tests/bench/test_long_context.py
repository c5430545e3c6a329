"""The long-context benchmark's harness: a case of each trainer runs on a tiny model (one in its
own process, as the benchmark runs them), and the fit, projection and report are right."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl")

from bench_long_context import (  # noqa: E402
    PRESETS,
    _case_in_subprocess,
    fit_line,
    markdown,
    plot,
    resummarize,
    summarize,
)
from long_context_steps import PROVIDERS, pair, run_case  # noqa: E402
from fastalign.bench.environment import environment  # noqa: E402


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
    # TRL-like: a buffer that grows up to 2048 then stays; fastalign-like: a straight line.
    trl = {1024: 1100.0, 2048: 2100.0, 4096: 2500.0}
    rows = [dict(provider="trl", length=length, row_tokens=2 * length, status="ok", note="", model_own_mb=1024.0,
                 peak_above_mb=peak, seconds=1.0, load_1m_before=0.5) for length, peak in trl.items()]
    rows += [dict(provider="fastalign", length=length, row_tokens=length, status="ok", note="", model_own_mb=1024.0,
                  peak_above_mb=50.0 + 0.05 * length, seconds=1.0, load_1m_before=0.5) for length in trl]
    rows.append(dict(provider="fastalign-none", length=1024, status="oom", note="out of memory"))
    summary = {entry["provider"]: entry for entry in summarize(rows, budget_gib=16.0)}
    # The marginal slope at the long end, not the line through the buffer's growth.
    assert summary["trl"]["kib_per_token"] == pytest.approx(400 / 2048 * 1024)
    assert summary["trl"]["fit_kib_per_token"] > 2 * summary["trl"]["kib_per_token"] and summary["trl"]["fit_r2"] < 1
    assert summary["fastalign"]["per_token_vs_trl"] == pytest.approx(0.05 / (400 / 2048))
    # 16 GiB = model's own 1 GiB + the step at 4096 (254.8 MiB) + 0.05 MiB per token beyond it.
    expected = 4096 + (16 * 1024 - 1024 - (50 + 0.05 * 4096)) / 0.05
    assert summary["fastalign"]["longest_length"] == pytest.approx(expected, abs=1)
    assert "kib_per_token" not in summary["fastalign-none"]
    env = {**environment(torch.device("cpu")), "benchmark": {"preset_name": "test", "budget_gib": 16.0}}
    table = markdown(rows, list(summary.values()), env, 16.0)
    assert "| fastalign | 51.2 | 0.26 |" in table and "oom" in table
    assert plot(rows, list(summary.values()), env, tmp_path / "plot.png", title="test").exists()
    # Re-summarizing a results file keeps its rows and environment.
    path = tmp_path / "long_context_test.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}))
    assert resummarize(path) == table
    assert json.loads(path.read_text())["rows"] == rows and (tmp_path / "long_context_test.png").exists()
