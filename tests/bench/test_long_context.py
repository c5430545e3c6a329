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
from long_context_steps import PHASES, PROVIDERS, pair, run_case  # noqa: E402
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
    assert set(trl["phase_peaks_above_mb"]) == set(PHASES), "the hooks marked every phase"
    fastalign = _case_in_subprocess("cpu-smoke", "fastalign", 64, "cpu", timeout=300)
    assert fastalign["status"] == "ok", fastalign["note"]
    assert fastalign["row_tokens"] == 80 and fastalign["peak_above_mb"] >= 0
    assert set(fastalign["phase_peaks_above_mb"]) == set(PHASES)
    assert fastalign["peak_above_mb"] == max(fastalign["phase_peaks_above_mb"].values())


def test_pair_lengths():
    prompt, chosen, rejected = pair(1024, 100, seed=0)
    assert (len(prompt), len(chosen), len(rejected)) == (768, 256, 256)
    with pytest.raises(ValueError, match="multiple of 4"):
        pair(1022, 100, seed=0)


def _rows(provider: str, phases: dict[str, tuple[float, float]], lengths=(1024, 2048, 4096), *, cap=None) -> list[dict]:
    """Rows whose phase peaks are ``a + b L`` (``phases``: name -> (a, b)); ``cap``: a phase whose
    growth stops at 2048 tokens (a buffer in tiles)."""
    rows = []
    for length in lengths:
        peaks = {phase: a + b * (min(length, 2048) if phase == cap else length) for phase, (a, b) in phases.items()}
        rows.append(dict(provider=provider, length=length, row_tokens=length, status="ok", note="",
                         model_own_mb=1024.0, peak_above_mb=max(peaks.values()), phase_peaks_above_mb=peaks,
                         seconds=1.0, load_1m_before=0.5))
    return rows


def test_fit_projection_and_report(tmp_path):
    assert fit_line([(1, 1.0)]) is None
    intercept, slope, r2 = fit_line([(1000, 150.0), (2000, 250.0), (4000, 450.0)])
    assert (round(intercept, 6), round(slope, 6), round(r2, 6)) == (50.0, 0.1, 1.0)
    head, decoder, optimizer = PHASES
    # TRL-like: a head phase with a large buffer that stops growing at 2048 sets the peak at
    # the lengths measured, while its decoder backward grows fastest.
    rows = _rows("trl", {head: (1000.0, 0.5), decoder: (100.0, 0.2), optimizer: (200.0, 0.0)}, cap=head)
    rows += _rows("fastalign", {head: (250.0, 0.02), decoder: (150.0, 0.05), optimizer: (200.0, 0.0)})
    rows.append(dict(provider="fastalign-none", length=1024, status="oom", note="out of memory"))
    summary = {entry["provider"]: entry for entry in summarize(rows, budget_gib=16.0)}
    trl, fastalign = summary["trl"], summary["fastalign"]
    assert trl["per_token_phase"] == decoder and trl["kib_per_token"] == pytest.approx(0.2 * 1024)
    assert trl["peak_kib_per_token"] == pytest.approx(0.0)  # the step's peak, as measured, stopped growing
    assert fastalign["kib_per_token"] == pytest.approx(0.05 * 1024) and fastalign["per_token_vs_trl"] == pytest.approx(0.25)
    assert fastalign["phase_kib_per_token"][head] == pytest.approx(0.02 * 1024)
    # 16 GiB = model's own 1 GiB + the fastest phase's peak at 4096 + its slope beyond it
    # (the head phase, growing slower, reaches the budget later).
    room = 16 * 1024 - 1024
    assert fastalign["longest_length"] == pytest.approx(4096 + (room - (150 + 0.05 * 4096)) / 0.05, abs=1)
    assert trl["longest_length"] == pytest.approx(4096 + (room - (100 + 0.2 * 4096)) / 0.2, abs=1)
    # A phase that is not the fastest can still fill the budget first: a head far above the rest.
    rows_big_head = _rows("big", {head: (15000.0, 0.01), decoder: (100.0, 0.2)})
    (big,) = summarize(rows_big_head, budget_gib=16.0)
    assert big["per_token_phase"] == decoder
    assert big["longest_length"] == pytest.approx(4096 + (room - (15000 + 0.01 * 4096)) / 0.01, abs=1)
    assert "kib_per_token" not in summary["fastalign-none"]
    env = {**environment(torch.device("cpu")), "benchmark": {"preset_name": "test", "budget_gib": 16.0}}
    table = markdown(rows, list(summary.values()), env, 16.0)
    assert "| fastalign | 51.2 | decoder bwd | 0.25 | 20.5 / 51.2 / 0.0 |" in table and "oom" in table
    assert "| trl | 1024 | 1024 | 1024 | 1512 | 1512 / 305 / 200 |" in table
    assert plot(rows, list(summary.values()), env, tmp_path / "plot.png", title="test").exists()
    # Re-summarizing a results file keeps its rows and environment.
    path = tmp_path / "long_context_test.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}))
    assert resummarize(path) == table
    assert json.loads(path.read_text())["rows"] == rows and (tmp_path / "long_context_test.png").exists()


def test_rows_without_phase_peaks_use_the_steps_peak():
    rows = [dict(provider="old", length=length, status="ok", model_own_mb=1024.0, peak_above_mb=50.0 + 0.1 * length)
            for length in (1024, 2048)]
    (entry,) = summarize(rows, budget_gib=16.0)
    assert entry["per_token_phase"] == "step" and entry["kib_per_token"] == pytest.approx(0.1 * 1024)
    assert entry["longest_length"] == pytest.approx(2048 + (15 * 1024 - 50 - 0.1 * 2048) / 0.1, abs=1)
