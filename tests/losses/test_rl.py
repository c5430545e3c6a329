"""PPO/GRPO losses, KL estimators, GAE, aggregation and sequence reduction vs direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fastalign.losses import (aggregate, entropy_bonus, gae, grpo_advantages, grpo_loss, kl_estimate, ppo_policy_loss,
                              segment_ids_from_cu_seqlens, sequence_logps, value_loss, whiten)


def _batch(seed=0, b=4, t=6):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.4 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, t, generator=gen, dtype=torch.float64)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    return logp, old, adv, mask


def _ppo_token(lp, old, a, eps, eps_high, dual):
    r = math.exp(lp - old)
    loss = max(-a * r, -a * min(max(r, 1 - eps), 1 + eps_high))
    if dual is not None and a < 0:
        loss = min(loss, -a * dual)
    return loss


@pytest.mark.parametrize("eps_high,dual", [(None, None), (0.28, None), (None, 1.2)])
def test_ppo_policy_loss_formula(eps_high, dual):
    logp, old, adv, mask = _batch()
    out = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=eps_high, dual_clip=dual)
    values = [
        _ppo_token(logp[i, j].item(), old[i, j].item(), adv[i, j].item(), 0.2, eps_high or 0.2, dual)
        for i in range(4) for j in range(6) if mask[i, j]
    ]
    assert out.loss.item() == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert 0 < out.clip_fraction.item() < 1
    if dual is not None:
        plain = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
        assert out.loss.item() < plain.loss.item()


def test_ppo_gradcheck_and_sequence_advantages():
    logp, old, adv, mask = _batch(1)
    logp.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ppo_policy_loss(x, old, adv, mask).loss, (logp,))
    seq_adv = torch.randn(4, dtype=torch.float64)
    a = ppo_policy_loss(logp, old, seq_adv, mask).loss
    b = ppo_policy_loss(logp, old, seq_adv[:, None].expand(4, 6), mask).loss
    assert a.item() == b.item()


def test_aggregations_and_global_normalization():
    x = torch.arange(12, dtype=torch.float64).view(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert aggregate(x, mask, "token_mean").item() == pytest.approx((0 + 1 + 4 + 5 + 6 + 7 + 8) / 7)
    assert aggregate(x, mask, "seq_mean_token_sum").item() == pytest.approx((1 + 22 + 8) / 3)
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx((0.5 + 5.5 + 8) / 3)
    assert aggregate(x, mask, "seq_mean_token_sum_norm").item() == pytest.approx(31 / (3 * 4))
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_tokens=10).item() == pytest.approx(31 / 30)
    # Splitting the batch with global counts reproduces the whole-batch value.
    for mode, key, total in (("token_mean", "num_tokens", 7), ("seq_mean_token_mean", "num_sequences", 3)):
        whole = aggregate(x, mask, mode)
        parts = aggregate(x[:1], mask[:1], mode, **{key: total}) + aggregate(x[1:], mask[1:], mode, **{key: total})
        assert parts.item() == pytest.approx(whole.item())
    assert aggregate(x, torch.zeros_like(mask), "token_mean").item() == 0.0


def test_kl_estimators_are_unbiased_and_k3_nonnegative():
    gen = torch.Generator().manual_seed(0)
    logits_p, logits_q = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    logp, logq = logits_p.log_softmax(0), logits_q.log_softmax(0)
    true_kl = (logp.exp() * (logp - logq)).sum().item()
    samples = torch.multinomial(logp.exp(), 400_000, replacement=True, generator=gen)
    k1 = kl_estimate(logp[samples], logq[samples], "k1").mean().item()
    k3_values = kl_estimate(logp[samples], logq[samples], "k3")
    assert k1 == pytest.approx(true_kl, rel=0.05)
    assert k3_values.mean().item() == pytest.approx(true_kl, rel=0.05)
    assert (k3_values >= -1e-12).all()
    assert kl_estimate(logp[:3], logq[:3], "k2").tolist() == pytest.approx(
        (0.5 * (logp[:3] - logq[:3]) ** 2).tolist())


def _gae_reference(rewards, values, length, gamma, lam):
    adv, running = [0.0] * length, 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


def test_gae_against_per_sequence_recursion():
    gen = torch.Generator().manual_seed(2)
    rewards = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    values = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    lengths = [7, 3, 1]
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.9)
    for row, length in enumerate(lengths):
        expected = _gae_reference(rewards[row].tolist(), values[row].tolist(), length, 0.99, 0.9)
        assert adv[row, :length].tolist() == pytest.approx(expected, rel=1e-12)
        assert adv[row, length:].abs().sum() == 0
        assert ret[row, :length].tolist() == pytest.approx((adv[row, :length] + values[row, :length]).tolist())


def test_value_loss_clipping():
    values = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    old = torch.tensor([[0.0, 2.5]], dtype=torch.float64)
    returns = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    # token 0: unclipped (1-0.5)^2 = .25, clipped V = 0.2 -> (0.2-0.5)^2 = .09 -> max .25
    # token 1: unclipped 0, clipped V = 2.3 -> .09 -> max .09
    assert value_loss(values, old, returns, mask, clip_eps=0.2).item() == pytest.approx(0.5 * (0.25 + 0.09) / 2)
    assert value_loss(values, old, returns, mask, clip_eps=None).item() == pytest.approx(0.5 * 0.25 / 2)


def test_grpo_advantages_and_loss():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    adv = grpo_advantages(rewards, 3)
    group = [1.0, 0.0, 0.0]
    mean, std = sum(group) / 3, math.sqrt(sum((g - 1 / 3) ** 2 for g in group) / 2)
    assert adv[:3].tolist() == pytest.approx([(g - mean) / (std + 1e-4) for g in group])
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]
    assert grpo_advantages(rewards, 3, scale="none")[:3].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    logp, old, _, mask = _batch(3, b=6)
    ref = logp.detach() + 0.1
    plain = grpo_loss(logp, old, adv, mask)
    with_kl = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, beta=0.04)
    kl = aggregate(kl_estimate(logp, ref, "k3"), mask, "seq_mean_token_mean")
    assert with_kl.loss.item() == pytest.approx(plain.loss.item() + 0.04 * kl.item(), rel=1e-12)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, old, adv, mask, beta=0.1)


def test_whiten_and_entropy_bonus():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    w = whiten(x, mask)
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-9) and w[0, 3] == 0
    assert entropy_bonus(x, mask, 0.01).item() == pytest.approx(-0.01 * 2.0)


def test_sequence_reduction_packed_and_padded():
    gen = torch.Generator().manual_seed(4)
    token_logps = -torch.rand(10, generator=gen, dtype=torch.float64)
    segments = torch.tensor([-1, 0, 0, 0, -1, 2, 2, 1, 1, -1])
    out = sequence_logps(token_logps, segment_ids=segments, num_sequences=3)
    for s in range(3):
        picked = [token_logps[i].item() for i in range(10) if segments[i] == s]
        assert out.sums[s].item() == pytest.approx(sum(picked))
        assert out.counts[s].item() == len(picked)
        assert out.means[s].item() == pytest.approx(sum(picked) / len(picked))
    cu = torch.tensor([0, 3, 3, 10])
    by_cu = sequence_logps(token_logps, cu_seqlens=cu)
    assert by_cu.counts.tolist() == [3, 0, 7] and by_cu.means[1].item() == 0.0
    assert segment_ids_from_cu_seqlens(cu).tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 2, 2]
    padded = token_logps.view(2, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    by_row = sequence_logps(padded, mask=mask)
    assert by_row.sums.tolist() == pytest.approx([padded[0, :2].sum().item(), padded[1].sum().item()])
    with pytest.raises(ValueError, match="cu_seqlens covers"):
        sequence_logps(token_logps, cu_seqlens=torch.tensor([0, 4]))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda l, o, a, m: ppo_policy_loss(l, o[:2], a, m), "old_logprobs has shape"),
        (lambda l, o, a, m: ppo_policy_loss(l, o, a, m, clip_eps=0.0), "clip_eps"),
        (lambda l, o, a, m: ppo_policy_loss(l, o, a, m, dual_clip=0.5), "dual_clip"),
        (lambda l, o, a, m: ppo_policy_loss(l, o, a, m, aggregation="mean"), "mode must be one of"),
        (lambda l, o, a, m: kl_estimate(l, o, "k4"), "kind"),
        (lambda l, o, a, m: gae(l, o, m, gamma=1.5), "gamma"),
        (lambda l, o, a, m: grpo_advantages(l.reshape(-1), 5), "multiple of group_size"),
        (lambda l, o, a, m: aggregate(l, m, num_tokens=0), "num_tokens"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(*_batch())
