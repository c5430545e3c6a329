"""Which packed rows each optimizer step trains on: a mixin of ``Trainer`` (``train/base.py``).

Examples are visited once per epoch in a seeded order (the same on resume, different every
epoch). A step is either ``rows_per_step`` rows of the epoch's packing (every example packed
first-fit in that order), or, when the config sets a count (``pairs_per_step`` for DPO and
reward models, ``examples_per_step`` for SFT), exactly that many examples: the next ones in the
order, wrapping into the next epoch, packed into as many rows as ``token_budget`` needs. Both
normalize the loss by the step's total pair / token count, so how the examples fall into rows
does not change it.
"""

from __future__ import annotations

import torch

from fastalign.packing import PackedBatch
from fastalign.train import distributed


class StepRows:
    """Data-order methods of ``Trainer`` (see there for ``config``, ``train_lists``, ``epoch``,
    ``position``; with a per-step example count, ``position`` counts examples, else rows)."""

    def epoch_order(self, epoch: int, count: int) -> torch.Tensor:
        """The seeded permutation of ``count`` training items for ``epoch`` (int64 ``[count]``):
        the same on resume, different every epoch."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(count, generator=generator)

    @staticmethod
    def check_step_examples(config, world_size: int) -> None:
        """A per-step example count is not split over ranks: refused under torchrun (each rank
        would pack a different number of rows, and the collectives of every row's forward would
        not match)."""
        count = config.step_examples()
        if count is not None and world_size > 1:
            raise ValueError(f"{config.step_examples_option()}={count} runs in a single process; under torchrun "
                             "set rows_per_step (packed rows per step) instead")

    def rows_for_epoch(self, epoch: int) -> list[PackedBatch]:
        """Every training example once, shuffled by ``(seed, epoch)`` and packed first-fit in
        that order. Re-packing each epoch with unsorted first-fit matters: length-sorted rows
        (first-fit-decreasing) give each step examples of one size and train far worse."""
        if self._epoch_rows is not None and self._epoch_rows[0] == epoch:
            return self._epoch_rows[1]
        order = self.epoch_order(epoch, len(self.train_lists[0]))
        rows = self._pack_examples(order)
        self._epoch_rows = (epoch, rows)
        return rows

    def _pack_examples(self, indices: torch.Tensor) -> list[PackedBatch]:
        """The training examples ``indices`` (int64, in that order) packed first-fit; each row's
        ``example_index`` refers to ``train_data``."""
        picked = indices.tolist()
        rows = self.pack_lists(tuple([column[i] for i in picked] for column in self.train_lists),
                               sort_by_length=False)
        for row in rows:
            row.example_index = indices[row.example_index]  # back to indices of train_data
        return rows

    def next_rows(self) -> list[PackedBatch]:
        """This rank's share of the next step's rows; in a single process, all of them."""
        count = self.config.step_examples()
        rows = self._next_packed_rows() if count is None else self._next_examples(count)
        if self.dist.enabled:  # per data-parallel replica: the ranks of one sequence-parallel group share rows
            layout = self.parallel
            mine = distributed.assign_rows([row.num_tokens for row in rows], layout.replicas)[layout.replica]
            rows = [rows[index] for index in mine]
        return [row.to(self.device, non_blocking=True) for row in rows]

    def _next_packed_rows(self) -> list[PackedBatch]:
        """The next ``rows_per_step`` rows of the current epoch's packing (wrapping into the next)."""
        rows = []
        epoch_rows = self.rows_for_epoch(self.epoch)
        while len(rows) < self.config.rows_per_step:
            if self.position >= len(epoch_rows):
                self.epoch, self.position = self.epoch + 1, 0
                epoch_rows = self.rows_for_epoch(self.epoch)
            rows.append(epoch_rows[self.position])
            self.position += 1
        return rows

    def _next_examples(self, count: int) -> list[PackedBatch]:
        """The next ``count`` examples of the epoch order (wrapping into the next epoch), packed
        into as many rows as the token budget needs."""
        total = len(self.train_lists[0])
        picked, taken = [], 0
        order = self.epoch_order(self.epoch, total)
        while taken < count:
            if self.position >= total:
                self.epoch, self.position = self.epoch + 1, 0
                order = self.epoch_order(self.epoch, total)
            take = min(count - taken, total - self.position)
            picked.append(order[self.position:self.position + take])
            self.position += take
            taken += take
        return self._pack_examples(torch.cat(picked))
