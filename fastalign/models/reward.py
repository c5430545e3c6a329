"""The reward module: a Hugging Face ``*ForSequenceClassification`` (``num_labels=1``) run on
packed rows.

The backbone runs once over a ``PackedBatch`` (prompt shared by both answers); the model's own
``score`` Linear is the scalar head, applied only to the hidden rows that are needed:

- ``sequence_scores``: the hidden state of the last token of each answer — what HF's
  ``model(input_ids=[P + answer]).logits`` pools for an unpadded sequence (reward models);
- ``token_scores``: the rows of ``batch.label_index``, the state before each answer token (what a
  PPO critic needs for per-token values).

The wrapped model stays a plain transformers model: it saves with ``save_pretrained`` and loads
with ``AutoModelForSequenceClassification``. ``RewardModel.from_causal_lm`` builds one from an
(SFT) causal LM: same backbone weights, a freshly initialized score head.
"""

from __future__ import annotations

import copy
import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastalign.models.backbone import PackedModel, causal_lm
from fastalign.packing.batch import PackedBatch

logger = logging.getLogger("fastalign")


class RewardScores(NamedTuple):
    """Per-example scalar scores of one packed row (``E`` examples)."""

    chosen: torch.Tensor  # fp32 [E] score at the last chosen (completion) token
    rejected: torch.Tensor  # fp32 [E] score at the last rejected token (0 in completion mode)


def is_sequence_classifier(model: nn.Module) -> bool:
    """Whether ``model`` (PEFT unwrapped) is a transformers ``*ForSequenceClassification``."""
    return type(causal_lm(model)).__name__.endswith("ForSequenceClassification")


def _pad_token_id(config, pad_token_id: int | None) -> int | None:
    if pad_token_id is not None:
        return pad_token_id
    if getattr(config, "pad_token_id", None) is not None:
        return config.pad_token_id
    eos = getattr(config, "eos_token_id", None)
    return eos[0] if isinstance(eos, (list, tuple)) and eos else eos


def reward_model_from_causal_lm(
    model: nn.Module, *, seed: int = 0, pad_token_id: int | None = None, init_std: float | None = None
) -> nn.Module:
    """The ``*ForSequenceClassification`` (``num_labels=1``) matching causal LM ``model``, with a
    copy of its backbone weights and a freshly initialized score head.

    Args:
        model: a transformers causal LM (e.g. the SFT model); not modified, not shared.
        seed: seeds the score head's initialization (the global RNG is left untouched).
        pad_token_id: written to the config (HF pools at the last non-pad token); default: the
            model's ``pad_token_id``, else its ``eos_token_id``.
        init_std: std of the head's normal init; default ``config.initializer_range`` (as HF).
    """
    from transformers import AutoModelForSequenceClassification

    if not isinstance(model, nn.Module) or hasattr(model, "get_base_model"):
        raise ValueError(f"model must be a transformers causal LM without adapters (merge LoRA first), "
                         f"got {type(model).__name__}")
    if is_sequence_classifier(model):
        raise ValueError(f"model is already a {type(model).__name__}; pass it to RewardModel directly")
    if not hasattr(model, "config") or not hasattr(model, "base_model") or model.get_output_embeddings() is None:
        raise ValueError(f"model must be a transformers causal LM, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if init_std is not None and not init_std > 0:
        raise ValueError(f"init_std must be None or > 0, got {init_std!r}")
    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    text.pad_token_id = _pad_token_id(text, pad_token_id)
    eos = text.eos_token_id if isinstance(text.eos_token_id, (list, tuple)) else [text.eos_token_id]
    if text.pad_token_id is not None and text.pad_token_id in eos:
        logger.warning("pad_token_id == eos_token_id (%s): HF's own forward pools at the last non-pad token, so "
                       "it skips a trailing EOS that fastalign scores", text.pad_token_id)
    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            reward = AutoModelForSequenceClassification.from_config(config)
        except ValueError as error:
            raise ValueError(f"model: transformers has no sequence classifier for {type(model).__name__}") from error
    config.architectures = [type(reward).__name__]
    reward.to(device=parameter.device, dtype=parameter.dtype)
    missing, unexpected = reward.base_model.load_state_dict(model.base_model.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"model's backbone does not match {type(reward).__name__}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    head = reward.score
    generator = torch.Generator(device="cpu").manual_seed(seed)
    std = init_std if init_std is not None else getattr(text, "initializer_range", 0.02)
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=generator, dtype=torch.float32) * std
        head.weight.copy_(weight)
        if head.bias is not None:
            head.bias.zero_()
    reward.train(model.training)
    return reward


class RewardModel(PackedModel):
    """``model`` (HF ``*ForSequenceClassification`` with ``num_labels=1``, optionally
    PEFT-wrapped) run on packed rows; its ``score`` Linear is the scalar head.

    ``forward(batch)`` is ``sequence_scores(batch)`` (what DDP / FSDP2 call).
    ``state_dict()`` / ``load_state_dict()`` use the keys of ``model``.
    """

    def __init__(self, model: nn.Module, *, attention: str = "auto") -> None:
        if not isinstance(model, nn.Module) or not is_sequence_classifier(model):
            raise ValueError(f"model must be a transformers *ForSequenceClassification (use "
                             f"RewardModel.from_causal_lm for a causal LM), got {type(model).__name__}")
        num_labels = getattr(causal_lm(model).config, "num_labels", None)
        if num_labels != 1:
            raise ValueError(f"model must have num_labels=1 (one scalar score), got num_labels={num_labels}")
        if not isinstance(getattr(causal_lm(model), "score", None), nn.Module):
            raise ValueError(f"model ({type(causal_lm(model)).__name__}) has no `score` head module")
        super().__init__(model, attention=attention)

    @classmethod
    def from_causal_lm(cls, model: nn.Module, *, seed: int = 0, pad_token_id: int | None = None,
                       init_std: float | None = None, attention: str = "auto") -> RewardModel:
        """A reward model whose backbone is a copy of causal LM ``model``'s and whose score head is
        freshly initialized (see ``reward_model_from_causal_lm``)."""
        return cls(reward_model_from_causal_lm(model, seed=seed, pad_token_id=pad_token_id, init_std=init_std),
                   attention=attention)

    @property
    def head(self) -> nn.Module:
        return causal_lm(self.model).score

    def _score(self, rows: torch.Tensor) -> torch.Tensor:
        """fp32 ``[N]`` head outputs of hidden rows ``[N, H]`` (fp32 math even under autocast)."""
        head = self.head
        if type(head) is nn.Linear:
            with torch.autocast(rows.device.type, enabled=False):
                bias = head.bias.float() if head.bias is not None else None
                return F.linear(rows.float(), head.weight.float(), bias).squeeze(-1)
        return head(rows).float().squeeze(-1)  # adapter-wrapped head (PEFT modules_to_save)

    @staticmethod
    def last_answer_rows(batch: PackedBatch) -> torch.Tensor:
        """int64 ``[E, 2]``: the row of the last chosen and the last rejected token of each
        example (-1 where the answer is absent: rejected in completion mode)."""
        answer = batch.segment_ids > 0
        positions = torch.arange(batch.num_tokens, device=batch.device)
        slot = batch.example_ids * 2 + (batch.segment_ids.long() - 1)
        last = torch.full((2 * batch.num_examples,), -1, dtype=torch.long, device=batch.device)
        last = last.scatter_reduce(0, slot[answer], positions[answer], reduce="amax", include_self=True)
        return last.view(batch.num_examples, 2)

    def sequence_scores(self, batch: PackedBatch) -> RewardScores:
        """Scores (fp32 ``[E]`` each) of the chosen and the rejected answer of every example:
        the head on the hidden state of each answer's last token. ``rejected`` is 0 in
        completion mode. Example ``i`` is ``batch.example_index[i]`` of the packer's input."""
        hidden = self.hidden_states(batch)
        last = self.last_answer_rows(batch).view(-1)
        present = last >= 0
        scores = self._score(hidden.index_select(0, last.clamp(min=0)))
        scores = torch.where(present, scores, scores.new_zeros(()))
        scores = scores.view(batch.num_examples, 2)
        return RewardScores(chosen=scores[:, 0], rejected=scores[:, 1])

    def token_scores(self, batch: PackedBatch) -> torch.Tensor:
        """fp32 ``[M]``: the head on hidden rows ``batch.label_index`` — the state before each
        scored answer token (per-token values of a PPO critic), aligned with ``batch.targets``."""
        hidden = self.hidden_states(batch)
        return self._score(hidden.index_select(0, batch.label_index))

    def forward(self, batch: PackedBatch) -> RewardScores:
        return self.sequence_scores(batch)
