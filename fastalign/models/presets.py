"""Random-init model presets built from configs in code (nothing is downloaded).

``tiny``: trains on a 2-core CPU in minutes (the demo and the tests). ``1b``: a Llama-style
~1.2B-parameter config for GPU benchmarks (time and memory only; its outputs mean nothing).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=512),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=8192),
}


def preset_model(name: str, vocab_size: int, *, seed: int = 0, pad_token_id: int | None = None,
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A random-init ``LlamaForCausalLM`` of preset ``name`` for a tokenizer of ``vocab_size``."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    config = LlamaConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=name == "tiny", **PRESETS[name])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return model
