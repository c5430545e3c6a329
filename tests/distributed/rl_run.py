"""PPO / GRPO runs of the tiny preset for the distributed tests (torchrun or one process).

    python -m torch.distributed.run --standalone --nproc-per-node 2 rl_run.py KIND OUT STRATEGY STEPS

Sampling keeps only the most likely token (``top_p`` tiny) and generates one prompt at a time,
so rollouts do not depend on how prompts are split over ranks and a DDP run can be compared with
a single-process one. Rank 0 writes OUT/history.json.
"""

from __future__ import annotations

import sys

import torch

from fastalign.app.recipes import load_model
from fastalign.data import make_preference_task
from fastalign.train.grpo import GRPOConfig, GRPOTrainer
from fastalign.train.ppo import PPOConfig, PPOTrainer
from tests.distributed.dpo_run import finish


def checksum_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A deterministic reward in [0, 1] that varies across the completions of a random model."""
    return [(sum(map(ord, text)) % 11) / 10 for text in completions]


def make_trainer(kind: str, output_dir: str, strategy: str, max_steps: int):
    model, tokenizer = load_model("tiny", seed=0)
    prompts = make_preference_task(num_train=16, num_test=0, seed=3)["train"]
    common = dict(output_dir=output_dir, strategy=strategy, max_steps=max_steps, prompts_per_step=4, max_new_tokens=6,
                  top_p=1e-6, generation_batch_size=1, token_budget=256, learning_rate=1e-3, lr_schedule="constant",
                  device="cpu", progress=False, seed=0)
    if kind == "ppo":
        config = PPOConfig(**common, ppo_epochs=2, kl_coef=0.05)
        return PPOTrainer(model, tokenizer, prompts, config, reward_fn=checksum_reward)
    config = GRPOConfig(**common, num_generations=2, beta=0.04, scale_rewards="none")
    return GRPOTrainer(model, tokenizer, prompts, config, reward_fn=checksum_reward)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    kind, out, strategy, steps = argv[0], argv[1], argv[2], int(argv[3])
    trainer = make_trainer(kind, out, strategy, steps)
    finish(trainer, trainer.train(), out)


if __name__ == "__main__":
    main(sys.argv[1:])
