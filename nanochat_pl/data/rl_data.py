"""Prompts for on-policy RL: which problems each rank practises at each optimizer step, and the held-out set.

At step s, rank r of W takes the next examples_per_step / W problems of its share `range(r, N, W)` of the N
training problems, cycling over it (nanochat chat_rl.py): a step's prompts are a function of the step alone, so a
resumed run practises exactly the uninterrupted run's prompts. The batch is the prompts, not the rollouts: sampled
in the DataLoader, rollouts would be off-policy by a step, since Lightning fetches one batch ahead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from nanochat_pl.common import UserError
from nanochat_pl.data.stream import StreamDataModule
from nanochat_pl.tasks.task import Task

PromptBatch = dict[str, Any]  # {"step": int, "indices": list[int], "conversations": list[Conversation]}


def prompt_indices(step: int, rank: int, world_size: int, per_rank: int, num_problems: int) -> list[int]:
    if not (share := range(rank, num_problems, world_size)):
        raise UserError(f"{num_problems} RL problems cannot be shared among {world_size} ranks")
    first = step * per_rank
    return [share[(first + k) % len(share)] for k in range(per_rank)]


class PromptStream(IterableDataset):
    """One batch of prompts per optimizer step, endlessly, from `start_step` on."""

    def __init__(self, task: Task, per_rank: int, rank: int, world_size: int, start_step: int):
        self.task, self.per_rank = task, per_rank
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def __iter__(self) -> Iterator[PromptBatch]:
        for step in itertools.count(self.start_step):
            indices = prompt_indices(step, self.rank, self.world_size, self.per_rank, len(self.task))
            yield {"step": step, "indices": indices, "conversations": [self.task[i] for i in indices]}


class RLDataModule(StreamDataModule):
    """The problems RL practises on and the held-out problems it is measured on: any task with a `reward` (and, held
    out, an `evaluate`), such as GSM8K, Arithmetic or a user's own.

    Args:
        train: The problems to practise; one epoch is len(train) // examples_per_step steps (nanochat).
        val: Held-out problems for pass@k; none: no evaluation.
        examples_per_step: Prompts per optimizer step over all ranks (a multiple of the number of ranks).
        val_examples: How many of the held-out problems are evaluated (the first ones, rank-strided).
    """

    resumes = "RL"

    def __init__(self, train: Task, val: Task | None = None, examples_per_step: int = 16, val_examples: int = 400):
        super().__init__()
        if examples_per_step < 1 or val_examples < 1:
            raise UserError("data.examples_per_step and data.val_examples must be at least 1")
        self.train, self.val = train, val
        self.examples_per_step, self.val_examples = examples_per_step, val_examples

    @property
    def steps_per_epoch(self) -> int:
        if (steps := len(self.train) // self.examples_per_step) == 0:
            raise UserError(f"{len(self.train)} RL problems are fewer than one step's {self.examples_per_step}")
        return steps

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.examples_per_step % self.world_size:
            raise UserError(
                f"data.examples_per_step={self.examples_per_step} is not a multiple of {self.world_size} ranks"
            )

    def train_dataloader(self) -> DataLoader:
        self._restore_loaded_state()
        # the trainer has restored its step by now: a resumed run goes on with the next step's prompts
        per_rank = self.examples_per_step // self.world_size
        stream = PromptStream(self.train, per_rank, self.rank, self.world_size, self.trainer.global_step)
        return DataLoader(stream, batch_size=None, num_workers=0)

    def _layout(self) -> dict[str, Any]:
        # a step's prompts depend on these and the step, not on the number of ranks (they share a step's prompts)
        return {"examples_per_step": self.examples_per_step, "problems": len(self.train)}
