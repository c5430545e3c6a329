"""Ulysses sequence parallelism under torchrun (gloo, 4 processes), launched once by
``test_sequence_parallel.py``:

    python -m torch.distributed.run --standalone --nproc-per-node 4 sp_run.py OUT STEPS

1. DPO on one packed row split over 2 ranks (ranks {0, 1} and {2, 3} each form a group and
   compute the same): rank 0 writes ``OUT/<family>.pt`` (loss and every gradient, summed over
   the group as the trainer's DDP does) and ``OUT/llama-mutated.pt``: the same with a wrong
   all-to-all (received chunks joined in reverse rank order), which the test must tell apart.
   ``dpo_on_row`` also gives the single-process result.
2. The DPO trainer of ``dpo_run.py`` with ``sequence_parallel=2``: 2 sequence-parallel ranks x
   2 DDP replicas for STEPS steps; rank 0 writes ``OUT/history.json``.
One launch for both: starting the processes costs more than either part.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fastalign.attention import SequenceParallelGroup, ulysses
from fastalign.losses import dpo_loss
from fastalign.models import PolicyModel, packed_logprobs
from fastalign.packing import PackedBatch, pack_preference_examples
from tests.models.tiny_models import example_lists, tiny_model

FAMILIES = ("llama", "gemma2", "mistral")


def odd_row() -> PackedBatch:
    """The four tiny examples in one row of 41 tokens: odd, so two ranks need a padding token."""
    prompts, chosen, rejected = example_lists()
    prompts[0] = prompts[0] + [7]
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    assert row.num_tokens % 2 == 1
    return row


def dpo_on_row(family: str, group: SequenceParallelGroup | None) -> dict[str, torch.Tensor]:
    """Sigmoid-DPO loss of the row (policy seed 0, reference seed 1) and every policy gradient."""
    row = odd_row()
    policy = PolicyModel(tiny_model(family).train(), sequence_parallel=group)
    reference = PolicyModel(tiny_model(family, seed=1).requires_grad_(False), sequence_parallel=group)
    with torch.no_grad():
        ref = packed_logprobs(reference, row)
    out = packed_logprobs(policy, row)
    loss = dpo_loss(out.chosen, out.rejected, ref.chosen, ref.rejected, beta=0.5, num_pairs=row.num_examples).loss
    loss.backward()
    result = {"loss": loss.detach()}
    for name, parameter in policy.model.named_parameters():
        grad = parameter.grad
        if group is not None:  # each rank holds its part of the gradient
            dist.all_reduce(grad, group=group.group)
        result[name] = grad
    return result


def _reversed_exchange(x, scatter_dim, gather_dim, group):
    """The mutation: an all-to-all that joins the received chunks in the wrong (reversed) order."""
    send = torch.stack(x.chunk(group.size, dim=scatter_dim)).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group.group)
    return torch.cat(list(reversed(received.unbind(0))), dim=gather_dim)


def main(out: Path, steps: int) -> None:
    from tests.distributed.dpo_run import finish, make_trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # collective: every rank creates both
    group = SequenceParallelGroup(pairs[dist.get_rank() // 2], dist.get_rank() % 2, 2)
    results = {family: dpo_on_row(family, group) for family in FAMILIES}
    exchange, ulysses._exchange = ulysses._exchange, _reversed_exchange
    results["llama-mutated"] = dpo_on_row("llama", group)
    ulysses._exchange = exchange
    if dist.get_rank() == 0:
        for name, result in results.items():
            torch.save(result, out / f"{name}.pt")
    trainer = make_trainer(str(out), "ddp", steps, sequence_parallel=2)  # reuses the process group
    finish(trainer, trainer.train(), str(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
