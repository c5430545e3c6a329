"""``fastalign demo``: SFT then DPO of the tiny preset on the embedded verifiable task, on CPU.

Prints a before/after table — held-out preference accuracy (does the model give the correct
answer a higher log-prob than the near miss? the ``logp_accuracy`` that ``fastalign eval
--data synthetic --seed SEED`` reports for the same model: same held-out pairs, same function),
exact-match accuracy of greedy answers judged by the verifier, and the win rate of each model's
answers against the SFT model's — and writes metrics, a plot of the training curves and the
models under ``output_dir``. Each run of the demo replaces the outputs of the previous one.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch

from fastalign.app.demo_settings import DemoSettings
from fastalign.app.recipes import load_model, snapshot
from fastalign.data import make_preference_task, make_sft_task, verify
from fastalign.eval import preference_accuracy, win_rate
from fastalign.models import PolicyModel
from fastalign.train.config import DPOConfig, SFTConfig
from fastalign.train.dpo import DPOTrainer
from fastalign.train.sft import SFTTrainer


def _row(name: str, accuracy: dict, judged: dict) -> dict:
    # wins / ties / losses too: a win rate near 0.5 can be all ties or wins and losses that cancel.
    return {"model": name, "preference_accuracy": accuracy["logp_accuracy"],
            "exact_match": judged["accuracy"], "win_rate_vs_sft": judged["win_rate"],
            "wins": judged["wins"], "ties": judged["ties"], "losses": judged["losses"]}


def run_demo(settings: DemoSettings) -> dict:
    """Run the demo; returns the summary also written to ``output_dir/summary.json``.

    Runs on ``settings.threads`` torch threads and restores the previous count afterwards."""
    if not isinstance(settings, DemoSettings):
        raise TypeError(f"settings must be a DemoSettings, got {type(settings).__name__}")
    settings.validate()
    previous = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings)
    finally:
        torch.set_num_threads(previous)


def _run(settings: DemoSettings) -> dict:
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model("tiny", seed=settings.seed)
    sft_data = make_sft_task(settings.num_train, settings.num_test, seed=settings.seed)
    pairs = make_preference_task(settings.num_train, settings.num_test, seed=settings.seed)
    prompts = list(pairs["test"]["prompt"])
    common = dict(token_budget=settings.token_budget, seed=settings.seed, progress=settings.progress)

    initial = snapshot(model)
    sft = SFTTrainer(model, tokenizer, sft_data["train"], SFTConfig(
        output_dir=str(out / "sft"), max_steps=settings.sft_steps, learning_rate=settings.sft_learning_rate,
        warmup_steps=20, save_every=0, **common), eval_data=sft_data["test"])
    sft.train(overwrite=True)  # the demo replaces its previous outputs
    sft.save_model()
    baseline = snapshot(sft.policy.model)

    dpo = DPOTrainer(sft.policy.model, tokenizer, pairs["train"], DPOConfig(
        output_dir=str(out / "dpo"), max_steps=settings.dpo_steps, learning_rate=settings.dpo_learning_rate,
        warmup_steps=5, beta=settings.dpo_beta, rpo_alpha=settings.rpo_alpha, reference="separate", **common),
        eval_data=pairs["test"])
    rows = dpo.eval_rows
    table = []
    for name, network in (("initial (random)", initial), ("SFT", baseline)):
        accuracy = preference_accuracy(PolicyModel(network), rows)
        table.append(_row(name, accuracy, win_rate(network, baseline, tokenizer, prompts, verify)))
    dpo.train(overwrite=True)
    dpo.save_model()
    accuracy = dpo.evaluate()
    table.append(_row("SFT + DPO", accuracy, win_rate(dpo.policy.model, baseline, tokenizer, prompts, verify)))

    summary = {"table": table, "dpo_reward_accuracy": accuracy.get("reward_accuracy"),
               "settings": {f.name: getattr(settings, f.name) for f in fields(settings)},
               "preference_accuracy": "logp_accuracy of fastalign.eval.preference_accuracy on the held-out pairs of "
                                      f"make_preference_task({settings.num_train}, {settings.num_test}, "
                                      f"seed={settings.seed}); `fastalign eval --data synthetic --seed "
                                      f"{settings.seed}` gives the same number",
               "sft_history": sft.history, "dpo_history": dpo.history}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["plot"] = str(_plot(sft.history, dpo.history, out / "training_curves.png"))
    print(format_table(table))
    return summary


def format_table(table: list[dict]) -> str:
    header = f"{'model':<18} {'pref. accuracy':>15} {'exact match':>12} {'win rate vs SFT':>16}"
    lines = [header, "-" * len(header)]
    for row in table:
        lines.append(f"{row['model']:<18} {row['preference_accuracy']:>15.3f} {row['exact_match']:>12.3f} "
                     f"{row['win_rate_vs_sft']:>16.3f}")
    return "\n".join(lines)


def _plot(sft_history: list[dict], dpo_history: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return None
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([h["step"] for h in sft_history], [h["loss"] for h in sft_history])
    axes[0].set(title="SFT: token NLL", xlabel="step")
    axes[1].plot([h["step"] for h in dpo_history], [h["loss"] for h in dpo_history])
    axes[1].set(title="DPO: loss", xlabel="step")
    axes[2].plot([h["step"] for h in dpo_history], [h["rewards/accuracies"] for h in dpo_history], label="accuracy")
    axes[2].plot([h["step"] for h in dpo_history], [h["rewards/margins"] for h in dpo_history], label="margin")
    axes[2].set(title="DPO: implicit reward (train)", xlabel="step")
    axes[2].legend()
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)
    return path


if __name__ == "__main__":  # pragma: no cover - `fastalign demo` is the entry point
    run_demo(DemoSettings())  # sets its own thread count (DemoSettings.threads)
