"""The loop every trainer shares: packed rows in a seeded order, gradient accumulation over
rows, AdamW with warmup + cosine, clipping, metrics, evaluation and atomic checkpoints.

Subclasses say how to pack their data (``pack``), how to turn a step's rows into a loss
(``accumulate``: backward per row, normalized by the step's total count) and how to
evaluate. Under ``torchrun`` (``strategy`` ``ddp`` / ``fsdp2``) the same loop runs on every
rank with PyTorch's engines wrapping ``self.policy`` (see ``train/distributed.py``): each
step's rows are split over ranks by tokens, counts and metrics are summed over ranks, and
checkpoints go through ``torch.distributed.checkpoint``.
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
from fastalign.train import distributed
from fastalign.train.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from fastalign.train.config import TrainConfig


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
        strategy, ranks = distributed.check_strategy(config.strategy)  # reads the environment only
        self._check_distributed_config(config, strategy, ranks["world_size"])
        self.dist, self.device = distributed.setup(config.strategy, config.device)
        self.config = config
        self.tokenizer = tokenizer
        self.output_dir = Path(config.output_dir)
        seed_everything(config.seed)
        if config.lora_r > 0:
            model = with_lora(model, config)
        model.to(self.device)
        distributed.broadcast_weights(model, self.dist)
        if config.gradient_checkpointing:
            enable_activation_checkpointing(model)
        self.policy = self.wrap_model(model)
        self.prepare_train_data(train_data)
        self.eval_rows = None
        if eval_data is not None:
            self.eval_rows = self.pack_lists(self.token_lists(eval_data, "eval_data"), sort_by_length=True)
        self.before_distributed_wrap()
        # What the loop calls: DDP around the policy, or the policy sharded in place (FSDP2).
        self.train_module = distributed.wrap(self.policy, self.dist, self.device)
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=tuple(config.adam_betas),
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_multiplier(step, config))
        self.step, self.epoch, self.position = 0, 0, 0
        self.history: list[dict[str, Any]] = []

    def _check_distributed_config(self, config: TrainConfig, strategy: str, world: int) -> None:
        """Configurations torchrun cannot run, refused before any work (no process group yet)."""
        if config.rows_per_step % world:
            raise ValueError(f"rows_per_step={config.rows_per_step} must be a multiple of the world size {world} "
                             "(each rank takes the same number of packed rows per step)")
        if strategy == "fsdp2" and config.lora_r > 0:
            raise ValueError("lora_r > 0 with strategy='fsdp2' is not supported (the merged export needs the full "
                             "weights on one rank); use strategy='ddp' for LoRA")

    # -- distributed helpers --------------------------------------------------------------
    def forward(self, row: PackedBatch, **kwargs):
        """The trained module's forward on one row (through DDP / FSDP2 hooks when distributed)."""
        return self.train_module(row, **kwargs)

    def backward(self, loss: torch.Tensor, *, last: bool) -> None:
        """Backward of a loss normalized by the step's global count; gradients are reduced
        across ranks only for the step's ``last`` row."""
        scale = self.dist.world_size if self.dist.enabled else 1  # DDP / FSDP2 average over ranks
        with distributed.gradient_sync(self.train_module, self.dist, last):
            (loss * scale).backward()

    def global_sum(self, *values: float) -> list[float]:
        """Sums over ranks (the values themselves in a single process)."""
        return distributed.global_sum(list(values), self.dist)

    def global_sums(self, totals: dict[str, float]) -> dict[str, float]:
        keys = sorted(totals)
        return dict(zip(keys, self.global_sum(*(totals[key] for key in keys))))

    # -- subclass hooks -------------------------------------------------------------------
    def before_distributed_wrap(self) -> None:
        """Called once the policy and the data exist, before DDP / FSDP2 wrap the policy
        (DPO builds its reference copy here, from the unwrapped model)."""

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
        """This rank's share of the next ``rows_per_step`` rows of the current epoch (wrapping
        into the next); in a single process, all of them."""
        rows = []
        epoch_rows = self.rows_for_epoch(self.epoch)
        while len(rows) < self.config.rows_per_step:
            if self.position >= len(epoch_rows):
                self.epoch, self.position = self.epoch + 1, 0
                epoch_rows = self.rows_for_epoch(self.epoch)
            rows.append(epoch_rows[self.position])
            self.position += 1
        if self.dist.enabled:
            mine = distributed.assign_rows([row.num_tokens for row in rows], self.dist.world_size)[self.dist.rank]
            rows = [rows[index] for index in mine]
        return [row.to(self.device, non_blocking=True) for row in rows]

    def autocast(self):
        use_bf16 = self.config.dtype == "bfloat16" or (self.config.dtype == "auto" and self.device.type == "cuda")
        if use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A single-process checkpoint's content."""
        return {"model": self.checkpoint_module().state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                "local": self.rank_state(), **self.trainer_state()}

    def rank_state(self) -> dict[str, Any]:
        """What this rank alone holds between steps and a resume must restore (PPO: the current
        rollout). Tensors are stored on the CPU."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        """Restore ``rank_state()`` (called after the model and optimizer are loaded)."""

    def checkpoint_module(self) -> nn.Module:
        """The module whose parameters the optimizer holds, with parameter names matching its
        state-dict keys (what ``torch.distributed.checkpoint`` maps optimizer state by)."""
        return self.policy.model

    def trainer_state(self) -> dict[str, Any]:
        """Everything but model, optimizer and RNG (those are sharded per rank when distributed)."""
        return {"scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                "position": self.position, "config": self.config.to_dict(), "history": self.history}

    def save_checkpoint(self) -> Path:
        if self.dist.enabled:
            from fastalign.train.checkpoint_sharded import save_sharded_checkpoint

            return save_sharded_checkpoint(self.output_dir, self.step, self.checkpoint_module(), self.optimizer,
                                           self.trainer_state(), self.dist, keep_last=self.config.keep_last,
                                           rank_state=self.rank_state())
        return save_checkpoint(self.output_dir, self.step, self.state(), keep_last=self.config.keep_last)

    def resume(self) -> bool:
        """Load the newest complete checkpoint under ``output_dir``; ``False`` if none."""
        if self.dist.enabled:
            checkpoints = list_checkpoints(self.output_dir)
            if not checkpoints:
                return False
            from fastalign.train.checkpoint_sharded import load_sharded_checkpoint

            state = load_sharded_checkpoint(checkpoints[-1], self.checkpoint_module(), self.optimizer, self.dist)
        else:
            state = load_latest_checkpoint(self.output_dir)
            if state is None:
                return False
            self.checkpoint_module().load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.history = list(state["history"])
        self.load_rank_state(state.get("local", {}))
        # The schedule is a function of this run's config: a resumed run with a larger
        # max_steps continues on its own curve, not on the stored learning rate of the old one.
        multiplier = lr_multiplier(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._rewrite_metrics()
        return True

    def _rewrite_metrics(self) -> None:
        """Metrics after the resumed step came from the interrupted run: drop them."""
        if not self.dist.is_main:
            return
        path = self.output_dir / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in self.history))
        tmp.replace(path)

    def _log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if not self.dist.is_main:
            return
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
        bar = tqdm(total=config.max_steps, initial=self.step, disable=not (config.progress and self.dist.is_main),
                   desc=type(self).__name__)
        while self.step < config.max_steps:
            start = time.perf_counter()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            rows = self.next_rows()
            self.optimizer.zero_grad(set_to_none=True)
            metrics = self.accumulate(rows)
            parameters = [p for p in self.policy.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or float("inf"))
            if hasattr(norm, "full_tensor"):  # FSDP2: a replicated DTensor
                norm = norm.full_tensor()
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.step += 1
            seconds = time.perf_counter() - start
            (tokens,) = self.global_sum(sum(row.num_tokens for row in rows))
            entry = {"step": self.step, "lr": lr, "grad_norm": float(norm), **metrics,
                     "tokens_per_s": tokens / seconds, "seconds": seconds,
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
        """``save_pretrained`` of the trained model (LoRA merged) and the tokenizer. Distributed:
        collective; the full weights are gathered and rank 0 writes them."""
        target = Path(path) if path is not None else self.output_dir / "final"
        if self.dist.strategy == "fsdp2":
            return self._save_sharded_model(target)
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return target
        model = self.policy.model
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        self._write_pretrained(model, target)
        distributed.barrier(self.dist)
        return target

    def _write_pretrained(self, model: nn.Module, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(target)

    def _save_sharded_model(self, target: Path) -> Path:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Collective: every rank contributes its shards; rank 0 receives full CPU tensors.
        full = get_model_state_dict(self.policy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.dist.is_main:
            config = self.policy.model.config
            with torch.device("meta"):
                fresh = type(self.policy.model)(config)
            fresh.load_state_dict(full, assign=True, strict=False)
            fresh.tie_weights()
            missing = [name for name, tensor in fresh.state_dict().items() if tensor.is_meta]
            if missing:
                raise RuntimeError(f"consolidated state dict misses {missing[:5]}")
            self._write_pretrained(fresh, target)
        distributed.barrier(self.dist)
        return target
