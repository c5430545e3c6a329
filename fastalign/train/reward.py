"""``RewardTrainer``: a scalar reward model trained with the Bradley–Terry loss on packed,
prefix-shared preference rows (the prompt is encoded once for both answers)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from fastalign.data.token_lists import preference_token_lists
from fastalign.losses.reward import bradley_terry_loss
from fastalign.models.backbone import PackedModel
from fastalign.models.reward import RewardModel, is_sequence_classifier, reward_model_from_causal_lm
from fastalign.packing import PackedBatch, pack_preference_examples
from fastalign.train.base import Trainer, with_lora
from fastalign.train.config import RewardConfig  # torch-free, for the CLI's help; re-exported

MARGIN_COLUMN = "margin"


def _margin_column(data, name: str) -> list[float]:
    """Per-example margins from the data's ``margin`` column (zeros without one)."""
    if MARGIN_COLUMN not in getattr(data, "column_names", ()):
        return [0.0] * len(data)
    values = data[MARGIN_COLUMN]
    try:
        margins = [float(value) for value in values]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}['{MARGIN_COLUMN}'] must hold numbers: {error}") from error
    if not all(math.isfinite(value) for value in margins):
        raise ValueError(f"{name}['{MARGIN_COLUMN}'] holds non-finite values")
    return margins


class RewardTrainer(Trainer):
    """Train a reward model on preference pairs.

    Args:
        model: a transformers ``*ForSequenceClassification`` with ``num_labels=1`` (trained in
            place), or a causal LM (e.g. the SFT model) whose backbone is copied into a new one
            with a freshly initialized score head (seeded by ``config.seed``; the causal LM is not
            modified). The trained model is ``trainer.policy.model``.
        tokenizer: used when the data holds text and for saving; its ``pad_token_id`` goes into
            the config of a converted model.
        train_data, eval_data: ``datasets.Dataset`` with ``prompt``/``chosen``/``rejected`` text or
            ``prompt_ids``/``chosen_ids``/``rejected_ids`` columns, and optionally ``margin``.
        config: ``RewardConfig``.
    """

    config: RewardConfig
    progress_metrics = {"loss": "loss", "accuracy": "acc", "margin": "margin"}

    def __init__(self, model: nn.Module, tokenizer, train_data, config: RewardConfig, *, eval_data=None) -> None:
        if not isinstance(config, RewardConfig):
            raise ValueError(f"config must be a RewardConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a transformers sequence classifier or causal LM, "
                             f"got {type(model).__name__}")
        config.validate()
        model = self._as_classifier(model, tokenizer, config.seed)
        base_config = config
        if config.lora_r > 0:
            # The base class would add CAUSAL_LM adapters; a classifier needs SEQ_CLS ones, which
            # also train (and save) the score head. A model that has adapters keeps them.
            if not hasattr(model, "get_base_model"):
                model = with_lora(model, config, task_type="SEQ_CLS")
            base_config = dataclasses.replace(config, lora_r=0)
        super().__init__(model, tokenizer, train_data, base_config, eval_data=eval_data)
        # The base class may have rounded rows_per_step to the world size: keep that.
        self.config = dataclasses.replace(config, rows_per_step=self.config.rows_per_step)
        self._train_margins = torch.tensor(self.train_lists[3], dtype=torch.float32)

    @staticmethod
    def _as_classifier(model: nn.Module, tokenizer, seed: int) -> nn.Module:
        if is_sequence_classifier(model):
            return model
        pad = getattr(tokenizer, "pad_token_id", None)
        return reward_model_from_causal_lm(model, seed=seed, pad_token_id=pad)

    def wrap_model(self, model: nn.Module) -> PackedModel:
        """The ``RewardModel`` trained; a causal LM is converted first (fresh score head)."""
        if not is_sequence_classifier(model):
            model = self._as_classifier(model, self.tokenizer, self.config.seed)
        return RewardModel(model, attention=self.config.attention)

    def token_lists(self, data, name: str) -> tuple[list, ...]:
        """``(prompt_ids, chosen_ids, rejected_ids, margins)``; the margins travel with the
        examples when the base loop shuffles them."""
        return (*preference_token_lists(data, self.tokenizer, name, self.config.prompt_boundary),
                _margin_column(data, name))

    def pack_lists(self, lists, *, sort_by_length: bool) -> list[PackedBatch]:
        c = self.config
        return pack_preference_examples(
            *lists[:3], token_budget=c.token_budget, max_prompt_length=c.max_prompt_length,
            max_completion_length=c.max_completion_length, on_overflow=c.on_overflow, sort_by_length=sort_by_length,
            max_length=c.max_length,
        )

    def pair_margins(self, row: PackedBatch) -> torch.Tensor | None:
        """fp32 ``[E]`` margin of each training pair of ``row`` (None when all are 0)."""
        if self.config.margin == 0 and not bool(self._train_margins.any()):
            return None
        margins = self._train_margins[row.example_index.cpu()] + self.config.margin
        return margins.to(row.device)

    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        (num_pairs,) = self.global_sum(sum(row.num_examples for row in rows))
        num_pairs = int(num_pairs)
        totals: dict[str, float] = {}
        for index, row in enumerate(rows):
            with self.autocast():
                scores = self.forward(row)
            scores = scores._replace(chosen=self.finite("reward scores", scores.chosen),
                                     rejected=self.finite("reward scores", scores.rejected))
            loss = bradley_terry_loss(scores.chosen, scores.rejected, margin=self.pair_margins(row),
                                      center_rewards_coefficient=self.config.center_rewards_coefficient,
                                      num_pairs=num_pairs)
            self.backward(loss, last=index == len(rows) - 1)
            chosen, rejected = scores.chosen.detach(), scores.rejected.detach()
            sums = {
                "loss": float(loss.detach()) * num_pairs,  # undo the step normalization
                "accuracy": float((chosen > rejected).float().sum()),
                "margin": float((chosen - rejected).sum()),
                "rewards/chosen": float(chosen.sum()),
                "rewards/rejected": float(rejected.sum()),
            }
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
        metrics = {key: value / num_pairs for key, value in self.global_sums(totals).items()}
        metrics["pairs"] = num_pairs
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out reward accuracy (how often ``r(chosen) > r(rejected)``), the mean margin
        ``r_c − r_r`` and the mean rewards on ``eval_data``."""
        if not self.eval_rows:
            raise ValueError("evaluate() needs eval_data")
        was_training = self.policy.training
        self.policy.eval()
        chosen, rejected = [], []
        try:
            for row in self.eval_rows:
                with self.autocast():
                    scores = self.policy(row.to(self.device))
                chosen.append(scores.chosen.float().cpu())
                rejected.append(scores.rejected.float().cpu())
        finally:
            self.policy.train(was_training)
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        margins = chosen - rejected
        return {"pairs": float(margins.numel()), "reward_accuracy": float((margins > 0).float().mean()),
                "reward_margin": float(margins.mean()), "rewards/chosen": float(chosen.mean()),
                "rewards/rejected": float(rejected.mean())}
