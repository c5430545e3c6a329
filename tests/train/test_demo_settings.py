"""The demo's settings and its seed benchmark (bench/bench_demo.py) refuse bad inputs by name, and
the benchmark's mean / min / max / std are what they say. No training here: the demo itself runs
in test_end_to_end.py (a few steps)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fastalign.app.demo_settings import DemoSettings

ROOT = Path(__file__).resolve().parents[2]


def _bench_demo():
    spec = importlib.util.spec_from_file_location("bench_demo", ROOT / "bench" / "bench_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "value"), [
    ("sft_learning_rate", 0.0), ("sft_learning_rate", float("inf")), ("dpo_learning_rate", -1e-3),
    ("dpo_beta", 0), ("dpo_beta", True), ("dpo_beta", "0.1"),
])
def test_demo_settings_refuse_bad_rates_by_name(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number > 0"):
        DemoSettings(**{name: value}).validate()


def test_demo_defaults_validate():
    DemoSettings().validate()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "-1"], "seeds must be ints >= 0"), (["--seeds", "1", "1"], "must not repeat a seed"),
    (["--threads", "0"], "--threads must be an int >= 1"),
])
def test_bench_demo_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        _bench_demo().parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_bench_demo_aggregates_mean_min_max_std():
    bench = _bench_demo()

    def table(value: float) -> list[dict]:
        return [{"model": name, "preference_accuracy": value, "exact_match": value, "win_rate_vs_sft": value}
                for name in ("initial (random)", "SFT", "SFT + DPO")]

    summary = bench.aggregate([{"table": table(v)} for v in (0.6, 0.7, 0.9)])
    stats = summary[2]["win_rate_vs_sft"]
    assert summary[2]["model"] == "SFT + DPO"
    assert stats["mean"] == pytest.approx(0.7333333) and (stats["min"], stats["max"]) == (0.6, 0.9)
    assert stats["std"] == pytest.approx(0.1247219)  # population std of 0.6, 0.7, 0.9
    assert bench.cell(stats) == "0.733 (0.600–0.900)"
