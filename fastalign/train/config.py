"""Trainer configurations: every hyper-parameter in one dataclass per method, validated."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from fastalign.losses.preference import LOSS_TYPES
from fastalign.train.nonfinite import ON_NONFINITE
from fastalign.train.options import coerce_fields

REFERENCES = ("separate", "adapter", "precomputed", "none")
REFERENCE_FREE_LOSSES = ("simpo", "cpo", "orpo")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    """What every trainer shares.

    A step accumulates ``rows_per_step`` packed rows of at most ``token_budget`` tokens each;
    losses are normalized by the step's total pair (DPO) or token (SFT) count, so the result
    does not depend on how examples fall into rows.
    """

    output_dir: str = "fastalign-output"
    max_steps: int = 100
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    rows_per_step: int = 1
    token_budget: int = 2048
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    on_overflow: str = "truncate"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    lora_r: int = 0  # > 0: train LoRA adapters (needs peft) instead of all weights
    lora_alpha: float = 16.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    attention: str = "auto"
    # "auto": DDP under torchrun with several processes, a plain single process otherwise.
    strategy: str = "auto"
    log_every: int = 1
    eval_every: int = 0  # 0: evaluate only at the end
    # Checkpoints: every `save_every` steps, and whenever `save_every_minutes` have passed since the
    # last one (0 turns either off); always at the end, and on SIGINT / SIGTERM.
    save_every: int = 500
    save_every_minutes: float = 30.0
    keep_last: int = 2
    # A step with a non-finite loss, gradient norm or model output never updates the weights:
    # "stop" ends the run at the first one; "skip" goes on, and stops after `max_nonfinite_skips`
    # consecutive skipped steps.
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 10
    progress: bool = True
    # Long rows. `max_length`: longest example (P + C + R tokens); one over `token_budget` gets a
    # row of its own, `on_overflow` applies above it (None: `token_budget`). `mlp_tile_tokens`:
    # run each decoder layer's MLP over tiles of this many tokens (0: off). `offload_checkpoints`:
    # keep checkpointed layer inputs in pinned host memory (CUDA, needs gradient_checkpointing).
    # `sequence_parallel`: split each row over this many ranks (Ulysses; DPO under torchrun with
    # ddp; the other ranks are data-parallel replicas).
    max_length: int | None = None
    mlp_tile_tokens: int = 0
    offload_checkpoints: bool = False
    sequence_parallel: int = 1

    def validate(self) -> None:
        """Check (and convert, e.g. ``adam_betas`` list → tuple) every field: ``ValueError``
        naming the first bad one."""
        for name, value in coerce_fields(type(self), dataclasses.asdict(self)).items():
            setattr(self, name, value)
        positive = ("max_steps", "learning_rate", "rows_per_step", "token_budget", "log_every", "keep_last",
                    "max_nonfinite_skips")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "save_every_minutes", "lora_r", "weight_decay",
                     "mlp_tile_tokens"):
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
        if not self.output_dir.strip():
            raise ValueError("output_dir must be a non-empty path")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from a mapping (YAML file, CLI overrides): each value is checked against its
        field's type (``ValueError`` naming the option); unknown keys are an error."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.__name__} options must be a mapping, got {type(values).__name__}")
        config = cls(**coerce_fields(cls, values))
        config.validate()
        return config


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on completions (token-mean NLL over completion tokens)."""

    learning_rate: float = 1e-4


@dataclass
class DPOConfig(TrainConfig):
    """Direct preference optimization and its relatives.

    ``loss_type``: a DPO-family loss of ``fastalign.losses.dpo_loss`` (or a list, MPO-style,
    with ``loss_weights``), or a reference-free ``"simpo"``, ``"cpo"``, ``"orpo"``.
    ``reference``: ``separate`` (frozen copy of the initial model), ``adapter`` (the PEFT model
    with adapters disabled; needs ``lora_r > 0``), ``precomputed`` (reference log-probs computed
    once before training), ``none`` (reference-free losses).
    """

    beta: float = 0.1
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    rpo_alpha: float | None = None
    simpo_gamma: float = 0.5
    reference: str = "separate"
    offload_reference: bool = False  # fsdp2: keep the frozen reference's shards in CPU memory
    # Run the reference forward (no grad, keeps only per-example sums) before the policy's, so its
    # activations never coexist with the policy's saved ones. False: after (same numbers, more memory).
    reference_first: bool = True

    def validate(self) -> None:
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


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
