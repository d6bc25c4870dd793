"""Prompts for on-policy RL: which problems each rank practises at each optimizer step, and the held-out set.

At step s, with W ranks and E = examples_per_step / W prompts per rank, rank r takes the next E problems of its
own share `range(r, N, W)` of the N training problems, cycling over it (nanochat chat_rl.py: `itertools.cycle(
range(rank, N, world_size))`). So a step's prompts are a function of the step alone: a resumed run starts the
stream at the restored global step and practises exactly the prompts the uninterrupted run would have. The ranks
of a step together take problems sE·W ... (s+1)E·W - 1 (until the first wrap-around), the same problems one
process takes alone. There is no sampler, so Lightning adds no DistributedSampler (which pads ranks with repeats).

The batch is the prompts, not the rollouts: the stage samples from the policy in its training_step. A dataset
that sampled from the policy itself (Lightning's PPO example) would be off-policy by a step, because Lightning
fetches one batch ahead: step s+1's rollouts would be drawn before step s's update.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from nanochat_pl.common import UserError
from nanochat_pl.tasks.task import Conversation, Task

PromptBatch = dict[str, Any]  # {"step": int, "indices": list[int], "conversations": list[Conversation]}


def prompt_indices(step: int, rank: int, world_size: int, per_rank: int, num_problems: int) -> list[int]:
    """The problems rank `rank` practises at optimizer step `step` (see the module docstring)."""
    share = range(rank, num_problems, world_size)
    if not share:
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
            conversations: list[Conversation] = [self.task[i] for i in indices]
            yield {"step": step, "indices": indices, "conversations": conversations}


class RLDataModule(L.LightningDataModule):
    """The problems RL practises on and the held-out problems it is measured on.

    Any task with a `reward` (and, for the held-out set, an `evaluate`) will do: GSM8K for the real run, the
    generated arithmetic problems for the CPU demo, or a user's own.

    Args:
        train: The problems to practise; one epoch is len(train) // examples_per_step steps (nanochat).
        val: Held-out problems for pass@k; none: no evaluation.
        examples_per_step: Prompts per optimizer step over all ranks (a multiple of the number of ranks).
        val_examples: How many of the held-out problems are evaluated (the first ones, rank-strided).
    """

    def __init__(self, train: Task, val: Task | None = None, examples_per_step: int = 16, val_examples: int = 400):
        super().__init__()
        if examples_per_step < 1 or val_examples < 1:
            raise UserError("data.examples_per_step and data.val_examples must be at least 1")
        self.train, self.val = train, val
        self.examples_per_step, self.val_examples = examples_per_step, val_examples
        self.rank, self.world_size = 0, 1
        self._loaded_state: dict[str, Any] | None = None

    @property
    def per_rank(self) -> int:
        return self.examples_per_step // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        steps = len(self.train) // self.examples_per_step
        if steps == 0:
            raise UserError(f"{len(self.train)} RL problems are fewer than one step's {self.examples_per_step}")
        return steps

    def prepare_data(self) -> None:
        """Load (download, once per machine) the tasks' data before the ranks read it."""
        for task in (self.train, self.val):
            if task is not None:
                len(task)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        if self.examples_per_step % self.world_size:
            raise UserError(
                f"data.examples_per_step={self.examples_per_step} is not a multiple of the {self.world_size} ranks"
            )

    def train_dataloader(self) -> DataLoader:
        self._check_loaded_state()
        # the trainer has restored its step by now: a resumed run goes on with the next step's prompts
        stream = PromptStream(self.train, self.per_rank, self.rank, self.world_size, self.trainer.global_step)
        return DataLoader(stream, batch_size=None, num_workers=0)

    # A step's prompts depend on the step, the number of prompts per step and the training set, not on the number
    # of ranks (the ranks share a step's prompts among themselves): the checkpoint records what must not change.

    def state_dict(self) -> dict[str, Any]:
        return {"examples_per_step": self.examples_per_step, "problems": len(self.train)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = state_dict

    def _check_loaded_state(self) -> None:
        saved, self._loaded_state = self._loaded_state, None
        if saved is not None and saved != self.state_dict():
            raise UserError(
                f"cannot resume RL exactly: the checkpoint practised {saved['examples_per_step']} of "
                f"{saved['problems']} problems per step, this run {self.examples_per_step} of {len(self.train)}"
            )
