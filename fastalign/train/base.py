"""The loop every trainer shares: packed rows in a seeded order, gradient accumulation over
rows, AdamW with warmup + cosine, clipping, metrics, evaluation and atomic checkpoints.

Subclasses say how to pack their data (``pack``), how to turn a step's rows into a loss
(``accumulate``: backward per row, normalized by the step's total count) and how to
evaluate. No home-made distributed engine: the loop runs unchanged under ``torchrun`` with
DDP / FSDP2 wrapping ``self.policy``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fastalign.models import PolicyModel, enable_activation_checkpointing
from fastalign.models.backbone import PackedModel
from fastalign.packing import PackedBatch
from fastalign.train.checkpoint import load_latest_checkpoint, restore_rng, rng_state, save_checkpoint
from fastalign.train.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_multiplier(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.lr_schedule == "cosine" else 1 - progress
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


def with_lora(model: nn.Module, config: TrainConfig, *, task_type: str = "CAUSAL_LM") -> nn.Module:
    """``model`` wrapped with peft LoRA adapters per ``config`` (``SEQ_CLS`` also trains the head)."""
    try:
        import peft
    except ImportError as error:
        raise ValueError("lora_r > 0 needs the peft package: pip install 'fastalign[peft]'") from error
    lora = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                           target_modules=list(config.lora_target_modules), task_type=task_type)
    return peft.get_peft_model(model, lora)


class Trainer:
    """Base trainer; see ``SFTTrainer`` and ``DPOTrainer``."""

    def __init__(self, model: nn.Module, tokenizer, train_data, config: TrainConfig, *, eval_data=None) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a transformers causal LM, got {type(model).__name__}")
        self.config = config
        self.tokenizer = tokenizer
        self.device = resolve_device(config.device)
        self.output_dir = Path(config.output_dir)
        seed_everything(config.seed)
        if config.lora_r > 0:
            model = with_lora(model, config)
        model.to(self.device)
        if config.gradient_checkpointing:
            enable_activation_checkpointing(model)
        self.policy = self.wrap_model(model)
        self.prepare_train_data(train_data)
        self.eval_rows = None
        if eval_data is not None:
            self.eval_rows = self.pack_lists(self.token_lists(eval_data, "eval_data"), sort_by_length=True)
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=tuple(config.adam_betas),
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_multiplier(step, config))
        self.step, self.epoch, self.position = 0, 0, 0
        self.history: list[dict[str, Any]] = []

    # -- subclass hooks -------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> PackedModel:
        """The module trained (and wrapped by DDP / FSDP2 later): the policy by default."""
        return PolicyModel(model, attention=self.config.attention)

    def prepare_train_data(self, train_data) -> None:
        """Tokenize the training data once; rows are packed per epoch (``rows_for_epoch``)."""
        self.train_lists = self.token_lists(train_data, "train_data")
        self._epoch_rows: tuple[int, list[PackedBatch]] | None = None
        if not self.rows_for_epoch(0):
            raise ValueError("train_data produced no packed rows (every example was dropped?)")

    def token_lists(self, data, name: str) -> tuple[list[list[int]], ...]:
        """Token-id lists of every example (prompt first), tokenizing text when needed."""
        raise NotImplementedError

    def pack_lists(self, lists: tuple[list[list[int]], ...], *, sort_by_length: bool) -> list[PackedBatch]:
        raise NotImplementedError

    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        """Forward + backward every row of one optimizer step; return step metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        return {}

    def can_evaluate(self) -> bool:
        return bool(self.eval_rows)

    # -- data order -----------------------------------------------------------------------
    def epoch_order(self, epoch: int, count: int) -> torch.Tensor:
        """The seeded permutation of ``count`` training items for ``epoch`` (int64 ``[count]``):
        the same on resume, different every epoch."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(count, generator=generator)

    def rows_for_epoch(self, epoch: int) -> list[PackedBatch]:
        """Every training example once, shuffled by ``(seed, epoch)`` and packed first-fit in
        that order. Re-packing each epoch with unsorted first-fit matters: length-sorted rows
        (first-fit-decreasing) give each step examples of one size and train far worse."""
        if self._epoch_rows is not None and self._epoch_rows[0] == epoch:
            return self._epoch_rows[1]
        order = self.epoch_order(epoch, len(self.train_lists[0]))
        shuffled = tuple([column[i] for i in order.tolist()] for column in self.train_lists)
        rows = self.pack_lists(shuffled, sort_by_length=False)
        for row in rows:
            row.example_index = order[row.example_index]  # back to indices of train_data
        self._epoch_rows = (epoch, rows)
        return rows

    def next_rows(self) -> list[PackedBatch]:
        """The next ``rows_per_step`` rows of the current epoch (wrapping into the next)."""
        rows = []
        epoch_rows = self.rows_for_epoch(self.epoch)
        while len(rows) < self.config.rows_per_step:
            if self.position >= len(epoch_rows):
                self.epoch, self.position = self.epoch + 1, 0
                epoch_rows = self.rows_for_epoch(self.epoch)
            rows.append(epoch_rows[self.position].to(self.device, non_blocking=True))
            self.position += 1
        return rows

    def autocast(self):
        use_bf16 = self.config.dtype == "bfloat16" or (self.config.dtype == "auto" and self.device.type == "cuda")
        if use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
            "position": self.position, "rng": rng_state(), "config": self.config.to_dict(),
            "history": self.history,
        }

    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.output_dir, self.step, self.state(), keep_last=self.config.keep_last)

    def resume(self) -> bool:
        """Load the newest complete checkpoint under ``output_dir``; ``False`` if none."""
        state = load_latest_checkpoint(self.output_dir)
        if state is None:
            return False
        self.policy.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.history = list(state["history"])
        restore_rng(state["rng"])
        self._rewrite_metrics()
        return True

    def _rewrite_metrics(self) -> None:
        """Metrics after the resumed step came from the interrupted run: drop them."""
        path = self.output_dir / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in self.history))
        tmp.replace(path)

    def _log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    # -- the loop -------------------------------------------------------------------------
    def train(self, *, resume: bool = False) -> list[dict[str, Any]]:
        """Run until ``max_steps``; with ``resume=True`` continue from the newest checkpoint."""
        config = self.config
        if not (resume and self.resume()):
            self._rewrite_metrics()
        self.policy.train()
        bar = tqdm(total=config.max_steps, initial=self.step, disable=not config.progress, desc=type(self).__name__)
        while self.step < config.max_steps:
            start = time.perf_counter()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            rows = self.next_rows()
            self.optimizer.zero_grad(set_to_none=True)
            metrics = self.accumulate(rows)
            parameters = [p for p in self.policy.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or float("inf"))
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.step += 1
            seconds = time.perf_counter() - start
            entry = {"step": self.step, "lr": lr, "grad_norm": float(norm), **metrics,
                     "tokens_per_s": sum(row.num_tokens for row in rows) / seconds, "seconds": seconds,
                     **self._peak_memory()}
            if config.eval_every and self.step % config.eval_every == 0 and self.can_evaluate():
                entry.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                self.policy.train()
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            self._log(entry)
            bar.update(1)
            if config.save_every and self.step % config.save_every == 0:
                self.save_checkpoint()
        if self.history and not (config.save_every and self.step % config.save_every == 0):
            self.save_checkpoint()
        bar.close()
        return self.history

    def _peak_memory(self) -> dict[str, float]:
        """CUDA: the step's peak allocated memory. CPU: only the process-lifetime peak RSS
        exists (it never goes down), so it is named for what it is."""
        if self.device.type == "cuda":
            return {"peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        return {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB

    def save_model(self, path: str | Path | None = None) -> Path:
        """``save_pretrained`` of the trained model (LoRA merged) and the tokenizer."""
        target = Path(path) if path is not None else self.output_dir / "final"
        model = self.policy.model
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(target)
        return target
