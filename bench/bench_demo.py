"""``fastalign demo`` over several seeds: the README's demo table, with its spread.

    python bench/bench_demo.py --seeds 0 1 2          # 3 demo runs, one after the other

Runs ``run_demo`` (the demo's default settings, only the seed changes) once per seed and writes
``bench/results/<device>/demo_seeds.json`` (per-seed tables, mean / min / max / population std
per model and metric, wall and process-CPU time per run, load average, environment) and
``demo_seeds.md`` (the same as Markdown tables). README's demo table is copied from this file
and ``tests/test_readme.py`` checks that it still matches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

METRICS = ("preference_accuracy", "exact_match", "win_rate_vs_sft")
HEADERS = {"preference_accuracy": "pref. accuracy", "exact_match": "exact match", "win_rate_vs_sft": "win rate vs SFT"}


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"seeds must be ints >= 0, got {value}")
    return value


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), ``None`` elsewhere: the demo's numbers
    moved between two CPUs once, so the results name the CPU they were measured on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2], help="demo seeds (default: 0 1 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="results root; files go to OUT/<device>/ (default: %(default)s)")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must not repeat a seed, got {args.seeds}")
    return args


def aggregate(runs: list[dict]) -> list[dict]:
    """Per model (the demo's table rows, in order): mean, min, max and population std of each
    metric over the runs. Population std (``pstdev``): it describes these seeds, it does not
    estimate a larger population from 3 samples."""
    names = [row["model"] for row in runs[0]["table"]]
    summary = []
    for index, name in enumerate(names):
        entry: dict = {"model": name}
        for metric in METRICS:
            values = [run["table"][index][metric] for run in runs]
            if any(run["table"][index]["model"] != name for run in runs):
                raise ValueError("the runs' tables list different models")
            entry[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                             "std": statistics.pstdev(values)}
        summary.append(entry)
    return summary


def cell(stats: dict) -> str:
    """``mean (min–max)`` at 3 decimals: README's cell format."""
    return f"{stats['mean']:.3f} ({stats['min']:.3f}–{stats['max']:.3f})"


def markdown(result: dict) -> str:
    """The results as Markdown: the mean (min–max) table, then one table per seed and the times."""
    settings = result["settings"]
    seeds = ", ".join(str(run["seed"]) for run in result["runs"])
    lines = [f"# `fastalign demo` over seeds {seeds}", "",
             (f"Settings: SFT {settings['sft_steps']} steps (lr {settings['sft_learning_rate']:g}), "
              f"DPO {settings['dpo_steps']} steps (lr {settings['dpo_learning_rate']:g}, beta {settings['dpo_beta']:g}, "
              f"RPO alpha {settings['rpo_alpha']}), {settings['num_train']} training / {settings['num_test']} "
              "held-out prompts."), "",
             "Mean (min–max) over the seeds:", "",
             "| model | " + " | ".join(HEADERS[m] for m in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for entry in result["mean_min_max"]:
        lines.append(f"| {entry['model']} | " + " | ".join(cell(entry[m]) for m in METRICS) + " |")
    lines += ["", "Per seed (wins / ties / losses are fractions of the held-out prompts, against SFT):", "",
              "| seed | model | " + " | ".join(HEADERS[m] for m in METRICS) + " | wins | ties | losses |",
              "|---|---|" + "---|" * (len(METRICS) + 3)]
    for run in result["runs"]:
        for row in run["table"]:
            lines.append(f"| {run['seed']} | {row['model']} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS)
                         + " | " + " | ".join(f"{row.get(k, float('nan')):.3f}" for k in ("wins", "ties", "losses"))
                         + " |")
    env = result["environment"]
    lines += ["", ("Time per run (SFT / DPO: the trainers' step seconds; the rest is evaluation, generation and "
                   "saving):"), "", "| seed | wall s | SFT s | DPO s | process CPU s | load average (1 min) before → after |",
              "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        lines.append(f"| {run['seed']} | {run['wall_s']:.0f} | {run['sft_train_s']:.0f} | {run['dpo_train_s']:.0f} | "
                     f"{run['cpu_s']:.0f} | "
                     f"{run['load_average_before']:.2f} → {run['load_average_after']:.2f} |")
    lines += ["", (f"Environment: {env['device']} ({env.get('cpu_model')}), {env['cpu_count']} CPUs, "
                   f"{env['torch_threads']} torch threads, torch {env['packages']['torch']}, "
                   f"git {str(env['git_commit'])[:10]}, {env['date_utc']}.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from fastalign.app.demo import run_demo
    from fastalign.app.demo_settings import DemoSettings
    from fastalign.bench.environment import environment, load_average
    from fastalign.bench.report import _atomic_write, results_dir

    defaults = DemoSettings()
    if defaults.threads is not None:  # what run_demo will use, so that the environment records it
        torch.set_num_threads(defaults.threads)
    env = {**environment(torch.device("cpu")), "cpu_model": cpu_model()}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as work:
        for seed in args.seeds:
            settings = DemoSettings(output_dir=str(Path(work) / f"seed{seed}"), seed=seed, progress=False)
            before, wall, cpu = load_average(), time.perf_counter(), time.process_time()
            summary = run_demo(settings)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runs.append({"seed": seed, "wall_s": wall, "cpu_s": cpu, "load_average_before": before,
                         "load_average_after": load_average(), "table": summary["table"],
                         "sft_train_s": sum(h.get("seconds", 0.0) for h in summary["sft_history"]),
                         "dpo_train_s": sum(h.get("seconds", 0.0) for h in summary["dpo_history"]),
                         "dpo_reward_accuracy": summary["dpo_reward_accuracy"]})
            print(f"seed {seed}: {wall:.0f} s wall, {cpu:.0f} s process CPU", flush=True)
    settings = asdict(defaults)
    settings.pop("output_dir"), settings.pop("seed"), settings.pop("progress")
    result = {"environment": env, "settings": settings,
              "spread": "min and max over the seeds; std is the population std (statistics.pstdev)",
              "mean_min_max": aggregate(runs), "runs": runs}
    folder = results_dir(args.out, env, torch.device("cpu"))
    _atomic_write(folder / "demo_seeds.json", json.dumps(result, indent=2) + "\n")
    _atomic_write(folder / "demo_seeds.md", markdown(result))
    print(markdown(result))
    print(f"wrote {folder / 'demo_seeds.json'} and {folder / 'demo_seeds.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
