"""The two methods of ``bench/bench_packing.py`` and their equivalence check.

Both compute the per-example chosen / rejected log-prob sums of the same synthetic, HH-like
preference examples (``fastalign.bench.workloads``):

* ``padded_concat`` (what TRL's DPO trainer does without its fused head): per micro-batch of
  ``B`` pairs a right-padded ``[2B, Lmax]`` batch of ``[P C]`` and ``[P R]`` rows with an
  attention mask, the plain Hugging Face forward (its built-in attention: flash_attention_2
  when flash-attn is installed on CUDA, else sdpa) to full logits, per-token
  ``log_softmax`` + gather of the answer tokens (TRL's ``selective_log_softmax`` in plain
  PyTorch), sums per sequence.
* ``packed_shared`` (fastalign): ``pack_preference_examples(..., token_budget=...)`` rows of
  ``[P C R]`` with the prompt encoded once, each through ``packed_logprobs(PolicyModel(model),
  row)`` (packed attention backend ``"auto"``, fused log-prob head: no full logits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastalign.bench.workloads import DTYPES, LengthDistribution, PreferenceData
from fastalign.models import packed_logprobs
from fastalign.packing import PackedBatch, pack_preference_examples

METHODS = ("padded_concat", "packed_shared")


@dataclass(frozen=True)
class PackingPreset:
    """Model, data and measurement sizes of one benchmark run."""

    model: dict  # LlamaConfig keyword arguments
    dtype: str
    lengths: LengthDistribution
    examples: int
    micro_batch_pairs: int  # B of the padded baseline: [2B, Lmax] per forward
    token_budget: int  # tokens per packed row
    warmup: int = 1
    repeats: int = 3
    check_examples: int = 4
    seed: int = 0
    # Equivalence tolerance on per-example log-prob sums: |a - b| <= atol + rtol * |b|.
    check_atol: float = 1e-3
    check_rtol: float = 1e-4

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_model(preset: PackingPreset, device: torch.device, *, attn_implementation: str = "sdpa"):
    """Random-init ``LlamaForCausalLM`` of the preset (seeded), in train mode on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**preset.model)
    torch.manual_seed(preset.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(DTYPES[preset.dtype])
    model.set_attn_implementation(attn_implementation)
    return model.train()


# --------------------------------------------------------------------------------------------
# Padded concatenated baseline
# --------------------------------------------------------------------------------------------


@dataclass
class PaddedBatch:
    """``[2B, L]`` right-padded rows: ``[P C]`` for the B pairs, then ``[P R]``."""

    input_ids: torch.Tensor  # int64 [2B, L]
    attention_mask: torch.Tensor  # int64 [2B, L]
    answer_mask: torch.Tensor  # bool [2B, L]: True on answer tokens (the scored ones)
    example_index: torch.Tensor  # int64 [B]

    @property
    def pairs(self) -> int:
        return self.example_index.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()


def pad_concatenated(data: PreferenceData, example_index: Sequence[int], device: torch.device,
                     *, pad_id: int = 0) -> PaddedBatch:
    """TRL's collation: ``[P C]`` and ``[P R]`` rows right-padded to the longest of the 2B."""
    sequences = [(data.prompts[i], data.chosen[i]) for i in example_index]
    sequences += [(data.prompts[i], data.rejected[i]) for i in example_index]
    width = max(len(p) + len(a) for p, a in sequences)
    ids = np.full((len(sequences), width), pad_id, np.int64)
    attention = np.zeros((len(sequences), width), np.int64)
    answer = np.zeros((len(sequences), width), bool)
    for row, (prompt, completion) in enumerate(sequences):
        total = len(prompt) + len(completion)
        ids[row, :total] = prompt + completion
        attention[row, :total] = 1
        answer[row, len(prompt):total] = True
    return PaddedBatch(
        torch.from_numpy(ids).to(device), torch.from_numpy(attention).to(device),
        torch.from_numpy(answer).to(device), torch.as_tensor(list(example_index), dtype=torch.int64),
    )


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's plain-PyTorch ``selective_log_softmax``: logsumexp in fp32/fp64, per-row
    ``log_softmax`` otherwise (bf16), to bound peak memory."""
    if logits.dtype in (torch.float32, torch.float64):
        selected = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return selected - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return torch.stack([
        F.log_softmax(row_logits, dim=-1).gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        for row_logits, row_index in zip(logits, index)
    ])


def padded_logprobs(model, batch: PaddedBatch, *, upcast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed chosen / rejected answer log-probs ``[B]`` each, from full logits (``upcast``:
    log-softmax in fp32 instead of the logits' dtype, as the equivalence check does)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    if upcast:
        logits = logits.float()
    per_token = selective_log_softmax(logits[:, :-1], batch.input_ids[:, 1:])
    sums = per_token.float().masked_fill(~batch.answer_mask[:, 1:], 0.0).sum(-1)
    return sums[: batch.pairs], sums[batch.pairs:]


def micro_batches(n: int, pairs: int) -> list[list[int]]:
    return [list(range(start, min(start + pairs, n))) for start in range(0, n, pairs)]


def pack_rows(data: PreferenceData, preset: PackingPreset, device: torch.device) -> list[PackedBatch]:
    rows = pack_preference_examples(data.prompts, data.chosen, data.rejected, token_budget=preset.token_budget)
    if rows.stats.kept != len(data):
        raise RuntimeError(f"the packer kept {rows.stats.kept} of {len(data)} examples")
    return [row.to(device) for row in rows]



# --------------------------------------------------------------------------------------------
# Equivalence check
# --------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    examples: int
    max_abs_diff: float
    max_rel_diff: float
    passed: bool


@torch.no_grad()
def check_equivalence(model, data: PreferenceData, preset: PackingPreset, device: torch.device) -> CheckResult:
    """Per-example chosen/rejected sums of both methods on the first ``check_examples``.

    The packed side goes through ``packed_logprobs(model, row)`` on the plain model, which
    switches to a fastalign backend and restores the model's own attention afterwards. The
    padded side's log-softmax runs in fp32 here, so that in bf16 the check compares the two
    computations rather than the baseline's bf16 rounding of ``log_softmax`` (~1e-3 relative).
    With a random-init model the context barely moves the log-probs, so in bf16 the check
    catches gross errors only; the fp32 check (CPU) is the tight one.
    """
    count = min(preset.check_examples, len(data))
    subset = data.subset(range(count))
    chosen, rejected = padded_logprobs(model, pad_concatenated(subset, range(count), device), upcast=True)
    padded = torch.stack([chosen, rejected], 1).double().cpu()
    packed = torch.full_like(padded, float("nan"))
    for row in pack_rows(subset, preset, device):
        out = packed_logprobs(model, row)
        packed[out.example_index.cpu()] = torch.stack([out.chosen, out.rejected], 1).double().cpu()
    diff = (packed - padded).abs()
    rel = diff / padded.abs().clamp_min(1e-6)
    passed = bool(torch.all(diff <= preset.check_atol + preset.check_rtol * padded.abs()))
    return CheckResult(count, float(diff.max()), float(rel.max()), passed)
