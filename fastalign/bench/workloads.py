"""What several benchmarks run on: dtypes by name, the Llama-3.2-1B shape, the plain model's
attention, and synthetic HH-like preference examples (long prompts, short answers).

Shared so that the packing, TRL and long-context benchmarks and the packer microbenchmark
measure the same model shape and the same data.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Llama-3.2-1B's shape (1.24B parameters, tied embeddings): the GPU presets' model.
LLAMA_1B_SHAPE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=8192, vocab_size=128256, max_position_embeddings=4096,
                      tie_word_embeddings=True, rope_theta=500000.0)


def baseline_attention(device: torch.device) -> str:
    """The plain model's attention: flash_attention_2 on CUDA when flash-attn imports, else sdpa."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


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


HH_LIKE_LENGTHS = LengthDistribution(prompt_mean=448, answer_mean=64, prompt_min=32, prompt_max=1536,
                                     answer_min=4, answer_max=384)


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
