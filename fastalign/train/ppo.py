"""``PPOTrainer``: RLHF's PPO with a critic (Ouyang et al. 2022; Schulman et al. 2017).

Per rollout batch: one completion per prompt from the current policy; a sequence reward from
``reward_fn`` (a verifier or a reward model) placed on the last token; a per-token KL penalty
``−kl_coef · KL(π_old || π_ref)`` (k1 or k3; fixed or adaptive coefficient, Ziegler et al.
2019); values from the critic; GAE advantages and returns; then ``ppo_epochs`` optimizer
steps over the same rollout, each a pass over its packed rows with the clipped surrogate, the
clipped value loss and an entropy bonus. Policy log-probs and entropies come from the fused
kernel at the sampling temperature: no full-vocabulary logits in the training pass.
"""

from __future__ import annotations

import copy
import torch
from torch import nn

from fastalign.losses.rl import gae, kl_estimate, ppo_policy_loss, value_loss
from fastalign.losses.sequence import pad_by_sequence
from fastalign.models import PolicyModel
from fastalign.models.reward import RewardModel, is_sequence_classifier
from fastalign.packing import PackedBatch
from fastalign.rollout.rewards import RewardFn
from fastalign.train.rl_base import RolloutTrainer
from fastalign.train.config import PPOConfig  # noqa: F401 - re-exported


class ActorCritic(nn.Module):
    """The trained module: the policy (fused log-prob head) and the critic (scalar head)."""

    def __init__(self, actor: PolicyModel, critic: RewardModel) -> None:
        super().__init__()
        self.actor, self.critic = actor, critic

    @property
    def model(self) -> nn.Module:
        """The policy's HF model (what is generated from and exported)."""
        return self.actor.model

    def forward(self, row: PackedBatch, *, temperature: float = 1.0, return_entropy: bool = False):
        """``(TokenLogprobs of the actor, critic values fp32 [M])``: one call, so DDP sees both."""
        return self.actor(row, temperature=temperature, return_entropy=return_entropy), self.critic.token_scores(row)


class PPOTrainer(RolloutTrainer):
    """PPO on the prompts of ``train_data`` rewarded by ``reward_fn``.

    Args:
        model: the SFT causal LM (the policy; the reference is a frozen copy of it).
        critic: a ``*ForSequenceClassification`` (``num_labels=1``) or a ``RewardModel`` for the
            values; default: a copy of ``model``'s backbone with a fresh value head.
    """

    config: PPOConfig
    progress_metrics = {"loss": "loss", "reward": "reward", "kl_to_reference": "kl"}

    def __init__(self, model: nn.Module, tokenizer, train_data, config: PPOConfig, *, reward_fn: RewardFn,
                 critic: nn.Module | None = None, eval_data=None) -> None:
        if not isinstance(config, PPOConfig):
            raise ValueError(f"config must be a PPOConfig, got {type(config).__name__}")
        if critic is not None and not (isinstance(critic, RewardModel) or is_sequence_classifier(critic)):
            raise ValueError("critic must be a RewardModel or a *ForSequenceClassification with num_labels=1")
        self._critic_arg = critic
        super().__init__(model, tokenizer, train_data, config, reward_fn=reward_fn, eval_data=eval_data)
        frozen = copy.deepcopy(self.policy.actor.model).eval().requires_grad_(False)
        self.reference = PolicyModel(frozen, attention=config.attention)
        self.kl_coef = config.kl_coef
        self._rollout: dict | None = None

    def wrap_model(self, model: nn.Module) -> ActorCritic:
        actor = PolicyModel(model, attention=self.config.attention)
        critic = self._critic_arg
        if critic is None:
            critic = RewardModel.from_causal_lm(model, seed=self.config.seed, attention=self.config.attention)
        elif not isinstance(critic, RewardModel):
            critic = RewardModel(critic, attention=self.config.attention)
        return ActorCritic(actor, critic.to(self.device))

    def checkpoint_module(self) -> nn.Module:
        return nn.ModuleDict({"actor": self.policy.actor.model, "critic": self.policy.critic.model})

    def rank_state(self) -> dict:
        """The adaptive KL coefficient and the rollout still being trained on (its remaining PPO
        epochs), so a resumed run continues on the same samples instead of drawing new ones."""
        return {"kl_coef": self.kl_coef, "rollout": _moved(self._rollout, torch.device("cpu"))}

    def load_rank_state(self, state: dict) -> None:
        if state:
            self.kl_coef = state["kl_coef"]
            self._rollout = _moved(state["rollout"], self.device)

    # -- rollout: sample, score, values, KL-shaped rewards, GAE ---------------------------
    @torch.no_grad()
    def _prepare(self, rows: list[PackedBatch], rewards: torch.Tensor) -> list[dict]:
        c = self.config
        prepared = []
        for row in rows:
            with self.autocast():
                old = self.policy.actor(row, temperature=c.temperature).logprobs.float()
                ref = self.reference(row, temperature=c.temperature).logprobs.float()
                values = self.policy.critic.token_scores(row).float()
            old, ref = self.finite("rollout log-probs", old), self.finite("reference log-probs", ref)
            values = self.finite("critic values", values)
            old_p, mask = pad_by_sequence(old, row.label_example, row.num_examples)
            ref_p = pad_by_sequence(ref, row.label_example, row.num_examples)[0]
            values_p = pad_by_sequence(values, row.label_example, row.num_examples)[0]
            kl = kl_estimate(old_p, ref_p, c.kl_estimator) * mask
            token_rewards = -self.kl_coef * kl
            last = mask.sum(1) - 1  # the sequence reward lands on each answer's last token
            token_rewards[torch.arange(row.num_examples, device=self.device), last] += rewards.to(self.device)[row.example_index]
            advantages, returns = gae(token_rewards, values_p, mask, gamma=c.gamma, lam=c.lam)
            prepared.append(dict(old=old_p, values=values_p, advantages=advantages, returns=returns, mask=mask,
                                 kl=float(kl.sum())))
        if c.whiten_advantages:  # over the whole rollout batch (every rank's), not per row
            flat = torch.cat([p["advantages"][p["mask"]] for p in prepared])
            mean, std = self.global_mean_std(flat)
            flat = ((flat.double() - mean) / (std * std + 1e-8) ** 0.5).to(flat.dtype)
            offset = 0
            for p in prepared:
                count = int(p["mask"].sum())
                p["advantages"] = p["advantages"].masked_scatter(p["mask"], flat[offset : offset + count])
                offset += count
        return prepared

    def next_rows(self) -> list[PackedBatch]:
        """A new rollout every ``ppo_epochs`` steps; the same rows (and targets) in between."""
        c = self.config
        if self._rollout is None or self._rollout["epochs_left"] == 0:
            rollout, rewards, rows = self.rollout(self.local_prompts(c.prompts_per_step))
            prepared = self._prepare(rows, rewards)
            kl_sum, tokens, sampled = self.global_sum(sum(p["kl"] for p in prepared),
                                                      sum(row.targets.numel() for row in rows),
                                                      sum(len(ids) for ids in rollout.completion_ids))
            kl = kl_sum / max(tokens, 1)
            self._update_kl_coef(kl, c.prompts_per_step)
            # A non-finite rollout taints every PPO epoch trained on it (each step is skipped).
            self._rollout = dict(rows=rows, prepared=prepared, rewards=rewards, kl=kl, epochs_left=c.ppo_epochs,
                                 lengths=sampled / c.prompts_per_step, nonfinite=self._nonfinite)
        self._rollout["epochs_left"] -= 1
        return self._rollout["rows"]

    def _update_kl_coef(self, kl: float, batch: int) -> None:
        """Proportional controller towards ``kl_target`` (Ziegler et al. 2019)."""
        if self.config.kl_target is None:
            return
        error = max(min(kl / self.config.kl_target - 1, 0.2), -0.2)
        self.kl_coef *= 1 + error * batch / self.config.kl_horizon

    # -- the loss -------------------------------------------------------------------------
    def accumulate(self, rows: list[PackedBatch]) -> dict[str, float]:
        c = self.config
        (num_tokens,) = self.global_sum(sum(row.targets.numel() for row in rows))  # the whole step's tokens
        num_tokens = int(num_tokens)
        totals = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0,
                  "approx_kl": 0.0}
        if self._rollout.get("nonfinite") and self._nonfinite is None:
            self._nonfinite = self._rollout["nonfinite"]
        for index, (row, target) in enumerate(zip(rows, self._rollout["prepared"])):
            with self.autocast():
                out, values = self.forward(row, temperature=c.temperature, return_entropy=c.entropy_coef > 0)
            new, mask = pad_by_sequence(self.finite("policy log-probs", out.logprobs.float()), row.label_example,
                                        row.num_examples)
            values_p = pad_by_sequence(self.finite("critic values", values.float()), row.label_example,
                                       row.num_examples)[0]
            policy = ppo_policy_loss(new, target["old"], target["advantages"], mask, clip_eps=c.clip_eps,
                                     num_tokens=num_tokens)
            critic = value_loss(values_p, target["values"], target["returns"], mask, clip_eps=c.value_clip_eps,
                                num_tokens=num_tokens)
            loss = policy.loss + c.vf_coef * critic
            entropy = out.entropy
            entropy = self.finite("entropy", entropy.float()).sum() / num_tokens if entropy is not None else None
            if entropy is not None:
                loss = loss - c.entropy_coef * entropy
            self.backward(loss, last=index == len(rows) - 1)
            share = row.targets.numel() / num_tokens
            totals["loss"] += float(loss.detach())
            totals["policy_loss"] += float(policy.loss.detach())
            totals["value_loss"] += float(critic.detach())
            totals["entropy"] += float(entropy.detach()) if entropy is not None else 0.0
            totals["clip_fraction"] += float(policy.clip_fraction) * share
            totals["approx_kl"] += float(policy.approx_kl) * share
        reward, _ = self.global_mean_std(self._rollout["rewards"])
        return {**self.global_sums(totals), "reward": reward, "kl_to_reference": self._rollout["kl"],
                "kl_coef": self.kl_coef, "completion_length": self._rollout["lengths"]}


def _moved(value, device: torch.device):
    """``value`` (nested dicts / lists of tensors and ``PackedBatch``) with its tensors on ``device``."""
    if isinstance(value, (torch.Tensor, PackedBatch)):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, device) for item in value]
    return value

