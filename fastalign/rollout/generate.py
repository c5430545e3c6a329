"""Generation behind a small interface: prompts in; completions, token ids and the sampling
log-probs out. The default engine is Hugging Face ``generate`` (KV cache, temperature / top-p,
EOS handling); a faster engine only has to return the same ``Rollout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fastalign.data.encoding import RowEncoder, tokenizer_adds_bos
from fastalign.models.backbone import PackedModel


@dataclass
class Rollout:
    """``prompts[i]`` → ``completions[i]`` (text, special tokens removed), ``prompt_ids[i]``,
    ``completion_ids[i]`` (token lists, EOS kept when produced) and ``logprobs[i]`` (per
    completion token, fp32, under the sampling distribution; empty when greedy)."""

    prompts: list[str]
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]


def _generating_model(model: nn.Module) -> nn.Module:
    """The HF model that generates: a fastalign module's ``.model``, else ``model`` itself.

    A PEFT wrapper is kept (``generate`` runs with its adapters), unlike
    ``fastalign.models.backbone.causal_lm``, which unwraps it."""
    return model.model if isinstance(model, PackedModel) else model


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
) -> Rollout:
    """Complete every prompt. ``temperature == 0`` is greedy decoding.

    ``model``: a transformers causal LM, a PEFT model or a ``PolicyModel``; ``tokenizer`` must
    have a pad token (left padding is used for batching).
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer needs a pad token for batched generation")
    lm = _generating_model(model)
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    out = Rollout([], [], [], [], [])
    try:
        for start in range(0, len(prompts), batch_size):
            _generate_batch(lm, tokenizer, list(prompts[start : start + batch_size]), device, out,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    finally:
        lm.train(was_training)
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return out


def _generate_batch(lm, tokenizer, prompts, device, out: Rollout, *, max_new_tokens, temperature, top_p) -> None:
    # Prompts are encoded exactly as the training data was (fastalign.data.encoding: special
    # tokens a chat template wrote parsed, BOS once).
    encoder = RowEncoder(tokenizer, boundary="separate", add_bos=tokenizer_adds_bos(tokenizer), add_eos=False)
    encoded = encoder.prompts(prompts)
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    sample = temperature > 0
    options = dict(do_sample=sample, max_new_tokens=max_new_tokens, pad_token_id=pad,
                   eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, output_scores=sample)
    if sample:
        # A diverged policy gives NaN logits, and sampling from them would raise inside
        # generate (on one rank only, under DDP); with NaN / inf replaced, the trainer's own
        # non-finite guard sees the NaN log-probs of the training pass and skips the step.
        options.update(temperature=temperature, top_p=top_p, top_k=0, remove_invalid_values=True)
    result = lm.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    new_tokens = result.sequences[:, width:]
    scores = torch.stack(result.scores, 1).float().log_softmax(-1) if sample else None
    for row, prompt in enumerate(prompts):
        ids = new_tokens[row].tolist()
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        out.prompts.append(prompt)
        out.prompt_ids.append(encoded[row])
        out.completion_ids.append(ids)
        out.completions.append(tokenizer.decode(ids, skip_special_tokens=True))
        if scores is not None:
            picked = scores[row, torch.arange(len(ids)), torch.tensor(ids, device=scores.device)]
            out.logprobs.append(picked.tolist())
        else:
            out.logprobs.append([])
