"""Reference-model strategies for DPO-style losses: one interface, four ways to get
``log π_ref`` of the chosen and rejected answers of a ``PackedBatch``.

- ``separate``: a frozen copy of the initial model (forward-only kernel under ``no_grad``).
- ``adapter``: the PEFT policy itself with its adapters disabled (no second copy in memory).
- ``precomputed``: a table of reference log-probs per example, computed once before training.
- ``none``: reference-free losses (SimPO, CPO, ORPO).
All consume the same ``PackedBatch`` the policy does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from fastalign.attention.ulysses import SequenceParallelGroup
from fastalign.models.policy import PolicyModel, packed_logprobs
from fastalign.packing.batch import PackedBatch


class Reference:
    """``reference(batch) -> (chosen [E], rejected [E])`` fp32, no gradient."""

    name = "base"

    def __call__(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class SeparateReference(Reference):
    """A frozen deep copy of ``model`` taken at construction (the initial policy).

    ``mlp_tile_tokens`` and ``sequence_parallel`` as for ``PolicyModel`` (a long row's reference
    forward needs the same memory options as the policy's).
    """

    name = "separate"

    def __init__(self, model: nn.Module, *, attention: str = "auto", mlp_tile_tokens: int | None = None,
                 sequence_parallel: SequenceParallelGroup | None = None) -> None:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        self.policy = PolicyModel(frozen, attention=attention, mlp_tile_tokens=mlp_tile_tokens,
                                  sequence_parallel=sequence_parallel)

    @torch.no_grad()
    def __call__(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        out = packed_logprobs(self.policy, batch)
        return out.chosen, out.rejected


class AdapterReference(Reference):
    """The PEFT-wrapped policy with adapters disabled: the base model is the reference."""

    name = "adapter"

    def __init__(self, policy: PolicyModel) -> None:
        if not hasattr(policy.model, "disable_adapter"):
            raise ValueError("reference='adapter' needs a PEFT model (train with LoRA adapters)")
        self.policy = policy

    @torch.no_grad()
    def __call__(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.policy.training
        self.policy.eval()  # no dropout in the reference pass
        try:
            with self.policy.model.disable_adapter():
                out = packed_logprobs(self.policy, batch)
        finally:
            self.policy.train(was_training)
        return out.chosen, out.rejected


class PrecomputedReference(Reference):
    """Reference log-probs looked up by ``batch.example_index`` in tables ``[N]``."""

    name = "precomputed"

    def __init__(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        if chosen.shape != rejected.shape or chosen.dim() != 1:
            raise ValueError("chosen and rejected tables must both be [num_examples]")
        self.chosen, self.rejected = chosen, rejected

    @classmethod
    @torch.no_grad()
    def compute(cls, reference: Reference, rows: Iterable[PackedBatch], num_examples: int) -> PrecomputedReference:
        """Run ``reference`` once over every row (before training) and store the results."""
        chosen = torch.full((num_examples,), float("nan"))
        rejected = torch.full((num_examples,), float("nan"))
        for row in rows:
            row_chosen, row_rejected = reference(row)
            index = row.example_index.cpu()
            chosen[index], rejected[index] = row_chosen.float().cpu(), row_rejected.float().cpu()
        return cls(chosen, rejected)

    def __call__(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        index = batch.example_index.cpu()
        chosen, rejected = self.chosen[index], self.rejected[index]
        if torch.isnan(chosen).any() or torch.isnan(rejected).any():
            raise ValueError("batch holds examples without precomputed reference log-probs")
        return chosen.to(batch.device), rejected.to(batch.device)
