"""What a run prints: on a terminal, a bar with the loss, the method's metrics, lr and tokens/s;
redirected to a file, plain lines and not one carriage return; with progress=false, no bar at
all (the tokenizer's and "Writing model shards" included); a summary at the end."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from fastalign.cli import main
from fastalign.train.progress import RunProgress, format_metrics, format_summary, library_bars, run_summary

BAR = "%|"  # tqdm's bar: "40%|████  | 2/5"


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (bars draw only on terminals)."""

    def isatty(self) -> bool:
        return True


def _sft_jsonl(path):
    rows = [{"prompt": f"upper: {word}\n", "completion": word.upper()} for word in
            ("abc", "kqzvw", "hello", "tiny", "model", "packs", "rows", "fast", "lean", "demo", "bars", "logs")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _argv(tmp_path, *extra: str) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return ["train", "sft", "--model", "tiny", "--data", str(_sft_jsonl(tmp_path / "sft.jsonl")), "--output-dir",
            str(tmp_path / "out"), "--max-steps", "3", "token_budget=64", "save_every=0", *extra]


def test_the_bar_shows_the_methods_metrics_lr_and_tokens_per_second():
    stream = FakeTerminal()
    bar = RunProgress(name="DPOTrainer", total=2, initial=0, enabled=True, stream=stream,
                      keys={"loss": "loss", "rewards/accuracies": "acc", "rewards/margins": "margin"})
    for step in (1, 2):
        bar.update({"step": step, "loss": 0.6931, "rewards/accuracies": 0.625, "rewards/margins": 0.0123,
                    "lr": 2e-4, "tokens_per_s": 5100.0, "grad_norm": 1.0})
    bar.close()
    text = stream.getvalue()
    assert BAR in text and "\r" in text
    assert "loss 0.6931  acc 0.6250  margin 0.0123  lr 2.0e-04  5.1k tok/s" in text
    assert "grad_norm" not in text


def test_off_a_terminal_one_line_every_n_steps_and_no_carriage_return():
    stream = io.StringIO()
    progress = RunProgress(name="SFTTrainer", total=10, initial=0, keys={"loss": "nll"}, enabled=True, every=4,
                           stream=stream)
    for step in range(1, 11):
        progress.update({"step": step, "loss": 1.0 / step, "lr": 1e-3, "tokens_per_s": 900.0})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["4/10", "8/10", "10/10"]  # every 4th and the last
    assert "nll 0.2500  lr 1.0e-03  900 tok/s" in lines[0] and "\r" not in stream.getvalue()
    terminal = FakeTerminal()
    silent = RunProgress(name="x", total=3, initial=0, keys={}, enabled=False, stream=terminal)
    silent.update({"step": 3})
    silent.close()
    assert terminal.getvalue() == ""


def test_format_metrics_by_method():
    entry = {"step": 1, "loss": 0.5, "reward": 0.25, "kl_to_reference": 0.001, "lr": 1e-5, "tokens_per_s": 12.0}
    assert format_metrics(entry, {"loss": "loss", "reward": "reward", "kl_to_reference": "kl"}) == \
        "loss 0.5000  reward 0.2500  kl 0.0010  lr 1.0e-05  12 tok/s"


def _run_with_terminal_stderr(monkeypatch, capsys, argv) -> str:
    """``main(argv)`` with stderr a terminal (what a user at a shell sees), stdout captured."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv) == 0
    monkeypatch.undo()
    return terminal.getvalue() + capsys.readouterr().out


def test_progress_false_silences_every_bar_even_on_a_terminal(tmp_path, monkeypatch, capsys):
    shown = _run_with_terminal_stderr(monkeypatch, capsys, _argv(tmp_path / "shown"))
    # The twin: on a terminal, progress=true draws the tokenizer's, the run's and the writer's bars.
    assert BAR in shown and "tokenize" in shown and "SFTTrainer" in shown and "Writing model shards" in shown
    assert "nll " in shown and "tok/s" in shown

    silent = _run_with_terminal_stderr(monkeypatch, capsys, _argv(tmp_path / "silent", "progress=false"))
    assert BAR not in silent and "\r" not in silent and "tokenize" not in silent and "step 1/3" not in silent
    assert "fastalign train sft done: 3 steps" in silent  # the summary stays


def test_a_redirected_run_writes_lines_no_carriage_return_and_a_summary(tmp_path):
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, "-m", "fastalign", *_argv(tmp_path, "log_every=1")],
                                stdout=handle, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert result.returncode == 0, text
    assert "\r" not in text and BAR not in text
    assert [line.split()[2] for line in text.splitlines() if line.startswith("SFTTrainer step")] == \
        ["1/3", "2/3", "3/3"]
    summary = text[text.index("fastalign train sft done"):]
    assert "3 steps in" in summary and "tok/s" in summary and "peak memory" in summary and "nll" in summary
    out = tmp_path / "out"
    assert f"model: {out / 'final'}" in summary and f"metrics: {out / 'metrics.jsonl'}" in summary


def test_library_bars_are_restored_after_a_quiet_block():
    import datasets
    from transformers.utils import logging as transformers_logging

    before = (datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    with library_bars(False):
        assert not datasets.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    assert (datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()) == before


def test_the_summary_names_steps_time_speed_memory_metrics_and_paths(tmp_path):
    history = [{"step": 1, "loss": 0.7, "rewards/accuracies": 0.5, "tokens_per_s": 100.0, "seconds": 2.0,
                "process_peak_rss_mb": 500.0},
               {"step": 2, "loss": 0.6, "rewards/accuracies": 0.75, "tokens_per_s": 300.0, "seconds": 2.0,
                "process_peak_rss_mb": 510.0}]
    summary = run_summary(history, keys={"loss": "loss", "rewards/accuracies": "acc"}, seconds=61.0,
                          output_dir=tmp_path, model_path=tmp_path / "final", evaluation={"reward_accuracy": 0.9})
    assert summary["tokens_per_s"] == pytest.approx(200.0) and summary["final"] == {"loss": 0.6, "acc": 0.75}
    text = format_summary("fastalign train dpo", summary)
    assert text.splitlines()[0] == ("fastalign train dpo done: 2 steps in 1m01s, 200 tok/s, "
                                    "peak memory 510 MiB process RSS")
    assert "acc 0.7500" in text and "reward_accuracy 0.9000" in text and str(tmp_path / "final") in text
