"""Exporting a trained model with ``save_pretrained`` (LoRA merged; FSDP2 shards consolidated).

Functions of a ``Trainer`` kept apart from the loop; ``Trainer.save_model`` calls ``save_model``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from fastalign.train import distributed


def save_model(trainer, target: Path) -> Path:
    """Write ``trainer``'s model and tokenizer to ``target`` (collective when distributed: the
    full weights are gathered and rank 0 writes them). Never writes a non-finite parameter."""
    trainer.check_finite_parameters("final model")
    if trainer.dist.strategy == "fsdp2":
        return _save_sharded_model(trainer, target)
    if not trainer.dist.is_main:
        distributed.barrier(trainer.dist)
        return target
    model = trainer.policy.model
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    write_pretrained(model, trainer.tokenizer, target)
    distributed.barrier(trainer.dist)
    return target


def write_pretrained(model: nn.Module, tokenizer, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    if tokenizer is not None:
        tokenizer.save_pretrained(target)


def _save_sharded_model(trainer, target: Path) -> Path:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Collective: every rank contributes its shards; rank 0 receives full CPU tensors.
    model = trainer.policy.model
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.dist.is_main:
        import torch

        with torch.device("meta"):
            fresh = type(model)(model.config)
        fresh.load_state_dict(full, assign=True, strict=False)
        fresh.tie_weights()
        missing = [name for name, tensor in fresh.state_dict().items() if tensor.is_meta]
        if missing:
            raise RuntimeError(f"consolidated state dict misses {missing[:5]}")
        write_pretrained(fresh, trainer.tokenizer, target)
    distributed.barrier(trainer.dist)
    return target
