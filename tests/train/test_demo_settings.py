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
    DemoSettings(threads=None).validate()  # torch's own choice


@pytest.mark.parametrize("threads", [0, -1, 1.0, True])
def test_demo_threads_refused_by_name(threads, capsys):
    with pytest.raises(ValueError, match="^--threads must be None or an int >= 1"):
        DemoSettings(threads=threads).validate()


def test_demo_cli_refuses_bad_threads_before_writing(tmp_path, capsys):
    from fastalign.cli import main

    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--threads", "0"]) == 2
    assert "--threads must be None or an int >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_run_demo_restores_the_thread_count(tmp_path, monkeypatch):
    """run_demo sets settings.threads for the run only (the caller's count comes back, also
    after a failure)."""
    import torch

    from fastalign.app import demo

    seen = []

    def fail(settings):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop")

    monkeypatch.setattr(demo, "_run", fail)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with pytest.raises(RuntimeError, match="stop"):
        demo.run_demo(DemoSettings(output_dir=str(tmp_path / "d"), threads=wanted))
    assert seen == [wanted] and torch.get_num_threads() == before


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "-1"], "seeds must be ints >= 0"), (["--seeds", "1", "1"], "must not repeat a seed"),
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
