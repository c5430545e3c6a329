"""Trainer configurations: every hyper-parameter in one dataclass per method (SFT, DPO, reward
model, PPO, GRPO), validated. Every config class of fastalign lives here.

Each field is declared with ``option(default, group, help)``: its one line of help and its
group are what ``fastalign train KIND --help`` prints (``fastalign/cli_help.py``), so the
dataclass is the one place an option is documented. This module imports no torch: the CLI's
help reads it in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from fastalign.choices import (
    ADVANTAGE_SCALING,
    AGGREGATIONS,
    KL_ESTIMATORS,
    LOSS_TYPES,
    ON_NONFINITE,
    PROMPT_BOUNDARIES,
    REFERENCE_FREE_LOSSES,
)
from fastalign.train.options import coerce_fields, option

REFERENCES = ("separate", "adapter", "precomputed", "none")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    """What every trainer shares.

    A step accumulates ``rows_per_step`` packed rows of at most ``token_budget`` tokens each,
    or (``pairs_per_step`` / ``examples_per_step``, see ``step_examples()``) that many examples
    packed into as many rows as the budget needs; losses are normalized by the step's total
    pair (DPO) or token (SFT) count, so the result does not depend on how examples fall into rows.
    """

    # -- model ----------------------------------------------------------------------------
    device: str = option("auto", "model", "auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "model", "compute dtype: auto (bf16 autocast on CUDA, fp32 on CPU), float32, bfloat16")
    gradient_checkpointing: bool = option(False, "model", "recompute decoder layers in backward (less memory)")
    lora_r: int = option(0, "model", "> 0: train LoRA adapters of this rank (needs peft) instead of all weights")
    lora_alpha: float = option(16.0, "model", "LoRA scaling numerator (scale = lora_alpha / lora_r)")
    lora_target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "model",
                                            "module names that get LoRA adapters")
    attention: str = option("auto", "model", "packed attention backend: auto, flash, torch_varlen, flex, sdpa, eager")
    mlp_tile_tokens: int = option(0, "model", "run each layer's MLP over tiles of this many tokens (long rows; 0: off)")
    offload_checkpoints: bool = option(False, "model", "keep checkpointed layer inputs in pinned host memory "
                                                       "(CUDA, needs gradient_checkpointing)")
    # -- data -----------------------------------------------------------------------------
    token_budget: int = option(2048, "data", "tokens per packed row (several examples share a row, no padding)")
    rows_per_step: int = option(1, "data", "packed rows per optimizer step (gradient accumulation)")
    max_prompt_length: int | None = option(None, "data", "longest prompt in tokens (None: no limit)")
    max_completion_length: int | None = option(None, "data", "longest answer in tokens (None: no limit)")
    max_length: int | None = option(None, "data", "longest example (P+C+R); over token_budget gets a row of its own "
                                                  "(None: token_budget)")
    on_overflow: str = option("truncate", "data", "an example over the limits: truncate, drop (logged) or error")
    prompt_boundary: str = option("joint", "data", "SFT, DPO, reward text data: where the prompt ends: joint (TRL's rule: "
                                                   "the common prefix of prompt+answer tokenizations) or separate "
                                                   "(prompt and answers tokenized on their own)")
    # -- optimization ---------------------------------------------------------------------
    max_steps: int = option(100, "optimization", "optimizer steps to run")
    learning_rate: float = option(1e-5, "optimization", "peak AdamW learning rate")
    lr_schedule: str = option("cosine", "optimization", "after warmup: cosine, linear or constant")
    warmup_steps: int = option(0, "optimization", "steps of linear warmup from 0")
    min_lr_ratio: float = option(0.0, "optimization", "final learning rate as a fraction of the peak (in [0, 1])")
    weight_decay: float = option(0.0, "optimization", "AdamW weight decay")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "optimization", "AdamW betas [b1, b2]")
    max_grad_norm: float | None = option(1.0, "optimization", "clip the gradient norm to this (None: no clipping)")
    # -- run ------------------------------------------------------------------------------
    strategy: str = option("auto", "run", "under torchrun: ddp or fsdp2 (auto: ddp with several processes), none")
    sequence_parallel: int = option(1, "run", "split each packed row over this many ranks (Ulysses; DPO under "
                                              "torchrun with ddp)")
    output_dir: str = option("fastalign-output", "run", "metrics.jsonl, checkpoints/ and final/ go here")
    seed: int = option(0, "run", "seeds the model init (tiny), data order and sampling")
    log_every: int = option(0, "run", "steps between progress updates (bar metrics; one line when stderr is not "
                                      "a terminal); 0: about 20 a run")
    progress: bool = option(True, "run", "progress bars and lines (false: silent but for the end-of-run summary)")
    eval_every: int = option(0, "run", "steps between evaluations on the eval data (0: only at the end)")
    save_every: int = option(500, "run", "steps between checkpoints (0: off)")
    save_every_minutes: float = option(30.0, "run", "also checkpoint when this many minutes passed (0: off)")
    keep_last: int = option(2, "run", "checkpoints kept (the newest)")
    save_final_state: bool = option(True, "run", "end-of-run checkpoint with optimizer state, for --resume "
                                                 "(false: only final/)")
    on_nonfinite: str = option("stop", "run", "a NaN/inf loss or gradient: stop the run, or skip the step")
    max_nonfinite_skips: int = option(10, "run", "on_nonfinite=skip: stop after this many skipped steps in a row")

    def validate(self) -> None:
        """Check (and convert, e.g. ``adam_betas`` list → tuple) every field: ``ValueError``
        naming the first bad one."""
        for name, value in coerce_fields(type(self), dataclasses.asdict(self)).items():
            setattr(self, name, value)
        for name in ("max_steps", "learning_rate", "rows_per_step", "token_budget", "keep_last", "max_nonfinite_skips"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "save_every_minutes", "lora_r", "weight_decay",
                     "mlp_tile_tokens", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_prompt_length", "max_completion_length", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be None or > 0, got {value!r}")
        if self.max_length is not None and self.max_length < self.token_budget:
            raise ValueError(f"max_length must be None or >= token_budget ({self.token_budget}), got {self.max_length}")
        if self.sequence_parallel < 1:
            raise ValueError(f"sequence_parallel must be >= 1, got {self.sequence_parallel}")
        if self.offload_checkpoints and not self.gradient_checkpointing:
            raise ValueError("offload_checkpoints=True needs gradient_checkpointing=True (it moves the checkpointed "
                             "layer inputs)")
        if self.offload_checkpoints and self.device in ("cpu", "mps"):
            raise ValueError(f"offload_checkpoints=True needs a CUDA device, got device={self.device!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0.0 <= beta < 1.0 for beta in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {list(self.adam_betas)}")
        if self.lora_r > 0 and not self.lora_target_modules:
            raise ValueError("lora_target_modules must name at least one module when lora_r > 0")
        if not DEVICE.match(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("on_overflow", self.on_overflow, ("error", "drop", "truncate"))
        _choice("strategy", self.strategy, ("auto", "none", "ddp", "fsdp2"))
        _choice("on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _choice("prompt_boundary", self.prompt_boundary, PROMPT_BOUNDARIES)
        if not self.output_dir.strip():
            raise ValueError("output_dir must be a non-empty path")
        examples = self.step_examples()
        if examples is not None and self.rows_per_step != 1:
            raise ValueError(f"set either rows_per_step or {self.step_examples_option()}, not both "
                             f"(got rows_per_step={self.rows_per_step}, {self.step_examples_option()}={examples})")

    def step_examples(self) -> int | None:
        """Examples per optimizer step when the config sets a count (``pairs_per_step``,
        ``examples_per_step``); ``None``: steps are ``rows_per_step`` packed rows."""
        return None

    def step_examples_option(self) -> str:
        """The option that sets ``step_examples()`` (for messages)."""
        return "examples_per_step"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from a mapping (YAML file, CLI overrides): each value is checked against its
        field's type (``ValueError`` naming the option); unknown keys are an error that names
        the close matches."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.__name__} options must be a mapping, got {type(values).__name__}")
        config = cls(**coerce_fields(cls, values))
        config.validate()
        return config


def _check_count(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be None or >= 1, got {value!r}")


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on completions (token-mean NLL over completion tokens)."""

    learning_rate: float = 1e-4
    examples_per_step: int | None = option(None, "data", "prompt-completion examples per step, packed into as many "
                                                         "rows as token_budget needs (instead of rows_per_step)")

    def validate(self) -> None:
        _check_count("examples_per_step", self.examples_per_step)
        super().validate()

    def step_examples(self) -> int | None:
        return self.examples_per_step


PAIRS_HELP = "preference pairs per step, packed into as many rows as token_budget needs (instead of rows_per_step)"


@dataclass
class DPOConfig(TrainConfig):
    """Direct preference optimization and its relatives.

    ``loss_type``: a DPO-family loss of ``fastalign.losses.dpo_loss`` (or a list, MPO-style,
    with ``loss_weights``), or a reference-free ``"simpo"``, ``"cpo"``, ``"orpo"``.
    ``reference``: ``separate`` (frozen copy of the initial model), ``adapter`` (the PEFT model
    with adapters disabled; needs ``lora_r > 0``), ``precomputed`` (reference log-probs computed
    once before training), ``none`` (reference-free losses).
    """

    pairs_per_step: int | None = option(None, "data", PAIRS_HELP)
    beta: float = option(0.1, "method", "strength of the implicit KL to the reference (larger: stay closer)")
    loss_type: str | list[str] = option("sigmoid", "method", f"one of {', '.join(LOSS_TYPES + REFERENCE_FREE_LOSSES)}; "
                                                             "or a list (MPO) with loss_weights")
    loss_weights: list[float] | None = option(None, "method", "weights of a list of loss types (None: all 1)")
    label_smoothing: float = option(0.0, "method", "cDPO: assumed probability that a pair's labels are flipped")
    rpo_alpha: float | None = option(None, "method", "RPO: add this times the chosen answers' NLL (None: off)")
    simpo_gamma: float = option(0.5, "method", "SimPO's target reward margin")
    reference: str = option("separate", "method", "reference model: separate (frozen copy), adapter (LoRA off), "
                                                  "precomputed, none")
    offload_reference: bool = option(False, "method", "fsdp2: keep the frozen reference's shards in CPU memory")
    reference_first: bool = option(True, "method", "run the reference forward before the policy's (less memory, "
                                                   "same numbers)")

    def validate(self) -> None:
        _check_count("pairs_per_step", self.pairs_per_step)
        super().validate()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        _choice("reference", self.reference, REFERENCES)
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if not types:
            raise ValueError("loss_type must name at least one loss")
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(types)} loss types")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        for name in ("rpo_alpha", "simpo_gamma"):
            if (getattr(self, name) or 0.0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in types:
            _choice("loss_type", name, LOSS_TYPES + REFERENCE_FREE_LOSSES)
        free = [name for name in types if name in REFERENCE_FREE_LOSSES]
        if free and len(types) > 1:
            raise ValueError(f"loss_type {free[0]!r} cannot be combined with other losses")
        if free and self.reference != "none":
            raise ValueError(f"loss_type {free[0]!r} is reference-free: set reference='none'")
        if self.reference == "adapter" and self.lora_r == 0:
            raise ValueError("reference='adapter' needs LoRA adapters: set lora_r > 0")

    def step_examples(self) -> int | None:
        return self.pairs_per_step

    def step_examples_option(self) -> str:
        return "pairs_per_step"


@dataclass
class RewardConfig(TrainConfig):
    """Reward-model training: ``-log σ(r_c − r_r − m) + c (r_c + r_r)²`` per pair, normalized by
    the step's total pair count (``fastalign.losses.bradley_terry_loss``).

    ``margin``: a constant ``m`` for every pair; a ``margin`` column in the data (Llama 2's graded
    preference margins) is added to it per pair. ``center_rewards_coefficient``: ``c`` (None: off).
    """

    learning_rate: float = 1e-5
    pairs_per_step: int | None = option(None, "data", PAIRS_HELP)
    margin: float = option(0.0, "method", "margin m added to every pair (plus the data's margin column, if any)")
    center_rewards_coefficient: float | None = option(None, "method", "c of the reward-centering term c (r_c + r_r)^2 "
                                                                      "(None: off)")

    def validate(self) -> None:
        _check_count("pairs_per_step", self.pairs_per_step)
        super().validate()
        c = self.center_rewards_coefficient
        if c is not None and c < 0:
            raise ValueError(f"center_rewards_coefficient must be None or a finite number >= 0, got {c!r}")

    def step_examples(self) -> int | None:
        return self.pairs_per_step

    def step_examples_option(self) -> str:
        return "pairs_per_step"


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# -- RL trainers (PPO, GRPO) ------------------------------------------------------------------
@dataclass
class RolloutConfig(TrainConfig):
    """Sampling options shared by PPO and GRPO."""

    learning_rate: float = 1e-5
    prompts_per_step: int = option(8, "data", "prompts sampled per optimizer step (rollout batch)")
    max_new_tokens: int = option(32, "method", "longest sampled completion in tokens")
    temperature: float = option(1.0, "method", "sampling temperature (the loss scores tokens at the same temperature)")
    top_p: float = option(1.0, "method", "nucleus sampling: keep the smallest token set of this probability")
    generation_batch_size: int = option(64, "method", "prompts per generate() call")

    def validate(self) -> None:
        super().validate()
        for name in ("prompts_per_step", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass
class PPOConfig(RolloutConfig):
    """PPO with a critic: clipped surrogate, clipped value loss, KL-shaped rewards, GAE."""

    ppo_epochs: int = option(2, "method", "optimizer passes over each rollout batch")
    clip_eps: float = option(0.2, "method", "clip range of the policy ratio")
    value_clip_eps: float | None = option(0.2, "method", "clip range of the value update (None: unclipped)")
    vf_coef: float = option(0.5, "method", "weight of the value loss")
    entropy_coef: float = option(0.0, "method", "weight of the entropy bonus")
    kl_coef: float = option(0.05, "method", "per-token KL penalty to the reference in the reward")
    kl_estimator: str = option("k1", "method", f"KL estimator of the penalty: {', '.join(KL_ESTIMATORS)}")
    kl_target: float | None = option(None, "method", "adaptive KL controller's target (None: fixed kl_coef)")
    kl_horizon: int = option(10_000, "method", "adaptive KL controller's horizon in samples")
    gamma: float = option(1.0, "method", "GAE discount")
    lam: float = option(0.95, "method", "GAE lambda")
    whiten_advantages: bool = option(True, "method", "normalize advantages to mean 0, std 1 per rollout")

    def validate(self) -> None:
        super().validate()
        if self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        for name in ("vf_coef", "entropy_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target must be None or > 0, got {self.kl_target}")
        if self.value_clip_eps is not None and self.value_clip_eps <= 0:
            raise ValueError(f"value_clip_eps must be None or > 0, got {self.value_clip_eps}")
        if self.kl_horizon < 1:
            raise ValueError(f"kl_horizon must be >= 1, got {self.kl_horizon}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)


@dataclass
class GRPOConfig(RolloutConfig):
    """``beta``: weight of the k3 KL-to-reference loss term (0: no reference model at all)."""

    num_generations: int = option(8, "method", "completions sampled per prompt (one group)")
    beta: float = option(0.04, "method", "weight of the k3 KL-to-reference loss term (0: no reference model)")
    clip_eps: float = option(0.2, "method", "clip range of the policy ratio")
    clip_eps_high: float | None = option(None, "method", "upper clip range (DAPO's clip-higher; None: clip_eps)")
    scale_rewards: str = option("std", "method", f"group advantages: {' or '.join(ADVANTAGE_SCALING)} "
                                                 "(none: Dr. GRPO)")
    aggregation: str = option("seq_mean_token_mean", "method", f"loss reduction: {', '.join(AGGREGATIONS)}")

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations!r}")
        if self.num_generations < 2 and self.scale_rewards == "std":
            raise ValueError("num_generations must be >= 2 to normalize rewards within a group")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            raise ValueError(f"clip_eps_high must be None or > 0, got {self.clip_eps_high}")
        _choice("scale_rewards", self.scale_rewards, ADVANTAGE_SCALING)
        _choice("aggregation", self.aggregation, AGGREGATIONS)

