"""Trainer configurations: every hyper-parameter in one dataclass per method, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fastalign.losses.preference import LOSS_TYPES

REFERENCES = ("separate", "adapter", "precomputed", "none")
REFERENCE_FREE_LOSSES = ("simpo", "cpo", "orpo")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16")


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
    save_every: int = 0  # 0: checkpoint only at the end
    keep_last: int = 2
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        positive = ("max_steps", "learning_rate", "rows_per_step", "token_budget", "log_every", "keep_last")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "lora_r", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_prompt_length", "max_completion_length", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be None or > 0, got {value!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("on_overflow", self.on_overflow, ("error", "drop", "truncate"))
        _choice("strategy", self.strategy, ("auto", "none", "ddp", "fsdp2"))
        if not self.output_dir:
            raise ValueError("output_dir must be a non-empty path")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from a mapping (YAML file, CLI overrides); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(names)}")
        defaults = cls()
        annotations = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        coerced = {name: _coerce(name, value, getattr(defaults, name), annotations[name]) for name, value in values.items()}
        config = cls(**coerced)
        config.validate()
        return config


def _coerce(name: str, value: Any, default: Any, annotation: str) -> Any:
    """Check a configured value against the type of the field's default. YAML reads ``1e-4``
    (no dot) as a string, so numeric strings are converted for float fields; anything else of
    the wrong type is a ``ValueError`` naming the option (not a ``TypeError`` later)."""
    if default is None or value is None:
        return value
    if isinstance(value, list) and "list" in annotation and all(isinstance(v, str) for v in value):
        return value  # e.g. loss_type: str | list[str]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(f"option {name} must be a {type(default).__name__}, got {value!r}")


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

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        _choice("reference", self.reference, REFERENCES)
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
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
