"""What the CLI runs: resolve ``--model`` / ``--data`` / config files, train, save.

``--model tiny`` is the random-init preset with the byte tokenizer (offline); anything else
is loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer``. ``--data synthetic`` is the
embedded verifiable task (its ``test`` split becomes the eval data); anything else goes
through ``fastalign.data.load_*_data``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from fastalign.app.demo_settings import SYNTHETIC_SIZES
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
from fastalign.train.progress import format_summary, library_bars, show_bars
from fastalign.train.reward import RewardConfig, RewardTrainer
from fastalign.train.sft import SFTTrainer

MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def loading_options(dtype: str = "float32", revision: str | None = None, trust_remote_code: bool = False) -> dict:
    """``from_pretrained`` keywords of the CLI's ``--dtype`` / ``--revision`` /
    ``--trust-remote-code``, checked (``ValueError`` naming the flag)."""
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"--dtype must be one of {tuple(MODEL_DTYPES)}, got {dtype!r}")
    if revision is not None and (not isinstance(revision, str) or not revision.strip() or "\x00" in revision):
        raise ValueError(f"--revision must be a non-empty branch, tag or commit, got {revision!r}")
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be a bool, got {type(trust_remote_code).__name__}")
    return {"dtype": MODEL_DTYPES[dtype], "revision": revision, "trust_remote_code": trust_remote_code}


def load_model(name: str, *, seed: int = 0, dtype: str = "float32", revision: str | None = None,
               trust_remote_code: bool = False):
    """``(model, tokenizer)`` for ``tiny`` or a local / hub path, weights in ``dtype``
    (``auto``: the checkpoint's own). ``revision`` picks a hub branch, tag or commit;
    ``trust_remote_code`` lets a model's own code run (models that need it are refused
    without)."""
    options = loading_options(dtype, revision, trust_remote_code)
    if name == "tiny":
        tokenizer = byte_tokenizer()
        model = preset_model("tiny", len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return (model if dtype == "auto" else model.to(options["dtype"])), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **hub)
        model = AutoModelForCausalLM.from_pretrained(name, **options)
    except OSError as error:
        raise ValueError(f"--model {name!r} is neither 'tiny' nor a loadable model: {_one_line(error)}") from error
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ValueError(f"--model {name!r} runs its own Python code when loaded: pass --trust-remote-code "
                             "(trust_remote_code=True) if you trust its source") from error
        raise ValueError(f"--model {name!r} cannot be loaded: {_one_line(error)}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def load_data(kind: str, source: str, tokenizer, *, seed: int = 0, split: str = "train"):
    """``(train, eval)`` datasets for ``kind`` in ``{"sft", "dpo", "rm"}`` (``rm``: preference data)."""
    if source == "synthetic":
        make = make_sft_task if kind == "sft" else make_preference_task
        task = make(SYNTHETIC_SIZES["num_train"], SYNTHETIC_SIZES["num_test"], seed=seed)
        return task["train"], task["test"]
    load = load_sft_data if kind == "sft" else load_preference_data  # RL: prompts of preference data
    return load(source, split=split, tokenizer=tokenizer), None


def load_reward_model(name: str, *, seed: int = 0, dtype: str = "float32", revision: str | None = None,
                      trust_remote_code: bool = False):
    """``(model, tokenizer)`` for reward-model training: a saved ``*ForSequenceClassification``
    is loaded as one; ``tiny`` or a causal LM is returned as is (``RewardTrainer`` converts it).
    The loading options are ``load_model``'s."""
    options = loading_options(dtype, revision, trust_remote_code)
    if name != "tiny":
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        hub = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            architectures = AutoConfig.from_pretrained(name, **hub).architectures or []
        except (OSError, ValueError) as error:
            raise ValueError(f"--model {name!r} is neither 'tiny' nor a loadable model: {_one_line(error)}") from error
        if any(arch.endswith("ForSequenceClassification") for arch in architectures):
            tokenizer = AutoTokenizer.from_pretrained(name, **hub)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return AutoModelForSequenceClassification.from_pretrained(name, **options), tokenizer
    return load_model(name, seed=seed, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)


TRAINERS = {"sft": (SFTConfig, SFTTrainer), "dpo": (DPOConfig, DPOTrainer), "rm": (RewardConfig, RewardTrainer),
            "ppo": (PPOConfig, PPOTrainer), "grpo": (GRPOConfig, GRPOTrainer)}


def reward_function(data: str, reward_model: str | None, tokenizer, *, seed: int = 0, dtype: str = "float32",
                    trust_remote_code: bool = False):
    """RL rewards: a trained reward model when given, else the embedded task's graded verifier."""
    if reward_model is not None:
        network, _ = load_reward_model(reward_model, seed=seed, dtype=dtype, trust_remote_code=trust_remote_code)
        return reward_model_reward(RewardModel(network.eval().requires_grad_(False)), tokenizer)
    if data != "synthetic":
        raise ValueError("PPO/GRPO on your own data need --reward-model (a verifier exists only for synthetic)")
    return verifier_reward(verify_score)


def run_training(kind: str, *, model: str, data: str, config: dict[str, Any], eval_data: str | None = None,
                 resume: bool = False, overwrite: bool = False, reward_model: str | None = None,
                 loading: dict[str, Any] | None = None) -> Path:
    """Train ``kind`` (``"sft"``, ``"dpo"``, ``"rm"``, ``"ppo"`` or ``"grpo"``), save the final
    model and print the run's summary; returns the model's path. PPO/GRPO use the prompts of
    preference data. ``loading``: ``load_model``'s ``dtype`` / ``revision`` /
    ``trust_remote_code`` for ``model`` (the reward model gets the dtype and trust setting).

    The options and the output directory are checked before anything is loaded or written: an
    output directory holding another run needs ``resume`` or ``overwrite``
    (``RunDirectoryError``)."""
    if kind not in TRAINERS:
        raise ValueError(f"kind must be one of {tuple(TRAINERS)}, got {kind!r}")
    loading = dict(loading or {})
    loading_options(**loading)  # bad loading options: refused before anything is written
    config_class, trainer_class = TRAINERS[kind]
    train_config = config_class.from_dict(config)
    check_output_dir(train_config.output_dir, resume=resume, overwrite=overwrite)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks
    load = load_reward_model if kind == "rm" else load_model
    with library_bars(show_bars(train_config.progress and main)):  # loading and data preparation bars
        network, tokenizer = load(model, seed=train_config.seed, **loading)
        train, held_out = load_data(kind, data, tokenizer, seed=train_config.seed)
        if eval_data is not None:
            _, held_out = load_data(kind, eval_data, tokenizer, seed=train_config.seed)
    if kind in ("ppo", "grpo"):
        rewards = reward_function(data, reward_model, tokenizer, seed=train_config.seed,
                                  dtype=loading.get("dtype", "float32"),
                                  trust_remote_code=loading.get("trust_remote_code", False))
        trainer = trainer_class(network, tokenizer, train, train_config, reward_fn=rewards, eval_data=held_out)
    else:
        trainer = trainer_class(network, tokenizer, train, train_config, eval_data=held_out)
    try:
        trainer.train(resume=resume, overwrite=overwrite)
        results = trainer.evaluate() if held_out is not None else None  # every rank takes part (FSDP2)
        path = trainer.save_model()
        if trainer.dist.is_main:
            print(format_summary(f"fastalign train {kind}", trainer.summary(model_path=path, evaluation=results)))
        return path
    finally:
        trainer.close()  # leaves the process group of a distributed run, also when training failed


def run_eval(*, model: str, baseline: str | None, data: str, reference: str | None = None, beta: float = 0.1,
             max_new_tokens: int = 16, token_budget: int = 2048, seed: int = 0,
             reward_model: str | None = None, loading: dict[str, Any] | None = None) -> dict[str, float]:
    """Held-out preference accuracy of ``model`` (implicit-reward accuracy against
    ``reference`` when given) and its win rate against ``baseline``: judged by the verifier on
    the synthetic task, and by ``reward_model`` when given (per ``subset`` column value too,
    e.g. HH's helpful / harmless splits). ``loading``: ``load_model``'s options for ``model``;
    the other models get its ``dtype`` and ``trust_remote_code``."""
    loading = dict(loading or {})
    others = {key: loading[key] for key in ("dtype", "trust_remote_code") if key in loading}
    network, tokenizer = load_model(model, seed=seed, **loading)
    _, held_out = load_data("dpo", data, tokenizer, seed=seed)
    held_out = held_out if held_out is not None else load_preference_data(data, split="test", tokenizer=tokenizer)
    config = DPOConfig(output_dir="unused", token_budget=token_budget, reference="none", progress=False)
    rows = DPOTrainer.pack_rows(held_out, tokenizer, config)
    policy = PolicyModel(network)
    frozen = SeparateReference(load_model(reference, seed=seed, **others)[0]) if reference else None
    result = preference_accuracy(policy, rows, reference=frozen, beta=beta)
    if baseline is not None:
        if data != "synthetic" and reward_model is None:
            raise ValueError("a win rate needs a judge: --reward-model PATH (or --data synthetic for its verifier)")
        other, _ = load_model(baseline, seed=seed, **others)
        prompts = list(held_out["prompt"])
        if data == "synthetic":
            result.update(win_rate(network, other, tokenizer, prompts, verify, max_new_tokens=max_new_tokens))
        if reward_model is not None:
            judge = reward_function(data, reward_model, tokenizer, seed=seed, **others)
            subsets = list(held_out["subset"]) if "subset" in held_out.column_names else None
            result.update(reward_win_rate(network, other, tokenizer, prompts, judge, subsets=subsets,
                                          max_new_tokens=max_new_tokens))
    return result


def snapshot(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy (for baselines in evaluations)."""
    return copy.deepcopy(model).eval().requires_grad_(False)
