"""``DPOTrainer``: DPO-family (and reference-free SimPO / CPO / ORPO) training on packed,
prefix-shared rows; the policy and the reference read the same ``PackedBatch``."""

from __future__ import annotations

import torch
from torch import nn

from fastalign.data.token_lists import preference_token_lists
from fastalign.eval.preference import preference_accuracy
from fastalign.losses import cpo_loss, dpo_loss, orpo_loss, simpo_loss
from fastalign.losses.outputs import PreferenceLossOutput
from fastalign.models import (
    AdapterReference,
    PackedLogprobs,
    PrecomputedReference,
    Reference,
    SeparateReference,
    reduce_packed,
)
from fastalign.packing import PackedBatch, pack_preference_examples
from fastalign.train import distributed
from fastalign.train.base import Trainer
from fastalign.train.config import DPOConfig


class DPOTrainer(Trainer):
    """Train ``model`` on preference pairs.

    Args:
        model: transformers causal LM (the SFT model); trained in place.
        tokenizer: used when the data holds text (``prompt``/``chosen``/``rejected``) and for
            saving; token-id columns (``prompt_ids``/...) are used as they are.
        train_data, eval_data: ``datasets.Dataset`` (text or token-id columns).
        config: ``DPOConfig``.
        reference_model: the reference for ``reference="separate"`` (default: a frozen copy of
            ``model`` as given, i.e. the initial policy).
    """

    config: DPOConfig
    progress_metrics = {"loss": "loss", "rewards/accuracies": "acc", "rewards/margins": "margin"}
    supports_sequence_parallel = True

    def __init__(self, model: nn.Module, tokenizer, train_data, config: DPOConfig, *, eval_data=None,
                 reference_model: nn.Module | None = None) -> None:
        if not isinstance(config, DPOConfig):
            raise ValueError(f"config must be a DPOConfig, got {type(config).__name__}")
        self._reference_source = reference_model
        super().__init__(model, tokenizer, train_data, config, eval_data=eval_data)

    def _check_distributed_config(self, config, strategy: str, world: int) -> None:
        super()._check_distributed_config(config, strategy, world)
        if config.offload_reference and (strategy != "fsdp2" or config.reference not in ("separate", "precomputed")):
            raise ValueError("offload_reference=True needs strategy='fsdp2' and reference='separate' or 'precomputed' "
                             f"(got strategy {strategy!r}, reference {config.reference!r})")
        if config.offload_reference and not distributed.wants_cuda(config.device):
            raise ValueError("offload_reference=True needs CUDA devices (FSDP2 offloads GPU shards to CPU memory)")

    def before_distributed_wrap(self) -> None:
        self.references = self._build_references(self._reference_source)
        self._reference_source = None

    def token_lists(self, data, name: str) -> tuple[list[list[int]], ...]:
        return preference_token_lists(data, self.tokenizer, name, self.config.prompt_boundary)

    def pack_lists(self, lists, *, sort_by_length: bool) -> list[PackedBatch]:
        c = self.config
        return pack_preference_examples(
            *lists, token_budget=c.token_budget, max_prompt_length=c.max_prompt_length,
            max_completion_length=c.max_completion_length, on_overflow=c.on_overflow, sort_by_length=sort_by_length,
            max_length=c.max_length,
        )

    @staticmethod
    def pack_rows(data, tokenizer, config: DPOConfig, name: str = "data") -> list[PackedBatch]:
        """Tokenize (if needed) and pack preference data for evaluation (fewest rows)."""
        c = config
        return pack_preference_examples(
            *preference_token_lists(data, tokenizer, name, c.prompt_boundary), token_budget=c.token_budget,
            max_prompt_length=c.max_prompt_length, max_completion_length=c.max_completion_length,
            on_overflow=c.on_overflow, max_length=c.max_length,
        )

    def _build_references(self, reference_model: nn.Module | None) -> dict[str, Reference | None]:
        kind = self.config.reference
        if kind == "none":
            return {"train": None, "eval": None}
        if kind == "adapter":
            shared = AdapterReference(self.policy)
            return {"train": shared, "eval": shared}
        source = reference_model if reference_model is not None else self.policy.model
        frozen = SeparateReference(source.to(self.device), **self.model_options())
        if self.dist.strategy == "fsdp2":  # sharded like the policy: each rank holds 1/world of it
            distributed.shard(frozen.policy, frozen.policy.model, offload=self.config.offload_reference)
        if kind == "separate":
            return {"train": frozen, "eval": frozen}
        # precomputed: one pass of the frozen copy over every example, then the copy is freed.
        tables = {"train": self._precompute(frozen, self.rows_for_epoch(0))}
        tables["eval"] = self._precompute(frozen, self.eval_rows) if self.eval_rows else None
        return tables

    def _precompute(self, reference: Reference, rows: list[PackedBatch]) -> PrecomputedReference:
        count = 1 + max(int(row.example_index.max()) for row in rows)
        with self.autocast():
            return PrecomputedReference.compute(reference, (row.to(self.device) for row in rows), count)

    def objective(self, out: PackedLogprobs, reference: tuple[torch.Tensor, torch.Tensor] | None,
                  num_pairs: int) -> PreferenceLossOutput:
        c = self.config
        lengths = dict(chosen_lengths=out.chosen_tokens, rejected_lengths=out.rejected_tokens)
        if c.loss_type == "simpo":
            return simpo_loss(out.chosen, out.rejected, beta=c.beta, gamma=c.simpo_gamma,
                              label_smoothing=c.label_smoothing, num_pairs=num_pairs, **lengths)
        if c.loss_type == "cpo":
            return cpo_loss(out.chosen, out.rejected, out.chosen_tokens, beta=c.beta,
                            label_smoothing=c.label_smoothing, num_pairs=num_pairs)
        if c.loss_type == "orpo":
            return orpo_loss(out.chosen, out.rejected, beta=c.beta, num_pairs=num_pairs, **lengths)
        ref_chosen, ref_rejected = reference if reference is not None else (None, None)
        return dpo_loss(out.chosen, out.rejected, ref_chosen, ref_rejected, beta=c.beta, loss_type=c.loss_type,
                        loss_weights=c.loss_weights, label_smoothing=c.label_smoothing, rpo_alpha=c.rpo_alpha,
                        num_pairs=num_pairs, **lengths)

    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        # Normalized by the pairs of the whole step on every rank (all-reduced over replicas).
        (num_pairs,) = self.replica_sums(sum(row.num_examples for row in rows))
        num_pairs = int(num_pairs)
        totals: dict[str, float] = {}
        reference = self.references["train"]
        first = reference is not None and self.config.reference_first
        for index, row in enumerate(rows):
            with self.autocast():
                # First: only its per-example sums [E] outlive it, and its activations never
                # coexist with the policy's saved ones.
                ref = reference(row) if first else None
                out = reduce_packed(row, self.forward(row))
                if reference is not None and not first:
                    ref = reference(row)
            out = out._replace(chosen=self.finite("policy log-probs", out.chosen),
                               rejected=self.finite("policy log-probs", out.rejected))
            if ref is not None:
                ref = tuple(self.finite("reference log-probs", logps) for logps in ref)
            result = self.objective(out, ref, num_pairs)
            self.backward(result.loss, last=index == len(rows) - 1)
            sums = {
                "loss": float(result.loss.detach()) * num_pairs,  # undo the step normalization
                "rewards/chosen": float(result.chosen_rewards.sum()),
                "rewards/rejected": float(result.rejected_rewards.sum()),
                "rewards/margins": float(result.margins.sum()),
                "rewards/accuracies": float(result.accuracies.sum()),
                "logps/chosen": float(out.chosen.detach().sum()),
                "logps/rejected": float(out.rejected.detach().sum()),
            }
            if result.nll_loss is not None:
                sums["nll_loss"] = float(result.nll_loss.detach().sum())
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
        keys = sorted(totals)
        summed = dict(zip(keys, self.replica_sums(*(totals[key] for key in keys))))
        metrics = {key: value / num_pairs for key, value in summed.items()}
        metrics["pairs"] = num_pairs
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Preference accuracy on ``eval_data`` (implicit-reward accuracy when there is a reference)."""
        if not self.eval_rows:
            raise ValueError("evaluate() needs eval_data")
        with self.autocast():
            return preference_accuracy(self.policy, self.eval_rows, reference=self.references["eval"],
                                       beta=self.config.beta, device=self.device)
