"""What every resumable training stream shares: positions that travel with the batches, worker rotation, and a
state gathered from every rank. The pretraining stream (pretrain.py) and the chat stream (chat.py) build on it.

- Readers. A rank's training data is read by `max(1, num_workers)` readers, one per DataLoader worker slot;
  reader r = rank x slots + slot. What a reader reads is the stream's business.
- Position. Every training batch travels with the position of its reader after it, `(inputs, targets,
  position)`. `on_before_batch_transfer`, which the training loop calls for exactly the batches it trains on,
  records the position and passes `(inputs, targets)` on. Lightning prefetches one batch ahead and workers
  prefetch more, so this is the only place that knows which batches were trained on; the LightningModule
  therefore must not override that hook.
- Workers. The DataLoader takes batches from its workers in strict rotation, so after n batches the next one
  comes from worker slot n mod W. Every new iteration (after a resume, or another epoch of the loader) starts
  from the recorded positions, with worker j playing slot (n + j) mod W, so it continues the stream.
- Ranks. Lightning writes the checkpoint from rank 0 only, so `state_dict()` gathers every rank's reader
  positions (all ranks call it together when a checkpoint is saved). The state goes through the
  LightningDataModule's own `state_dict`/`load_state_dict`, which Lightning restores before
  `configure_optimizers` runs; the DataLoader-level Stateful protocol would lose it when something reads
  `trainer.estimated_stepping_batches` first (Lightning #20550).
- Exact. A resumed run sees exactly the batches the uninterrupted run would have, provided what `_layout()`
  names is unchanged; a different layout is refused with a UserError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import get_worker_info

from nanochat_pl.common import UserError

STATE_VERSION = 1


class Position(Protocol):
    """Where one reader is after a batch: plain values, so a checkpoint holds it without pickling code."""

    reader: int

    def to_state(self) -> dict[str, Any]: ...


@dataclass
class StreamProgress:
    """What one rank has trained on: each of its readers' position after its last trained batch, and how many
    batches. Every new iteration of the training stream starts from here."""

    positions: dict[int, Any] = field(default_factory=dict)
    consumed: int = 0

    def record(self, position: Position) -> None:
        self.positions[position.reader] = position
        self.consumed += 1

    def reader_for_worker(self, rank: int) -> int:
        """The reader this DataLoader worker (or the main process) plays in a new iteration."""
        worker, num_workers = worker_slot()
        # after n batches the next comes from worker slot n mod W, and a new iteration starts at worker 0
        return rank * num_workers + (self.consumed + worker) % num_workers


class ResumableStreamModule(L.LightningDataModule, ABC):
    """A LightningDataModule whose training stream resumes exactly (see the module docstring).

    Subclasses set `self.rank`, `self.world_size`, `self.num_workers` and fill `self.progress.positions` with
    their readers' start positions in `setup()`, and implement `_layout()` and `_position_from_state()`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rank, self.world_size, self.num_workers = 0, 1, 0
        self.progress = StreamProgress()  # this rank's readers, after the batches trained on
        self._loaded_state: dict[str, Any] | None = None

    @property
    def num_slots(self) -> int:
        return max(1, self.num_workers)

    @abstractmethod
    def _layout(self) -> dict[str, Any]:
        """What must not change for the saved positions to mean the same data."""

    @abstractmethod
    def _position_from_state(self, state: dict[str, Any]) -> Any:
        """A reader's position from what its `to_state()` wrote."""

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the position a training batch carries and hand `(inputs, targets)` to the model."""
        if len(batch) == 3 and not isinstance(batch[2], torch.Tensor):
            inputs, targets, position = batch
            self.progress.record(position)
            return inputs, targets
        return tuple(batch)

    def state_dict(self) -> dict[str, Any]:
        """Every rank's reader positions after the last trained batch (a collective call under DDP).

        The LightningModule's `training_step` sees the batches after `on_before_batch_transfer`, so the
        positions are those of the batches it trained on, not of those Lightning or the workers prefetched.
        """
        if self._loaded_state is not None:  # restored but not trained on yet: still where we are
            return self._loaded_state
        if not self.progress.positions:
            return {}
        positions = [p.to_state() for p in self.progress.positions.values()]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.world_size > 1:
            # the checkpoint is written by rank 0 alone, so it must hold the other ranks' positions too
            gathered: list[list[dict[str, Any]] | None] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, positions)
            positions = [p for rank_positions in gathered for p in rank_positions]
        return {
            "version": STATE_VERSION,
            "layout": self._layout(),
            "consumed": self.progress.consumed,
            "readers": sorted(positions, key=lambda p: p["reader"]),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from `state_dict()`'s output when training starts (validating alone never needs it, so a
        checkpoint validates on any number of devices)."""
        self._loaded_state = state_dict

    def _restore_loaded_state(self) -> None:
        """Apply a loaded state to this rank's readers; call before making the training stream."""
        state = self._loaded_state
        if state is None:
            return
        if state.get("version") != STATE_VERSION:
            raise UserError(f"the checkpoint's data state has version {state.get('version')}, want {STATE_VERSION}")
        saved, now = state["layout"], self._layout()
        changed = [f"{key} {saved.get(key)} -> {now[key]}" for key in now if saved.get(key) != now[key]]
        if changed:
            raise UserError(
                "cannot resume the data stream exactly: the checkpoint was written with a different "
                f"{', '.join(changed)}; resume with the same settings"
            )
        positions = {p.reader: p for p in map(self._position_from_state, state["readers"])}
        missing = sorted(set(self.progress.positions) - set(positions))
        if missing:
            raise UserError(f"the checkpoint's data state has no position for readers {missing}")
        # in place: a stream already made from self.progress starts its next iteration from here
        self.progress.positions = {r: positions[r] for r in self.progress.positions}
        self.progress.consumed = int(state["consumed"])
        self._loaded_state = None


def worker_slot() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def rows_to_batch(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of T+1 tokens -> (inputs, targets) of shape (B, T): targets are the inputs shifted by one."""
    batch = torch.from_numpy(np.stack(rows))
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
