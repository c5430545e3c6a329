"""What the CLI runs: resolve ``--model`` / ``--data`` / config files, train, save.

``--model tiny`` is the random-init preset with the byte tokenizer (offline); anything else
is loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer``. ``--data synthetic`` is the
embedded verifiable task (its ``test`` split becomes the eval data); anything else goes
through ``fastalign.data.load_*_data``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from fastalign.data import (
    byte_tokenizer,
    load_preference_data,
    load_sft_data,
    make_preference_task,
    make_sft_task,
    verify,
    verify_score,
)
from fastalign.eval import preference_accuracy, reward_win_rate, win_rate
from fastalign.models import PolicyModel, RewardModel, SeparateReference
from fastalign.models.presets import preset_model
from fastalign.rollout.rewards import reward_model_reward, verifier_reward
from fastalign.train.config import DPOConfig, SFTConfig
from fastalign.train.dpo import DPOTrainer
from fastalign.train.grpo import GRPOConfig, GRPOTrainer
from fastalign.train.lifecycle import check_output_dir
from fastalign.train.ppo import PPOConfig, PPOTrainer
from fastalign.train.reward import RewardConfig, RewardTrainer
from fastalign.train.sft import SFTTrainer

# The demo uses the same sizes: the synthetic task's held-out near misses depend on num_train,
# so `fastalign eval --data synthetic` scores the very pairs the demo's table was computed on.
SYNTHETIC_SIZES = {"num_train": 5000, "num_test": 200}


def load_model(name: str, *, seed: int = 0):
    """``(model, tokenizer)`` for ``tiny`` or a local / hub path."""
    if name == "tiny":
        tokenizer = byte_tokenizer()
        model = preset_model("tiny", len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return model, tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except OSError as error:
        raise ValueError(f"--model {name!r} is neither 'tiny' nor a loadable model: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_data(kind: str, source: str, tokenizer, *, seed: int = 0, split: str = "train"):
    """``(train, eval)`` datasets for ``kind`` in ``{"sft", "dpo", "rm"}`` (``rm``: preference data)."""
    if source == "synthetic":
        make = make_sft_task if kind == "sft" else make_preference_task
        task = make(SYNTHETIC_SIZES["num_train"], SYNTHETIC_SIZES["num_test"], seed=seed)
        return task["train"], task["test"]
    load = load_sft_data if kind == "sft" else load_preference_data  # RL: prompts of preference data
    return load(source, split=split, tokenizer=tokenizer), None


def load_reward_model(name: str, *, seed: int = 0):
    """``(model, tokenizer)`` for reward-model training: a saved ``*ForSequenceClassification``
    is loaded as one; ``tiny`` or a causal LM is returned as is (``RewardTrainer`` converts it)."""
    if name != "tiny":
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        try:
            architectures = AutoConfig.from_pretrained(name).architectures or []
        except (OSError, ValueError) as error:
            raise ValueError(f"--model {name!r} is neither 'tiny' nor a loadable model: {error}") from error
        if any(arch.endswith("ForSequenceClassification") for arch in architectures):
            tokenizer = AutoTokenizer.from_pretrained(name)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return AutoModelForSequenceClassification.from_pretrained(name, dtype=torch.float32), tokenizer
    return load_model(name, seed=seed)


TRAINERS = {"sft": (SFTConfig, SFTTrainer), "dpo": (DPOConfig, DPOTrainer), "rm": (RewardConfig, RewardTrainer),
            "ppo": (PPOConfig, PPOTrainer), "grpo": (GRPOConfig, GRPOTrainer)}


def reward_function(data: str, reward_model: str | None, tokenizer, *, seed: int = 0):
    """RL rewards: a trained reward model when given, else the embedded task's graded verifier."""
    if reward_model is not None:
        network, _ = load_reward_model(reward_model, seed=seed)
        return reward_model_reward(RewardModel(network.eval().requires_grad_(False)), tokenizer)
    if data != "synthetic":
        raise ValueError("PPO/GRPO on your own data need --reward-model (a verifier exists only for synthetic)")
    return verifier_reward(verify_score)


def run_training(kind: str, *, model: str, data: str, config: dict[str, Any], eval_data: str | None = None,
                 resume: bool = False, overwrite: bool = False, reward_model: str | None = None) -> Path:
    """Train ``kind`` (``"sft"``, ``"dpo"``, ``"rm"``, ``"ppo"`` or ``"grpo"``) and save the final
    model; returns its path. PPO/GRPO use the prompts of preference data.

    The options and the output directory are checked before anything is loaded or written: an
    output directory holding another run needs ``resume`` or ``overwrite``
    (``RunDirectoryError``)."""
    if kind not in TRAINERS:
        raise ValueError(f"kind must be one of {tuple(TRAINERS)}, got {kind!r}")
    config_class, trainer_class = TRAINERS[kind]
    train_config = config_class.from_dict(config)
    check_output_dir(train_config.output_dir, resume=resume, overwrite=overwrite)
    load = load_reward_model if kind == "rm" else load_model
    network, tokenizer = load(model, seed=train_config.seed)
    train, held_out = load_data(kind, data, tokenizer, seed=train_config.seed)
    if eval_data is not None:
        _, held_out = load_data(kind, eval_data, tokenizer, seed=train_config.seed)
    if kind in ("ppo", "grpo"):
        rewards = reward_function(data, reward_model, tokenizer, seed=train_config.seed)
        trainer = trainer_class(network, tokenizer, train, train_config, reward_fn=rewards, eval_data=held_out)
    else:
        trainer = trainer_class(network, tokenizer, train, train_config, eval_data=held_out)
    try:
        trainer.train(resume=resume, overwrite=overwrite)
        if held_out is not None:
            results = trainer.evaluate()  # every rank takes part (FSDP2 gathers weights)
            if trainer.dist.is_main:
                print({f"eval/{k}": round(v, 4) for k, v in results.items()})
        return trainer.save_model()
    finally:
        trainer.close()  # leaves the process group of a distributed run, also when training failed


def run_eval(*, model: str, baseline: str | None, data: str, reference: str | None = None, beta: float = 0.1,
             max_new_tokens: int = 16, token_budget: int = 2048, seed: int = 0,
             reward_model: str | None = None) -> dict[str, float]:
    """Held-out preference accuracy of ``model`` (implicit-reward accuracy against
    ``reference`` when given) and its win rate against ``baseline``: judged by the verifier on
    the synthetic task, and by ``reward_model`` when given (per ``subset`` column value too,
    e.g. HH's helpful / harmless splits)."""
    network, tokenizer = load_model(model, seed=seed)
    _, held_out = load_data("dpo", data, tokenizer, seed=seed)
    held_out = held_out if held_out is not None else load_preference_data(data, split="test", tokenizer=tokenizer)
    config = DPOConfig(output_dir="unused", token_budget=token_budget, reference="none", progress=False)
    rows = DPOTrainer.pack_rows(held_out, tokenizer, config)
    policy = PolicyModel(network)
    frozen = SeparateReference(load_model(reference, seed=seed)[0]) if reference else None
    result = preference_accuracy(policy, rows, reference=frozen, beta=beta)
    if baseline is not None:
        if data != "synthetic" and reward_model is None:
            raise ValueError("a win rate needs a judge: --reward-model PATH (or --data synthetic for its verifier)")
        other, _ = load_model(baseline, seed=seed)
        prompts = list(held_out["prompt"])
        if data == "synthetic":
            result.update(win_rate(network, other, tokenizer, prompts, verify, max_new_tokens=max_new_tokens))
        if reward_model is not None:
            judge = reward_function(data, reward_model, tokenizer, seed=seed)
            subsets = list(held_out["subset"]) if "subset" in held_out.column_names else None
            result.update(reward_win_rate(network, other, tokenizer, prompts, judge, subsets=subsets,
                                          max_new_tokens=max_new_tokens))
    return result


def snapshot(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy (for baselines in evaluations)."""
    return copy.deepcopy(model).eval().requires_grad_(False)
