"""Tiny random-init models of each supported family, and the unpacked HF reference."""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 61  # not a multiple of any tile size
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_COMMON)),
    # Tied embeddings: the LM head is the input embedding matrix.
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_COMMON, tie_word_embeddings=True)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**_COMMON, head_dim=8)),
    # A window shorter than the examples, so it actually cuts attention.
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_COMMON, sliding_window=4)),
    # Alternating sliding/global layers, attention-logit and final-logit softcaps, custom scaling.
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(
        **_COMMON, head_dim=8, sliding_window=3, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, query_pre_attn_scalar=5,
    )),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = FAMILIES[family]().float()
    # Random init is near-uniform; larger weights make mistakes in masks visible in log-probs.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(4.0)
    return model.eval()


def reference_answer_logp(model: torch.nn.Module, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Summed log-prob of ``answer`` after ``prompt``: one unpacked HF forward, full logits."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids, use_cache=False).logits.float()[0]
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
    return logits[rows].log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum()


# P, C, R triples: |C| = |R| = 1, a one-token prompt, answers longer than the prompt,
# and a prompt longer than the sliding windows above.
EXAMPLES = (
    ([5, 9, 2, 17, 33, 8], [4, 40], [11, 12, 13]),
    ([7], [1, 2, 3, 4, 5, 6], [59, 58, 57, 56, 55]),
    ([3, 14, 15], [9], [26]),
    ([60, 0, 1, 2], [12, 13, 14, 15, 16, 17, 18], [19]),
)


def example_lists():
    prompts, chosen, rejected = (list(map(list, part)) for part in zip(*EXAMPLES))
    return prompts, chosen, rejected


def per_example(rows, score, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen [count], rejected [count])`` gathered over packed ``rows`` from ``score(row)``,
    which returns a per-row result with ``chosen`` / ``rejected`` in the row's example order."""
    chosen, rejected = torch.zeros(count), torch.zeros(count)
    for row in rows:
        out = score(row)
        chosen = chosen.index_put((row.example_index,), out.chosen)
        rejected = rejected.index_put((row.example_index,), out.rejected)
    return chosen, rejected
