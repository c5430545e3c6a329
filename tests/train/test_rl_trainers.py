"""PPO and GRPO trainers: mechanics, KL reporting, configuration errors, and the memory claim
(no full-vocabulary logits in the PPO training pass)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastalign.app.recipes import load_model
from fastalign.data import byte_tokenizer, make_preference_task, verify, verify_score
from fastalign.ops.chunked_torch import chunk_rows
from fastalign.packing import pack_completion_examples
from fastalign.rollout.rewards import verifier_reward
from fastalign.testing import AllocationRecorder
from fastalign.train.grpo import GRPOConfig, GRPOTrainer
from fastalign.train.ppo import PPOConfig, PPOTrainer


def _task():
    return make_preference_task(64, 16, seed=3)


def test_grpo_runs_and_reports_kl(tmp_path):
    model, tokenizer = load_model("tiny", seed=0)
    config = GRPOConfig(output_dir=str(tmp_path), max_steps=3, learning_rate=1e-3, num_generations=4,
                        prompts_per_step=4, max_new_tokens=6, beta=0.04, token_budget=512, progress=False)
    trainer = GRPOTrainer(model, tokenizer, _task()["train"], config, reward_fn=verifier_reward(verify_score),
                          eval_data=_task()["test"])
    history = trainer.train()
    assert [entry["step"] for entry in history] == [1, 2, 3]
    for entry in history:
        assert entry["sequences"] == 16 and 0.0 <= entry["reward"] <= 1.0
        assert math.isfinite(entry["loss"]) and 0.0 <= entry["kl"] < 1.0
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6), "the first step samples from the reference itself"
    assert 0.0 <= trainer.evaluate()["reward"] <= 1.0


def _small_ppo(output_dir, max_steps: int, verifier, **overrides) -> PPOTrainer:
    """Tiny PPO: 8 prompts per rollout, 2 PPO epochs, adaptive KL."""
    model, tokenizer = load_model("tiny", seed=0)
    config = PPOConfig(output_dir=str(output_dir), max_steps=max_steps, learning_rate=1e-3, prompts_per_step=8,
                       max_new_tokens=6, ppo_epochs=2, kl_coef=0.05, kl_target=0.1, token_budget=512,
                       progress=False, **overrides)
    return PPOTrainer(model, tokenizer, _task()["train"], config, reward_fn=verifier_reward(verifier))


def test_ppo_runs_reuses_rollouts_and_reports_kl(tmp_path):
    trainer = _small_ppo(tmp_path, 4, verify)
    config = trainer.config
    history = trainer.train()
    assert len(history) == 4
    # Steps 1-2 share one rollout, steps 3-4 the next: same reward and KL within a pair.
    assert history[0]["reward"] == history[1]["reward"] and history[2]["kl_to_reference"] == history[3]["kl_to_reference"]
    assert history[0]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(e["value_loss"]) and 0 <= e["clip_fraction"] <= 1 for e in history)
    assert history[1]["clip_fraction"] >= 0.0 and history[2]["kl_coef"] != config.kl_coef  # adaptive controller moved
    saved = trainer.save_model()
    assert (saved / "config.json").is_file()


def test_ppo_resume_mid_rollout_continues_on_the_same_samples(tmp_path):
    """Interrupted after the first PPO epoch of a rollout, the resumed run trains its second
    epoch on the stored rollout (same samples, same KL coefficient) — as if never stopped."""

    def trainer(output_dir, steps):
        return _small_ppo(output_dir, steps, verify_score, lr_schedule="constant")

    uninterrupted = trainer(tmp_path / "whole", 4).train()
    trainer(tmp_path / "cut", 3).train()  # step 3 = first epoch of the second rollout; checkpoint at 3
    resumed = trainer(tmp_path / "cut", 4).train(resume=True)
    assert [entry["step"] for entry in resumed] == [1, 2, 3, 4]
    for key in ("reward", "kl_to_reference", "kl_coef", "completion_length"):
        assert resumed[3][key] == uninterrupted[3][key], key
    for key in ("loss", "value_loss", "grad_norm"):
        assert resumed[3][key] == pytest.approx(uninterrupted[3][key], rel=1e-5), key


def test_rl_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOConfig(output_dir=str(tmp_path), num_generations=1).validate()
    with pytest.raises(ValueError, match="kl_estimator must be one of"):
        PPOConfig(output_dir=str(tmp_path), kl_estimator="k9").validate()
    model, tokenizer = load_model("tiny")
    with pytest.raises(ValueError, match="reward_fn must be a callable"):
        GRPOTrainer(model, tokenizer, _task()["train"], GRPOConfig(output_dir=str(tmp_path)), reward_fn=None)
    with pytest.raises(ValueError, match="'prompt' column"):
        PPOTrainer(model, tokenizer, _task()["train"].rename_column("prompt", "question"),
                   PPOConfig(output_dir=str(tmp_path)), reward_fn=verifier_reward(verify))


def test_ppo_training_pass_never_materializes_vocab_logits(tmp_path):
    vocab = 65_536
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    trainer = PPOTrainer(model, byte_tokenizer(), _task()["train"], PPOConfig(output_dir=str(tmp_path), token_budget=4096,
                         progress=False), reward_fn=verifier_reward(verify))
    generator = torch.Generator().manual_seed(0)
    count = 128  # 2560 scored tokens: whole-vocabulary logits would be 5 of the op's chunks
    prompts = [torch.randint(0, vocab, (12,), generator=generator).tolist() for _ in range(count)]
    answers = [torch.randint(0, vocab, (20,), generator=generator).tolist() for _ in range(count)]
    rows = pack_completion_examples(prompts, answers, token_budget=4096)
    scored = sum(row.targets.numel() for row in rows)
    rewards = torch.rand(count, generator=generator)
    trainer._rollout = dict(rows=list(rows), prepared=trainer._prepare(list(rows), rewards), rewards=rewards,
                            kl=0.0, epochs_left=1, lengths=20.0)
    with AllocationRecorder() as recorder:
        trainer.accumulate(list(rows))
    assert recorder.largest_numel <= chunk_rows(vocab) * vocab, (recorder.largest_numel, recorder.largest_op)
    assert chunk_rows(vocab) * vocab < scored * vocab // 4
    assert all(p.grad is not None for p in trainer.policy.actor.parameters() if p.requires_grad)


def test_cli_trains_ppo_with_the_verifier_and_grpo_with_a_reward_model(tmp_path):
    from fastalign.cli import main

    small = ["--max-steps", "1", "progress=false", "token_budget=512", "prompts_per_step=2", "max_new_tokens=4"]
    assert main(["train", "rm", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "rm"),
                 "--max-steps", "2", "progress=false", "token_budget=512"]) == 0
    assert main(["train", "grpo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "grpo"),
                 "--reward-model", str(tmp_path / "rm" / "final"), "num_generations=2", *small]) == 0
    assert main(["train", "ppo", "--model", "tiny", "--data", "synthetic", "--output-dir", str(tmp_path / "ppo"),
                 *small]) == 0
    for name in ("grpo", "ppo"):
        assert (tmp_path / name / "final" / "config.json").is_file()
        assert len((tmp_path / name / "metrics.jsonl").read_text().splitlines()) == 1


def _greedy_reward(trainer) -> float:
    return trainer.evaluate()["reward"]


def _train_on_fixed_prompts(trainer_class, config, sft_run) -> tuple[float, list[dict], float]:
    """Greedy verifier reward of a copy of the SFT model on 16 fixed prompts, the training
    history on those prompts, and the greedy reward after."""
    from fastalign.app.recipes import snapshot

    prompts = make_preference_task(16, 0, seed=5)["train"]
    policy = snapshot(sft_run["model"]).requires_grad_(True).train()
    trainer = trainer_class(policy, sft_run["tokenizer"], prompts, config, reward_fn=verifier_reward(verify_score),
                            eval_data=prompts)
    before = _greedy_reward(trainer)
    history = trainer.train()
    return before, history, _greedy_reward(trainer)


def test_grpo_raises_the_verifier_reward_over_the_sft_model(sft_run, tmp_path):
    """On a fixed set of 16 prompts (train = eval: RL optimizes the reward it is given),
    25 GRPO steps raise the graded verifier's reward of greedy answers by a real margin, with
    the KL to the SFT reference reported and bounded."""
    config = GRPOConfig(output_dir=str(tmp_path), max_steps=25, learning_rate=2e-4, num_generations=8,
                        prompts_per_step=8, max_new_tokens=10, beta=0.04, token_budget=4096, lr_schedule="constant",
                        seed=0, progress=False)
    before, history, after = _train_on_fixed_prompts(GRPOTrainer, config, sft_run)
    print(f"GRPO greedy reward {before:.3f} -> {after:.3f}; KL {history[-1]['kl']:.3f}")
    assert after >= before + 0.08, (before, after)
    assert all(0.0 <= entry["kl"] < 1.0 for entry in history)


def test_ppo_raises_the_verifier_reward_over_the_sft_model(sft_run, tmp_path):
    """The same fixed-prompt check for PPO (fresh value head, 4 PPO epochs per rollout)."""
    config = PPOConfig(output_dir=str(tmp_path), max_steps=32, learning_rate=2e-4, prompts_per_step=64, ppo_epochs=4,
                       max_new_tokens=10, kl_coef=0.02, token_budget=4096, lr_schedule="constant", seed=0,
                       progress=False)
    before, history, after = _train_on_fixed_prompts(PPOTrainer, config, sft_run)
    print(f"PPO greedy reward {before:.3f} -> {after:.3f}; KL {history[-1]['kl_to_reference']:.3f}")
    assert after >= before + 0.04, (before, after)
    assert all(abs(entry["kl_to_reference"]) < 1.0 for entry in history)
