"""The loop every trainer shares: packed rows in a seeded order, gradient accumulation over
rows, AdamW with warmup and a cosine / linear / constant schedule, clipping, metrics,
evaluation and atomic checkpoints (written by default every ``save_every`` steps /
``save_every_minutes``, at the end and on SIGINT / SIGTERM), and the non-finite guard: a step
with a NaN / inf loss, gradient norm or model output never reaches the optimizer
(``on_nonfinite``; see ``train/nonfinite.py``).

Subclasses say how to turn their data into token lists and rows (``token_lists``,
``pack_lists``), how to turn a step's rows into a loss (``accumulate``: backward per row,
normalized by the step's total count) and how to evaluate. Under ``torchrun`` (``strategy`` ``ddp`` / ``fsdp2``) the same loop runs on every
rank with PyTorch's engines wrapping ``self.policy`` (see ``train/distributed.py``): each
step's rows are split over ranks by tokens, counts and metrics are summed over ranks, and
checkpoints go through ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastalign.models import PolicyModel, enable_activation_checkpointing
from fastalign.models.backbone import PackedModel
from fastalign.packing import PackedBatch
from fastalign.testing.memory import process_peak_rss_bytes
from fastalign.train import distributed
from fastalign.train.checkpointing import Checkpointing
from fastalign.train.config import TrainConfig
from fastalign.train.export import save_model
from fastalign.train.lifecycle import StopSignals, TrainingInterrupted, notice
from fastalign.train.nonfinite import NonFiniteGuard, all_finite, describe
from fastalign.train.progress import RunProgress, library_bars, run_summary, show_bars
from fastalign.train.step_rows import StepRows


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


class Trainer(Checkpointing, StepRows):
    """Base trainer; see ``SFTTrainer`` and ``DPOTrainer``."""

    # Step metrics the progress bar / log lines and the end-of-run summary show: name -> label.
    progress_metrics: dict[str, str] = {"loss": "loss"}

    def __init__(self, model: nn.Module, tokenizer, train_data, config: TrainConfig, *, eval_data=None) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a transformers causal LM, got {type(model).__name__}")
        strategy, ranks = distributed.check_strategy(config.strategy)  # reads the environment only
        self._check_sequence_parallel(config, strategy)
        replicas = distributed.replica_count(ranks["world_size"], config.sequence_parallel)
        config = self.fit_to_world(config, replicas, main=ranks["rank"] == 0)
        self._check_distributed_config(config, strategy, ranks["world_size"])
        self.check_step_examples(config, ranks["world_size"])
        self.dist, self.device = distributed.setup(config.strategy, config.device)
        if config.offload_checkpoints and self.device.type != "cuda":
            raise ValueError(f"offload_checkpoints=True needs a CUDA device, got {self.device} (device={config.device!r})")
        self.parallel = distributed.parallel_layout(self.dist, config.sequence_parallel)
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
        if (config.mlp_tile_tokens or config.offload_checkpoints) and not isinstance(self.policy, PolicyModel):
            raise ValueError(f"mlp_tile_tokens and offload_checkpoints apply to the policy module of the SFT, DPO and "
                             f"GRPO trainers, not to {type(self).__name__}'s {type(self.policy).__name__}")
        with library_bars(show_bars(config.progress and self.dist.is_main)):  # tokenization's bars
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
        self._nonfinite: str | None = None  # the first non-finite quantity of the current step
        self._saved_step: int | None = None  # the step of the newest checkpoint this run wrote or resumed
        self._saved_path: Path | None = None
        self._saved_at = time.monotonic()
        self.train_seconds = 0.0  # wall time of train() (all calls)

    def fit_to_world(self, config: TrainConfig, world: int, *, main: bool) -> TrainConfig:
        """``config`` with ``rows_per_step`` rounded up to a multiple of ``world``, the number of
        data-parallel replicas (processes / ``sequence_parallel``; each replica takes the same
        number of packed rows per step), said in one log line."""
        return distributed.round_to_world(config, "rows_per_step", world, "packed rows", main=main)

    supports_sequence_parallel = False  # trainers whose loop runs the policy on whole rows only

    def _check_sequence_parallel(self, config: TrainConfig, strategy: str) -> None:
        if config.sequence_parallel == 1:
            return
        if not self.supports_sequence_parallel:
            raise ValueError(f"sequence_parallel > 1 is supported by the DPO trainer, not {type(self).__name__}")
        if strategy not in ("ddp", "none"):
            raise ValueError(f"sequence_parallel > 1 runs with strategy='ddp' (got {strategy!r}; fsdp2 is not "
                             "supported with sequence parallelism yet)")

    def model_options(self) -> dict[str, Any]:
        """Keyword options of the policy module (and of frozen copies of it) from the config."""
        c = self.config
        return dict(attention=c.attention, mlp_tile_tokens=c.mlp_tile_tokens or None,
                    sequence_parallel=self.parallel.sequence_parallel)

    def _check_distributed_config(self, config: TrainConfig, strategy: str, world: int) -> None:
        """Configurations torchrun cannot run, refused before any work (no process group yet)."""
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

    def close(self) -> None:
        """Leave the process group of a distributed run (no-op in a single process). DDP's
        reducer holds the group: freed last, at interpreter exit with the GIL held, the group's
        destructor waits for gloo's worker threads while they wait for the GIL (a hang), so the
        DDP wrapper is released first and the group is destroyed while the reducer is gone."""
        if not self.dist.enabled:
            return
        self.train_module = self.policy  # drops the DDP wrapper (FSDP2 shards the policy in place)
        gc.collect()  # DDP's hooks form reference cycles
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def global_sum(self, *values: float) -> list[float]:
        """Sums over ranks (the values themselves in a single process)."""
        return distributed.global_sum(list(values), self.dist)

    def replica_sums(self, *values: float) -> list[float]:
        """Sums over data-parallel replicas: like ``global_sum``, but the ranks of one
        sequence-parallel group, which hold the same rows and values, count once (pair counts,
        metrics). Flags every rank must agree on go through ``global_sum``."""
        return distributed.global_sum(list(values), self.dist, self.parallel.replica_group)

    def global_sums(self, totals: dict[str, float]) -> dict[str, float]:
        keys = sorted(totals)
        return dict(zip(keys, self.global_sum(*(totals[key] for key in keys))))

    # -- subclass hooks -------------------------------------------------------------------
    def before_distributed_wrap(self) -> None:
        """Called once the policy and the data exist, before DDP / FSDP2 wrap the policy
        (DPO builds its reference copy here, from the unwrapped model)."""

    def wrap_model(self, model: nn.Module) -> PackedModel:
        """The module trained (and wrapped by DDP / FSDP2 later): the policy by default."""
        return PolicyModel(model, offload_checkpoints=self.config.offload_checkpoints, **self.model_options())

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

    def autocast(self):
        use_bf16 = self.config.dtype == "bfloat16" or (self.config.dtype == "auto" and self.device.type == "cuda")
        if use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- non-finite values inside a step --------------------------------------------------
    def finite(self, quantity: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """``tensor`` itself when it is finite (or ``None``). Otherwise this step is marked
        non-finite (the guard reports ``quantity``, e.g. "policy log-probs", and the optimizer
        step is skipped) and NaN / inf become 0: the losses, which refuse non-finite inputs, and
        the backward still run, so under DDP / FSDP2 every rank joins the same collectives."""
        if tensor is None or all_finite(tensor):
            return tensor
        if self._nonfinite is None:
            self._nonfinite = quantity
        return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)

    def lr_multiplier(self, step: int) -> float:
        return lr_multiplier(step, self.config)

    # -- the loop -------------------------------------------------------------------------
    def train(self, *, resume: bool = False, overwrite: bool = False) -> list[dict[str, Any]]:
        """Run until ``max_steps``; returns the per-step metrics.

        ``resume=True`` continues from the newest checkpoint in ``output_dir`` (and says from
        which step; with none, says so). An ``output_dir`` that holds another run is refused
        (``RunDirectoryError``) unless ``resume`` or ``overwrite=True`` (which deletes the old
        run's checkpoints, metrics and final model first). Raises ``NonFiniteError`` when the
        non-finite guard stops the run and ``TrainingInterrupted`` after SIGINT / SIGTERM (once
        the current step is done and checkpointed).
        """
        config = self.config
        self.start_run(resume=resume, overwrite=overwrite)
        self.policy.train()
        guard = NonFiniteGuard(config.on_nonfinite, config.max_nonfinite_skips)
        bar = RunProgress(name=type(self).__name__, total=config.max_steps, initial=self.step,
                          keys=self.progress_metrics, enabled=config.progress and self.dist.is_main,
                          every=config.log_every)
        start = time.monotonic()
        try:
            with StopSignals() as signals:
                while self.step < config.max_steps:
                    signum = self._train_step(guard, signals, bar)
                    if signum:
                        raise TrainingInterrupted(signum, self.step, self.save_checkpoint())
                # The end-of-run checkpoint (model + optimizer state, for --resume) is optional;
                # a signal always gets one.
                if self._saved_step != self.step and (config.save_final_state or signals.received is not None):
                    self.save_checkpoint()
                if signals.received is not None:  # arrived after the last step: the run is complete
                    raise TrainingInterrupted(signals.received, self.step, self._saved_path)
        finally:
            bar.close()
            self.train_seconds += time.monotonic() - start
        return self.history

    def _train_step(self, guard: NonFiniteGuard, signals: StopSignals, bar: RunProgress) -> int:
        """One optimizer step (skipped when non-finite), its log entry and its checkpoint;
        returns the signal to stop on (0: go on). Every rank takes the same decisions: they
        come from one all-reduce."""
        config = self.config
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # unsynchronized: the step's own peak
        self._nonfinite = None
        rows = self.next_rows()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.accumulate(rows)
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: a replicated DTensor
            norm = norm.full_tensor()
        norm = float(norm)
        due = bool(config.save_every_minutes) and time.monotonic() - self._saved_at >= 60 * config.save_every_minutes
        tokens, bad_ranks, signalled, due = self.global_sum(
            sum(row.num_tokens for row in rows), float(self._nonfinite is not None),
            float(signals.received is not None), float(due))
        tokens /= self.config.sequence_parallel  # a sequence-parallel group's ranks share their rows
        quantity = self._nonfinite_quantity(metrics.get("loss", 0.0), norm, bad_ranks)
        lr = self.scheduler.get_last_lr()[0]
        if quantity is None:
            self.optimizer.step()
            guard.finite_step()
            self.scheduler.step()
        else:  # the weights stay as they were; the schedule moves on (the step's data is used)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - start
        entry = {"step": self.step, "lr": lr, "grad_norm": norm, **metrics, "tokens_per_s": tokens / seconds,
                 "seconds": seconds, **self._peak_memory()}
        if quantity is not None:
            entry["skipped"] = quantity
            self._log(entry)
            notice(guard.skipped_step(self.step, quantity), main=self.dist.is_main)  # raises to stop
        else:
            if config.eval_every and self.step % config.eval_every == 0 and self.can_evaluate():
                entry.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                self.policy.train()
            self._log(entry)
        bar.update(entry)
        if signalled:  # another rank may have got it first (torchrun forwards SIGTERM)
            return signals.received or signal.SIGTERM
        if (config.save_every and self.step % config.save_every == 0) or due:
            self.save_checkpoint()
        return 0

    def _nonfinite_quantity(self, loss: float, norm: float, bad_ranks: float) -> str | None:
        """What made this step non-finite (``None``: nothing)."""
        if self._nonfinite is not None:
            return self._nonfinite
        if not math.isfinite(loss):
            return f"loss ({describe(loss)})"
        if not math.isfinite(norm):
            return f"gradient norm ({describe(norm)})"
        if bad_ranks:
            return "values (on another rank)"
        return None

    def _peak_memory(self) -> dict[str, float]:
        """CUDA: the step's peak allocated memory. CPU: only the process-lifetime peak RSS
        exists (it never goes down), so it is named for what it is."""
        if self.device.type == "cuda":
            return {"peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        return {"process_peak_rss_mb": process_peak_rss_bytes() / 2**20}

    def save_model(self, path: str | Path | None = None) -> Path:
        """``save_pretrained`` of the trained model (LoRA merged) and the tokenizer, to ``path``
        (default ``output_dir/final``). Distributed: collective; rank 0 writes the full weights.
        Refused (``NonFiniteError``) when a parameter is non-finite."""
        with library_bars(show_bars(self.config.progress and self.dist.is_main)):  # "Writing model shards"
            return save_model(self, Path(path) if path is not None else self.output_dir / "final")

    def summary(self, *, model_path: Path | None = None, evaluation: dict[str, float] | None = None) -> dict[str, Any]:
        """The run in numbers (``fastalign.train.progress.run_summary``); ``format_summary``
        prints it."""
        return run_summary(self.history, keys=self.progress_metrics, seconds=self.train_seconds,
                           output_dir=self.output_dir, model_path=model_path, evaluation=evaluation)
