"""What the pretraining, chat and RL data modules share: ranks, worker rotation, and a state that resumes exactly.

A rank's training data is read by `max(1, num_workers)` readers, reader r = rank x slots + worker slot. Each
training batch carries its reader's position after it; `on_before_batch_transfer`, called for exactly the batches
trained on (Lightning and the workers prefetch more), records it, so the LightningModule must not override that
hook. Workers hand out batches in strict rotation, so after n batches a new iteration continues with worker j as
slot (n + j) mod W. The positions of every rank go into the checkpoint through the LightningDataModule's
`state_dict` (the DataLoader's Stateful protocol loses them when `trainer.estimated_stepping_batches` is read
first); a resume with another `_layout()` is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nanochat_pl.common import UserError
from nanochat_pl.tasks.task import Task
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer

Batch = tuple[torch.Tensor, torch.Tensor, Any]  # (inputs, targets, the reader's position after them)
STATE_VERSION = 2  # of the checkpoint's data state; 2: positions as plain lists


@dataclass
class StreamProgress:
    """A rank's readers' positions after their last trained batch, and how many batches: where iterations start."""

    positions: dict[int, Any] = field(default_factory=dict)
    consumed: int = 0


@dataclass(kw_only=True)
class ReaderStream(IterableDataset):
    """One rank's training batches `(inputs, targets, position)`, endlessly, each DataLoader worker one reader starting
    where `progress` left it; subclasses implement `batches(reader, num_readers, position or None: the start)`."""

    rank: int = 0
    world_size: int = 1
    progress: StreamProgress = field(default_factory=StreamProgress)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # after n batches the next comes from worker slot n mod W, and a new iteration starts at worker 0
        reader = self.rank * workers + (self.progress.consumed + worker) % workers
        return self.batches(reader, self.world_size * workers, self.progress.positions.get(reader))


@dataclass
class FixedBatches(IterableDataset):
    """Validation: the same first `num_batches` batches `(inputs, targets)` of reader `rank` of `world_size`."""

    stream: ReaderStream
    num_batches: int

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.stream.batches(self.stream.rank, self.stream.world_size, None)
        for inputs, targets, _ in itertools.islice(batches, self.num_batches):
            yield inputs, targets


def rows_to_masked_batch(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows of T+1 tokens, ids and -(id+1) (no loss) -> inputs (B, T) and targets (B, T), -1 where no loss:
    the target at t is the token at t+1, trained if that token is."""
    rows = np.stack(rows)
    ids = np.where(rows < 0, -rows - 1, rows)
    targets = np.where(rows[:, 1:] < 0, -1, ids[:, 1:])
    return torch.from_numpy(np.ascontiguousarray(ids[:, :-1])), torch.from_numpy(np.ascontiguousarray(targets))


class StreamDataModule(L.LightningDataModule):
    """A LightningDataModule whose training stream resumes exactly (see the module docstring). Subclasses whose
    batches carry positions set `position_type` and the attributes used here, and implement `_stream(split)`."""

    position_type: ClassVar[type | None] = None
    resumes = "the data stream"  # for the refusal: "cannot resume the data stream exactly"

    def __init__(self, num_workers: int = 0, val_tokens: int = 1) -> None:
        super().__init__()
        if num_workers < 0 or val_tokens < 1:
            raise UserError(f"data.num_workers must be >= 0 and data.val_tokens >= 1, got {num_workers}, {val_tokens}")
        self.rank, self.world_size, self.num_workers, self.val_tokens = 0, 1, num_workers, val_tokens
        self.progress = StreamProgress()  # this rank's readers, after the batches trained on
        self._loaded_state: dict[str, Any] | None = None

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.tokenizer_dir)

    @property
    def num_slots(self) -> int:
        return max(1, self.num_workers)

    def prepare_data(self) -> None:
        for value in vars(self).values():  # load (download, once per machine) every task's data before the ranks do
            if isinstance(value, Task):
                len(value)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size

    def _layout(self) -> dict[str, Any]:  # what must not change for the saved positions to mean the same data
        layout = {"world_size": self.world_size, "readers_per_rank": self.num_slots}
        return layout | {"device_batch_size": self.device_batch_size, "sequence_len": self.sequence_len}

    def train_dataloader(self) -> DataLoader:
        self.setup()
        self._restore_loaded_state()
        return _loader(self._stream("train"), self.num_workers)

    def _val_dataloader(self) -> DataLoader:
        self.setup()
        tokens_per_batch = self.device_batch_size * self.sequence_len * self.world_size
        if (num_batches := self.val_tokens // tokens_per_batch) == 0:
            raise UserError(f"data.val_tokens={self.val_tokens} is under one batch on all ranks ({tokens_per_batch})")
        return _loader(FixedBatches(self._stream("val"), num_batches), 0)  # read in the training process

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the position a training batch carries and hand `(inputs, targets)` to the model."""
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            inputs, targets, position = batch
            self.progress.positions[position.reader] = position
            self.progress.consumed += 1
            return inputs, targets
        return tuple(batch) if isinstance(batch, list) else batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's reader positions after the last batch it trained on (a collective call under DDP)."""
        if self._loaded_state is not None:  # restored but not trained on yet: still where we are
            return self._loaded_state
        # plain values and lists: Lightning may load checkpoints with torch.load(weights_only=True)
        positions = [dataclasses.asdict(p) for p in self.progress.positions.values()]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.world_size > 1:
            # the checkpoint is written by rank 0 alone, so it must hold the other ranks' positions too
            gathered: list[list[dict[str, Any]] | None] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, positions)
            positions = [p for rank_positions in gathered for p in rank_positions]
        state = {"version": STATE_VERSION, "layout": self._layout(), "consumed": self.progress.consumed}
        return state | {"readers": sorted(positions, key=lambda p: p["reader"])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # applied when training starts (`_restore_loaded_state`), so validating works on any number of devices
        self._loaded_state = state_dict

    def _restore_loaded_state(self) -> None:  # before making the training stream
        state, self._loaded_state = self._loaded_state, None
        if not state:
            return
        if state.get("version") != STATE_VERSION:
            raise UserError(f"the checkpoint's data state has version {state.get('version')}, want {STATE_VERSION}")
        saved, now = state["layout"], self._layout()
        if changed := [f"{key} {saved.get(key)} -> {now[key]}" for key in now if saved.get(key) != now[key]]:
            raise UserError(
                f"cannot resume {self.resumes} exactly: the checkpoint was written with a different "
                f"{', '.join(changed)}; resume with the same settings"
            )
        mine = range(self.rank * self.num_slots, (self.rank + 1) * self.num_slots)
        readers = [self.position_type(**p) for p in state["readers"] if p["reader"] in mine]
        # in place: a stream already made from self.progress starts its next iteration from here
        self.progress.positions = {p.reader: p for p in readers}
        self.progress.consumed = int(state["consumed"])


def _loader(stream: IterableDataset, num_workers: int) -> DataLoader:
    # batch_size=None: the stream yields whole batches; pinned memory speeds the copy to a GPU
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
