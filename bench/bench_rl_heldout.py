"""Does RL improve the policy on prompts it never trained on? GRPO and PPO on the embedded task.

One SFT run (the tiny preset, as in the trainer tests), then from copies of the SFT model a GRPO
run and a PPO run rewarded by the task's graded verifier (``verify_score``) on ``num_train``
training prompts. Before and after, the mean graded reward and the exact-match rate of greedy
answers are measured on ``num_test`` held-out prompts (a different seed: disjoint from the
training prompts up to chance collisions of short random words). The training curve of the
sampled reward is plotted per method.

    python bench/bench_rl_heldout.py --preset cpu-tiny    # tiny model, 2-core CPU, ~6 minutes

Writes bench/results/<device>/rl_heldout_<preset>.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastalign.bench.environment import environment
from fastalign.bench.report import headless_pyplot, results_dir, save_figure, write_results


@dataclass(frozen=True)
class HeldOutPreset:
    sft_steps: int = 600  # the demo's SFT
    num_train: int = 512
    num_test: int = 128
    rl_steps: int = 600
    prompts_per_step: int = 16
    num_generations: int = 8  # GRPO group size; PPO samples prompts_per_step * num_generations // 2 prompts
    temperature: float = 0.7
    learning_rate: float = 5e-4
    max_new_tokens: int = 10
    ppo_epochs: int = 2
    seed: int = 0


PRESETS = {
    "cpu-tiny": HeldOutPreset(),  # ~5 minutes on 2 cores; the SFT model is already near the ceiling
    # A weaker SFT model (half the steps) leaves RL room to improve.
    "cpu-tiny-sft300": HeldOutPreset(sft_steps=300),
    "cpu-smoke": HeldOutPreset(sft_steps=20, num_train=16, num_test=8, rl_steps=2, prompts_per_step=2,
                               num_generations=2),
}


def _greedy(trainer, prompts: list[str]) -> dict[str, float]:
    from fastalign.data import verify, verify_score
    from fastalign.rollout import generate

    rollout = generate(trainer.generator_model, trainer.tokenizer, prompts, max_new_tokens=16)
    scores = [verify_score(p, c) for p, c in zip(rollout.prompts, rollout.completions)]
    exact = [verify(p, c) for p, c in zip(rollout.prompts, rollout.completions)]
    return {"reward": sum(scores) / len(scores), "exact_match": sum(exact) / len(exact)}


def run(preset: HeldOutPreset) -> tuple[list[dict], dict[str, list[float]]]:
    with tempfile.TemporaryDirectory() as scratch:  # trainers' metrics files; nothing is kept
        return _run(preset, Path(scratch))


def _run(preset: HeldOutPreset, scratch: Path) -> tuple[list[dict], dict[str, list[float]]]:
    from fastalign.app.recipes import load_model, snapshot
    from fastalign.data import make_preference_task, make_sft_task, verify_score
    from fastalign.rollout.rewards import verifier_reward
    from fastalign.train import SFTConfig, SFTTrainer
    from fastalign.train.grpo import GRPOConfig, GRPOTrainer
    from fastalign.train.ppo import PPOConfig, PPOTrainer

    model, tokenizer = load_model("tiny", seed=preset.seed)
    sft_data = make_sft_task(4000, 50, seed=preset.seed)
    sft = SFTTrainer(model, tokenizer, sft_data["train"], SFTConfig(
        output_dir=str(scratch / "sft"), max_steps=preset.sft_steps, learning_rate=3e-3, warmup_steps=20,
        token_budget=1536, seed=preset.seed, progress=False, save_every=0))
    sft.save_checkpoint = lambda: None  # nothing to resume here
    sft.train()
    train_prompts = make_preference_task(preset.num_train, 0, seed=preset.seed + 11)["train"]
    test_prompts = list(make_preference_task(0, preset.num_test, seed=preset.seed + 12)["test"]["prompt"])
    reward = verifier_reward(verify_score)
    common = dict(max_steps=preset.rl_steps, learning_rate=preset.learning_rate,
                  max_new_tokens=preset.max_new_tokens, temperature=preset.temperature, lr_schedule="constant",
                  token_budget=4096, seed=preset.seed, progress=False)
    methods = {
        "grpo": lambda policy: GRPOTrainer(policy, tokenizer, train_prompts, GRPOConfig(
            **common, output_dir=str(scratch / "grpo"), prompts_per_step=preset.prompts_per_step,
            num_generations=preset.num_generations, beta=0.02),
            reward_fn=reward),
        "ppo": lambda policy: PPOTrainer(policy, tokenizer, train_prompts, PPOConfig(
            **common, output_dir=str(scratch / "ppo"),
            prompts_per_step=preset.prompts_per_step * preset.num_generations // 2,
            ppo_epochs=preset.ppo_epochs, kl_coef=0.02), reward_fn=reward),
    }
    rows, curves = [], {}
    for name, build in methods.items():
        trainer = build(snapshot(sft.policy.model).requires_grad_(True).train())
        trainer.save_checkpoint = lambda: None
        before = _greedy(trainer, test_prompts)
        start = time.perf_counter()
        history = trainer.train()
        seconds = time.perf_counter() - start
        after = _greedy(trainer, test_prompts)
        curves[name] = [entry["reward"] for entry in history]
        last = history[-max(1, len(history) // 10):]
        kl_key = "kl" if name == "grpo" else "kl_to_reference"
        rows.append(dict(method=name, steps=preset.rl_steps, train_seconds=seconds,
                         heldout_reward_before=before["reward"], heldout_reward_after=after["reward"],
                         heldout_reward_gain=after["reward"] - before["reward"],
                         heldout_exact_before=before["exact_match"], heldout_exact_after=after["exact_match"],
                         train_sampled_reward_first=history[0]["reward"],
                         train_sampled_reward_last10pct=sum(e["reward"] for e in last) / len(last),
                         final_kl=history[-1][kl_key]))
    return rows, curves


def plot(curves: dict[str, list[float]], rows: list[dict], env: dict, path: Path) -> Path | None:
    plt = headless_pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, curve in curves.items():
        window = max(1, len(curve) // 30)
        smooth = [sum(curve[max(0, i - window + 1): i + 1]) / len(curve[max(0, i - window + 1): i + 1])
                  for i in range(len(curve))]
        axes[0].plot(range(1, len(curve) + 1), smooth, label=name)
    axes[0].set(xlabel="step", ylabel="sampled reward (train prompts)", title="training")
    axes[0].legend()
    names = [row["method"] for row in rows]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [row["heldout_reward_before"] for row in rows], 0.4, label="SFT")
    axes[1].bar([i + 0.2 for i in x], [row["heldout_reward_after"] for row in rows], 0.4, label="after RL")
    axes[1].set(xticks=list(x), xticklabels=names, ylabel="greedy reward (held-out prompts)", ylim=(0, 1),
                title="held-out")
    axes[1].legend()
    fig.suptitle(env.get("device", ""), fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    rows, curves = run(preset)
    env = {**environment(torch.device("cpu")),
           "benchmark": {"name": "rl_heldout", "preset_name": args.preset, **dataclasses.asdict(preset)}}
    out_dir = results_dir(args.out, env, torch.device("cpu"))
    stem = f"rl_heldout_{args.preset}"
    paths = write_results(rows, env, out_dir, stem)
    plot(curves, rows, env, out_dir / f"{stem}.png")
    for row in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    print("wrote", paths["json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
