"""Benchmark: packed prefix-shared rows vs padded concatenated batches, policy forward+backward.

Both methods compute the per-example chosen / rejected log-prob sums of the same synthetic,
HH-like preference examples (long prompts, short answers), a DPO-like scalar from them, and
its backward through the whole model:

* ``padded_concat`` (what TRL's DPO trainer does without its fused head): per micro-batch of
  ``B`` pairs a right-padded ``[2B, Lmax]`` batch of ``[P C]`` and ``[P R]`` rows with an
  attention mask, the plain Hugging Face forward (its built-in attention: flash_attention_2
  when flash-attn is installed on CUDA, else sdpa) to full logits, per-token
  ``log_softmax`` + gather of the answer tokens (TRL's ``selective_log_softmax`` in plain
  PyTorch), sums per sequence.
* ``packed_shared`` (fastalign): ``pack_preference_examples(..., token_budget=...)`` rows of
  ``[P C R]`` with the prompt encoded once, each through ``packed_logprobs(PolicyModel(model),
  row)`` (packed attention backend ``"auto"``, fused log-prob head: no full logits).

Before timing, both methods' per-example sums are compared on a few examples (fp32: tight,
bf16: loose tolerance). One model instance serves both methods (the check runs the packed path
through ``packed_logprobs(model, ...)``, which restores the model's attention implementation),
so peak memory counts one set of weights. Reported per method: wall time of a pass over all
examples (median of ``repeats`` after ``warmup``), examples/s, useful tokens/s (useful =
sum of P + C + R, the same for both), tokens actually computed (padding and duplicated prompts
included), peak CUDA memory (``None`` on CPU) and the speedup over ``padded_concat``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastalign.bench.measure import is_out_of_memory, time_callable
from fastalign.bench.report import headless_pyplot, save_figure
from fastalign.bench.runner import dtype_name
from fastalign.models import PolicyModel, packed_logprobs
from fastalign.packing import PackedBatch, pack_preference_examples

__all__ = [
    "METHODS",
    "PRESETS",
    "LengthDistribution",
    "PackingPreset",
    "PaddedBatch",
    "PreferenceData",
    "baseline_attention",
    "build_model",
    "check_equivalence",
    "pad_concatenated",
    "padded_logprobs",
    "plot_bars",
    "run_benchmark",
    "synthetic_preference_data",
]

METHODS = ("padded_concat", "packed_shared")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# Synthetic HH-like data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthDistribution:
    """Lognormal token lengths (``mean`` is the mean of the lognormal before clipping).

    HH-like: prompts (the whole multi-turn dialogue so far) are long, answers short — the
    prompt mean is ~7x the answer mean. Chosen and rejected lengths are drawn independently.
    """

    prompt_mean: float
    answer_mean: float
    prompt_sigma: float = 0.7
    answer_sigma: float = 0.7
    prompt_min: int = 8
    prompt_max: int = 1024
    answer_min: int = 2
    answer_max: int = 256

    @property
    def max_example_tokens(self) -> int:
        """Largest ``P + C + R`` the distribution can produce."""
        return self.prompt_max + 2 * self.answer_max


def _lognormal(rng: np.random.Generator, n: int, mean: float, sigma: float, lo: int, hi: int) -> np.ndarray:
    mu = math.log(mean) - sigma**2 / 2  # so that E[X] = mean
    return np.clip(np.rint(rng.lognormal(mu, sigma, n)), lo, hi).astype(np.int64)


@dataclass
class PreferenceData:
    """Token-id lists of ``n`` preference examples."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int]) -> PreferenceData:
        return PreferenceData([self.prompts[i] for i in indices], [self.chosen[i] for i in indices],
                              [self.rejected[i] for i in indices])

    @property
    def useful_tokens(self) -> int:
        """``sum(P + C + R)``: tokens a method must at least run through the model."""
        return sum(len(p) + len(c) + len(r) for p, c, r in zip(self.prompts, self.chosen, self.rejected))


def synthetic_preference_data(n: int, lengths: LengthDistribution, vocab_size: int, *, seed: int = 0) -> PreferenceData:
    """``n`` examples with HH-like lengths and uniform random token ids (seeded numpy)."""
    rng = np.random.default_rng(seed)
    p = _lognormal(rng, n, lengths.prompt_mean, lengths.prompt_sigma, lengths.prompt_min, lengths.prompt_max)
    c = _lognormal(rng, n, lengths.answer_mean, lengths.answer_sigma, lengths.answer_min, lengths.answer_max)
    r = _lognormal(rng, n, lengths.answer_mean, lengths.answer_sigma, lengths.answer_min, lengths.answer_max)

    def draw(sizes: np.ndarray) -> list[list[int]]:
        return [rng.integers(0, vocab_size, int(size)).tolist() for size in sizes]

    return PreferenceData(draw(p), draw(c), draw(r))


# --------------------------------------------------------------------------------------------
# Presets and the model
# --------------------------------------------------------------------------------------------


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


# Llama-3.2-1B's shape (1.24B parameters, tied embeddings) and HH-like lengths: the GPU presets.
LLAMA_1B_SHAPE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=8192, vocab_size=128256, max_position_embeddings=4096,
                      tie_word_embeddings=True, rope_theta=500000.0)
HH_LIKE_LENGTHS = LengthDistribution(prompt_mean=448, answer_mean=64, prompt_min=32, prompt_max=1536,
                                     answer_min=4, answer_max=384)

PRESETS: dict[str, PackingPreset] = {
    # Tiny random Llama in fp32: any machine, about a minute on 2 idle cores.
    "cpu-smoke": PackingPreset(
        model=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=512, vocab_size=1024, max_position_embeddings=2048),
        dtype="float32",
        lengths=LengthDistribution(prompt_mean=112, answer_mean=16, prompt_min=8, prompt_max=384,
                                   answer_min=2, answer_max=64),
        examples=96, micro_batch_pairs=4, token_budget=1024, warmup=1, repeats=5,
    ),
    # Llama-3.2-1B-shaped random model in bf16 (1.24B parameters, tied embeddings). Padded
    # micro-batches of 4 pairs hold ~7-15k tokens; packed rows hold <= 8192 tokens.
    "gpu-core": PackingPreset(
        model=LLAMA_1B_SHAPE,
        dtype="bfloat16",
        lengths=HH_LIKE_LENGTHS,
        examples=128, micro_batch_pairs=4, token_budget=8192, warmup=1, repeats=3,
        check_atol=1.0, check_rtol=1e-2,
    ),
}


def baseline_attention(device: torch.device) -> str:
    """The plain model's attention: flash_attention_2 on CUDA when flash-attn imports, else sdpa."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


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


def _micro_batches(n: int, pairs: int) -> list[list[int]]:
    return [list(range(start, min(start + pairs, n))) for start in range(0, n, pairs)]


def _pack(data: PreferenceData, preset: PackingPreset, device: torch.device) -> list[PackedBatch]:
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
    for row in _pack(subset, preset, device):
        out = packed_logprobs(model, row)
        packed[out.example_index.cpu()] = torch.stack([out.chosen, out.rejected], 1).double().cpu()
    diff = (packed - padded).abs()
    rel = diff / padded.abs().clamp_min(1e-6)
    passed = bool(torch.all(diff <= preset.check_atol + preset.check_rtol * padded.abs()))
    return CheckResult(count, float(diff.max()), float(rel.max()), passed)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class PackingRow:
    method: str
    status: str  # ok | oom | error
    attention: str
    dtype: str
    examples: int
    forwards: int  # padded micro-batches / packed rows per pass
    useful_tokens: int
    computed_tokens: int
    computed_over_useful: float
    note: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    examples_per_s: float | None = None
    useful_tokens_per_s: float | None = None
    computed_tokens_per_s: float | None = None
    peak_mem_mb: float | None = None  # torch.cuda.max_memory_allocated (weights included); None on CPU
    step_mem_mb: float | None = None  # the same above what was live before the pass
    prep_ms: float | None = None  # host-side collation / packing of all examples (not in median_ms)
    speedup_vs_padded: float | None = None
    check_examples: int = 0
    check_max_abs_diff: float | None = None
    check_max_rel_diff: float | None = None
    check_passed: bool | None = None


def _clear_grads(model) -> None:
    for parameter in model.parameters():
        parameter.grad = None


def _measure(row: PackingRow, model, run_pass, device: torch.device, preset: PackingPreset) -> PackingRow:
    try:
        _clear_grads(model)
        before = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        timing = time_callable(run_pass, device, warmup=preset.warmup, repeats=preset.repeats)
        row.median_ms, row.p20_ms, row.p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            row.peak_mem_mb, row.step_mem_mb = peak / 2**20, (peak - before) / 2**20
        seconds = timing.median_ms / 1e3
        row.examples_per_s = row.examples / seconds
        row.useful_tokens_per_s = row.useful_tokens / seconds
        row.computed_tokens_per_s = row.computed_tokens / seconds
    except Exception as error:  # noqa: BLE001 - an OOM is a result, not a crash
        row.status = "oom" if is_out_of_memory(error) else "error"
        row.note = f"{type(error).__name__}: {str(error)[:300]}"
    finally:
        _clear_grads(model)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


@dataclass
class PackingResult:
    rows: list[PackingRow]
    check: CheckResult
    config: dict = field(default_factory=dict)

    def as_dicts(self) -> list[dict]:
        return [dataclasses.asdict(row) for row in self.rows]


def run_benchmark(preset: PackingPreset, device: torch.device) -> PackingResult:
    """Check, then time a forward+backward pass over all examples for both methods."""
    device = torch.device(device)
    dtype = DTYPES[preset.dtype]
    if preset.token_budget < preset.lengths.max_example_tokens:
        raise ValueError(f"token_budget {preset.token_budget} < largest possible example "
                         f"{preset.lengths.max_example_tokens}")
    data = synthetic_preference_data(preset.examples, preset.lengths, preset.model["vocab_size"], seed=preset.seed)
    n, useful = len(data), data.useful_tokens
    base_attention = baseline_attention(device)
    model = build_model(preset, device, attn_implementation=base_attention)

    check = check_equivalence(model, data, preset, device)
    restored = model.config._attn_implementation
    if restored != base_attention:
        raise RuntimeError(f"packed_logprobs left the model's attention at {restored!r}, not {base_attention!r}")
    check_fields = dict(check_examples=check.examples, check_max_abs_diff=check.max_abs_diff,
                        check_max_rel_diff=check.max_rel_diff, check_passed=check.passed)

    # padded_concat: host-side collation first (a data-loader cost), then the timed passes.
    begin = time.perf_counter()
    batches = [pad_concatenated(data, index, device) for index in _micro_batches(n, preset.micro_batch_pairs)]
    collate_ms = (time.perf_counter() - begin) * 1e3

    def padded_pass() -> None:
        _clear_grads(model)
        for batch in batches:
            chosen, rejected = padded_logprobs(model, batch)
            (-(chosen - rejected).sum() / n).backward()

    padded_tokens = sum(batch.num_tokens for batch in batches)
    padded = PackingRow("padded_concat", "ok", base_attention, dtype_name(dtype), n, len(batches), useful,
                        padded_tokens, padded_tokens / useful, prep_ms=collate_ms, **check_fields)
    _measure(padded, model, padded_pass, device, preset)
    del batches

    # packed_shared: packing first (C++ packer, a data-loader cost), then the timed passes.
    begin = time.perf_counter()
    rows = _pack(data, preset, device)
    pack_ms = (time.perf_counter() - begin) * 1e3
    policy = PolicyModel(model, attention="auto")

    def packed_pass() -> None:
        _clear_grads(model)
        for row in rows:
            out = packed_logprobs(policy, row)
            (-(out.chosen - out.rejected).sum() / n).backward()

    packed_tokens = sum(row.num_tokens for row in rows)
    packed = PackingRow("packed_shared", "ok", "", dtype_name(dtype), n, len(rows), useful, packed_tokens,
                        packed_tokens / useful, prep_ms=pack_ms, **check_fields)
    _measure(packed, model, packed_pass, device, preset)
    chosen = model.config._attn_implementation  # fastalign_<backend> picked by "auto" on the first row
    packed.attention = chosen if chosen != base_attention else "fastalign (auto, not reached)"

    if padded.median_ms and packed.median_ms:
        padded.speedup_vs_padded = 1.0
        packed.speedup_vs_padded = padded.median_ms / packed.median_ms
    config = {
        "preset": preset.as_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "baseline_attention": base_attention,
        "packed_attention": packed.attention,
        "token_budget_fill": packed_tokens / (len(rows) * preset.token_budget),
    }
    return PackingResult([padded, packed], check, config)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot_bars(rows: list[dict], environment: dict, path: Path, *, title: str) -> Path | None:
    """Bars per method: time per pass, useful tokens/s, tokens computed, peak memory (CUDA).

    ``None`` without matplotlib or without a successful row.
    """
    plt = headless_pyplot()
    if plt is None:
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    panels = [("median_ms", "time per pass (ms, median)"), ("useful_tokens_per_s", "useful tokens / s"),
              ("computed_tokens", "tokens computed per pass")]
    if any(r["peak_mem_mb"] is not None for r in ok):
        panels.append(("peak_mem_mb", "peak CUDA memory (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    names = [r["method"] for r in ok]
    colors = ["#999999" if name == "padded_concat" else "#1f77b4" for name in names]
    for axis, (key, label) in zip(axes[0], panels):
        values = [r[key] or 0.0 for r in ok]
        bars = axis.bar(names, values, color=colors)
        axis.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], fontsize=8)
        axis.set_title(label, fontsize=10)
        axis.tick_params(axis="x", labelsize=8)
    speedup = next((r["speedup_vs_padded"] for r in ok if r["method"] == "packed_shared"), None)
    headline = f" - packed {speedup:.2f}x padded" if speedup else ""
    fig.suptitle(f"{title}{headline}\n{environment['device']} - torch {environment['packages'].get('torch')}"
                 f" - {environment['date_utc'][:10]}", fontsize=10)
    return save_figure(fig, path)
