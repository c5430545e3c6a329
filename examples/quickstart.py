"""Per-token log-probs and a cross-entropy loss straight from hidden states.

No [tokens x vocab] logits tensor is ever allocated; on a CUDA machine the Triton kernels run,
elsewhere the chunked PyTorch path with the same semantics.
"""

import torch

from fastalign import linear_cross_entropy, linear_logprobs

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
batch, seq, hidden_size, vocab = 2, 128, 256, 32000

hidden = torch.randn(batch, seq, hidden_size, device=device, requires_grad=True)  # final hidden states
lm_head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device)
labels = torch.randint(0, vocab, (batch, seq), device=device)
labels[:, :32] = -100  # prompt tokens are not scored

# Log-prob of each next token (position i predicts labels[:, i + 1]) and the entropy of each row.
out = linear_logprobs(hidden[:, :-1], lm_head.weight, labels[:, 1:], return_entropy=True)
print("sequence log-probs:", out.logprobs.sum(-1).tolist())
print("mean entropy of scored rows:", out.entropy[labels[:, 1:] != -100].mean().item())

# Causal-LM loss; drop-in for Cut Cross-Entropy's linear_cross_entropy(e, c, targets, shift=...).
loss = linear_cross_entropy(hidden, lm_head.weight, labels, shift=True)
loss.backward()
print(f"loss {loss.item():.4f}; grad norms: hidden {hidden.grad.norm():.3e}, "
      f"lm_head {lm_head.weight.grad.norm():.3e}")

# Check against the naive full-logits computation.
logits = (hidden[:, :-1] @ lm_head.weight.T).float()
naive = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), labels[:, 1:].reshape(-1))
print(f"naive loss {naive.item():.4f} (difference {abs(naive.item() - loss.item()):.1e})")
assert abs(naive.item() - loss.item()) < 1e-4

# A DPO step on the LM head: chosen rows first, then rejected; reference under no_grad.
from fastalign import FusedLinearDPOLoss  # noqa: E402  (same interface as Liger's)

pairs = 2
policy_hidden = torch.randn(2 * pairs, seq, hidden_size, device=device, requires_grad=True)
reference_hidden = policy_hidden.detach() + 0.01 * torch.randn_like(policy_hidden)
answer_targets = torch.randint(0, vocab, (2 * pairs, seq), device=device)
answer_targets[:, :96] = -100  # the shared prompt
dpo = FusedLinearDPOLoss(beta=0.1)
loss, (chosen_logps, rejected_logps, *_, chosen_rewards, rejected_rewards) = dpo(
    lm_head.weight, policy_hidden, answer_targets, None, reference_hidden, lm_head.weight.detach()
)
loss.backward()
print(f"DPO loss {loss.item():.4f}, reward margins {(chosen_rewards - rejected_rewards).tolist()}")
