"""Turn a padded ``[chosen; rejected]`` batch (TRL's DPO layout) into one prefix-shared packed
row, and put per-token results of that row back where the padded batch expects them.

TRL's DPO collator stacks ``prompt + chosen`` rows then ``prompt + rejected`` rows, right
padded, with labels ``-100`` on prompt and padding. Row ``i`` and row ``i + B`` share their
prompt, which the padded forward encodes twice; the packed row ``[P C R]`` encodes it once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastalign.packing import PackedBatch, pack_preference_examples


class PairedTokens(NamedTuple):
    """Token lists of ``B`` pairs read from a padded ``[2B, L]`` batch."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]


def split_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor, ignore_index: int = -100
) -> PairedTokens | str:
    """The pairs of a padded ``[chosen; rejected]`` batch, or why it is not one.

    Args:
        input_ids: int ``[2B, L]``, rows ``i`` and ``i + B`` are the chosen and rejected
            sequence of pair ``i``, right padded.
        attention_mask: ``[2B, L]`` ones then zeros per row, or ``None`` (no padding).
        labels: ``[2B, L]``: ``ignore_index`` on the prompt and the padding, the token ids on
            the answer (a suffix of the real tokens).

    Returns:
        ``PairedTokens``, or a string saying why the batch cannot share prompts (the caller
        then runs the ordinary padded forward).
    """
    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        return "input_ids and labels are not matching [rows, length] tensors"
    rows, length = input_ids.shape
    if rows == 0 or rows % 2:
        return f"{rows} rows cannot be chosen/rejected halves"
    ids = input_ids.tolist()
    label_rows = labels.tolist()
    if attention_mask is None:
        lengths = [length] * rows
    else:
        if attention_mask.shape != input_ids.shape:
            return "attention_mask does not match input_ids"
        mask_rows = attention_mask.tolist()
        lengths = [sum(1 for value in mask if value) for mask in mask_rows]
        if any(not all(mask[:n]) or any(mask[n:]) for mask, n in zip(mask_rows, lengths)):
            return "attention_mask is not right padding"
    answers: list[tuple[list[int], list[int]]] = []
    for row_ids, row_labels, n in zip(ids, label_rows, lengths):
        scored = [position for position in range(n) if row_labels[position] != ignore_index]
        if not scored:
            return "a row has no scored token"
        start = scored[0]
        if start == 0 or scored != list(range(start, n)) or row_labels[start:n] != row_ids[start:n]:
            return "labels are not the answer suffix of the input ids after a non-empty prompt"
        if any(label != ignore_index for label in row_labels[n:]):
            return "labels score padding"
        answers.append((row_ids[:start], row_ids[start:n]))
    half = rows // 2
    prompts, chosen, rejected = [], [], []
    for (prompt, answer), (other_prompt, other_answer) in zip(answers[:half], answers[half:]):
        if prompt != other_prompt:
            return "a chosen row and its rejected row have different prompts"
        prompts.append(prompt)
        chosen.append(answer)
        rejected.append(other_answer)
    return PairedTokens(prompts, chosen, rejected)


def pack_pairs(pairs: PairedTokens, device: torch.device) -> PackedBatch:
    """All pairs in one ``[P C R] ...`` row (examples in input order), on ``device``."""
    budget = sum(len(p) + len(c) + len(r) for p, c, r in zip(*pairs))
    packed = pack_preference_examples(
        pairs.prompts, pairs.chosen, pairs.rejected, token_budget=budget, sort_by_length=False
    )
    if len(packed) != 1:
        raise RuntimeError(f"packing {len(pairs.prompts)} pairs into one row gave {len(packed)} rows")
    return packed[0].to(device)


def scatter_to_padded(batch: PackedBatch, values: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``values [M]`` of a packed row placed at ``label_mask``'s positions.

    Args:
        batch: the row built by ``pack_pairs`` from a ``[2B, L]`` batch.
        values: one value per label row of ``batch`` (any dtype; gradients flow through).
        label_mask: bool ``[2B, L']``, True where the padded batch scores a token; row ``r``'s
            True positions, left to right, are the answer tokens of that row.

    Returns:
        ``[2B, L']`` tensor, ``values`` at the scored positions and 0 elsewhere.
    """
    num_pairs = label_mask.shape[0] // 2
    destination_row = batch.example_index[batch.label_example] + (batch.label_segment.long() - 1) * num_pairs
    # Labels of one (example, answer) are in token order, so a stable sort by destination row
    # lines them up with the row-major order of the mask's True positions.
    order = torch.argsort(destination_row, stable=True)
    positions = label_mask.reshape(-1).nonzero().squeeze(1)
    if positions.numel() != values.numel():
        raise RuntimeError(f"{values.numel()} packed values for {positions.numel()} scored positions")
    flat = values.new_zeros(label_mask.numel()).index_copy(0, positions, values.index_select(0, order))
    return flat.view(label_mask.shape)
