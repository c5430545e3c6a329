"""What a training run shows while it runs and when it ends.

On a terminal: one tqdm bar per run whose postfix holds the loss, the method's key metrics
(``Trainer.progress_metrics``: DPO reward accuracy and margin, PPO/GRPO reward and KL, SFT
token NLL), the learning rate and tokens/s. When stderr is not a terminal (a log file, CI), a
bar would write a carriage-return update per step into one endless line, so there is no bar:
one plain line every ``log_every`` steps instead (0: about 20 lines a run). ``progress=False``
shows nothing, and also turns off the bars of the libraries fastalign calls (``datasets``'
tokenization, ``transformers``' "Writing model shards", hub downloads): ``library_bars``.

``run_summary`` / ``format_summary``: the few lines a finished run ends with (steps, time,
tokens/s, peak memory, final metrics, where the model and the metrics are).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

LINES_PER_RUN = 20  # log_every=0 on a non-terminal: about this many lines


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (bars redraw in place only there)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def show_bars(progress: bool, stream: TextIO | None = None) -> bool:
    """Bars are drawn only when asked for and stderr (``stream``) is a terminal."""
    return bool(progress) and is_terminal(stream if stream is not None else sys.stderr)


@contextlib.contextmanager
def library_bars(show: bool) -> Iterator[None]:
    """Inside, the progress bars of ``datasets``, ``transformers`` and ``huggingface_hub`` are
    off unless ``show``; each library's own setting is put back on exit. A library whose bars
    are already off is left alone (no environment-variable warnings)."""
    if show:
        yield
        return
    import huggingface_hub.utils as hub
    import datasets as datasets_tqdm  # its top level holds the switches
    from transformers.utils import logging as transformers_logging

    hub_on = not hub.are_progress_bars_disabled()
    datasets_on = not datasets_tqdm.are_progress_bars_disabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    try:
        if hub_on:
            hub.disable_progress_bars()
        if datasets_on:
            datasets_tqdm.disable_progress_bars()
        if transformers_on:
            transformers_logging.disable_progress_bar()
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()  # turns the hub's bars on too: set below
        if datasets_on:
            datasets_tqdm.enable_progress_bars()
        if hub_on:
            hub.enable_progress_bars()
        elif transformers_on:
            hub.disable_progress_bars()


def format_metrics(entry: dict[str, Any], keys: dict[str, str]) -> str:
    """``loss 0.6931  acc 0.550  margin 0.0120  lr 2.0e-04  5.1k tok/s`` from a step's log entry;
    ``keys`` maps metric names to their short labels, in order (missing ones are left out)."""
    parts = [f"{label} {_number(entry[key])}" for key, label in keys.items() if key in entry]
    if "lr" in entry:
        parts.append(f"lr {entry['lr']:.1e}")
    if "tokens_per_s" in entry:
        parts.append(f"{_count(entry['tokens_per_s'])} tok/s")
    return "  ".join(parts)


def _number(value: float) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _count(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class RunProgress:
    """Progress of one run on ``stream`` (stderr): a bar on a terminal, lines elsewhere,
    nothing when ``enabled`` is false. ``update`` takes each step's log entry."""

    def __init__(self, *, name: str, total: int, initial: int, keys: dict[str, str], enabled: bool, every: int = 0,
                 stream: TextIO | None = None) -> None:
        self.name, self.total, self.keys = name, total, keys
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled)
        self.every = every if every > 0 else max(1, total // LINES_PER_RUN)
        self.start = time.monotonic()
        self.bar = None
        if self.enabled and is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=name, file=self.stream, dynamic_ncols=True)

    def update(self, entry: dict[str, Any]) -> None:
        step = entry["step"]
        due = step % self.every == 0 or step == self.total
        if self.bar is not None:
            if due:
                self.bar.set_postfix_str(format_metrics(entry, self.keys), refresh=False)
            self.bar.update(1)
        elif self.enabled and due:
            elapsed = _duration(time.monotonic() - self.start)
            print(f"{self.name} step {step}/{self.total}  {format_metrics(entry, self.keys)}  [{elapsed}]",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_summary(history: list[dict[str, Any]], *, keys: dict[str, str], seconds: float, output_dir: Path,
                model_path: Path | None = None, evaluation: dict[str, float] | None = None) -> dict[str, Any]:
    """A finished run in numbers: steps, wall time, tokens/s, peak memory, the last step's key
    metrics, the evaluation, and where the model and the metrics are."""
    done = [entry for entry in history if "skipped" not in entry]
    tokens = sum(entry.get("tokens_per_s", 0.0) * entry.get("seconds", 0.0) for entry in history)
    step_seconds = sum(entry.get("seconds", 0.0) for entry in history)
    cuda = [entry["peak_memory_mb"] for entry in history if "peak_memory_mb" in entry]
    rss = [entry["process_peak_rss_mb"] for entry in history if "process_peak_rss_mb" in entry]
    last = done[-1] if done else {}
    return {
        "steps": history[-1]["step"] if history else 0,
        "skipped_steps": len(history) - len(done),
        "seconds": seconds,
        "tokens_per_s": tokens / step_seconds if step_seconds else 0.0,
        "peak_memory": (f"{max(cuda):.0f} MiB CUDA (largest step)" if cuda
                        else f"{max(rss):.0f} MiB process RSS" if rss else "not measured"),
        "final": {label: last[key] for key, label in keys.items() if key in last},
        "evaluation": dict(evaluation or {}),
        "model": str(model_path) if model_path is not None else None,
        "metrics": str(output_dir / "metrics.jsonl"),
    }


def format_summary(name: str, summary: dict[str, Any]) -> str:
    """The summary as a few lines."""
    skipped = f" ({summary['skipped_steps']} skipped)" if summary["skipped_steps"] else ""
    steps = f"{summary['steps']} step{'' if summary['steps'] == 1 else 's'}"
    lines = [f"{name} done: {steps}{skipped} in {_duration(summary['seconds'])}, "
             f"{_count(summary['tokens_per_s'])} tok/s, peak memory {summary['peak_memory']}"]
    if summary["final"]:
        lines.append("  last step: " + "  ".join(f"{k} {_number(v)}" for k, v in summary["final"].items()))
    if summary["evaluation"]:
        lines.append("  evaluation: " + "  ".join(f"{k} {_number(v)}" for k, v in summary["evaluation"].items()))
    if summary["model"]:
        lines.append(f"  model: {summary['model']}")
    lines.append(f"  metrics: {summary['metrics']}")
    return "\n".join(lines)
