"""Chat data: task mixtures -> rendered conversations -> best-fit rows -> (inputs, targets) batches.

Conversations are cut to T+1 tokens and packed BOS-aligned. "pad" (SFT, nanochat chat_sft.py): a buffer of 100
topped up one at a time, the longest that fits goes in, and when none fits the row is padded with BOS; loss on the
assistant's tokens only. "crop" (midtraining, nanochat mid_train.py): packed like pretraining, loss on every token.
Reader r of R takes conversations r, r + R, ... of the mixture, wrapping around (nanochat: cursor = rank, +=
world_size). The run ends when the conversations used up reach the mixture's size (nanochat's `consumed >=
dataset_size`, estimated per rank as its own count x world size, so every rank reaches it at about the same step).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from nanochat_pl.common import UserError
from nanochat_pl.data.packing import BestFitPacker
from nanochat_pl.data.stream import Batch, ReaderStream, StreamDataModule, rows_to_masked_batch
from nanochat_pl.tasks.task import Task, TaskMixture
from nanochat_pl.tokenizer import Tokenizer

Packing = Literal["pad", "crop"]
# (buffer size, refill chunk): chat_sft.py tops up 100 one at a time; "crop" packs as pretraining (dataloader.py)
BUFFERS = {"pad": (100, 1), "crop": (1000, 128)}


@dataclass
class ChatPosition:  # where one reader is after a batch: conversations fetched, and those waiting in its buffer
    reader: int
    fetched: int = 0
    buffered: list[int] = field(default_factory=list)  # the reader's conversation numbers k (its k-th fetch)


@dataclass
class ChatStream(ReaderStream):
    """Batches `(inputs, targets, position)` of one rank's readers of `dataset`, endlessly (module docstring)."""

    dataset: Task
    tokenizer: Tokenizer
    batch_size: int
    sequence_len: int
    packing: Packing

    def batches(self, reader: int, num_readers: int, position: ChatPosition | None) -> Iterator[Batch]:
        position = position or ChatPosition(reader)
        size = len(self.dataset)

        def rendered(k: int) -> tuple[int, np.ndarray]:
            """The reader's k-th conversation as packer tokens: id, or -(id+1) where no loss is taken."""
            conversation = self.dataset[(reader + k * num_readers) % size]
            ids, mask = self.tokenizer.render_conversation(conversation, max_tokens=self.sequence_len + 1)
            ids = np.asarray(ids, dtype=np.int64)
            return k, ids if self.packing == "crop" else np.where(np.asarray(mask) > 0, ids, -ids - 1)

        fetches = map(rendered, itertools.count(position.fetched))
        pad = -self.tokenizer.bos_token_id - 1 if self.packing == "pad" else None  # BOS, with no loss
        buffered = map(rendered, position.buffered)
        packer = BestFitPacker(fetches, self.sequence_len + 1, *BUFFERS[self.packing], buffered, pad_token=pad)
        fetched = position.fetched
        while True:
            inputs, targets = rows_to_masked_batch([next(packer) for _ in range(self.batch_size)])
            fetched = fetched if packer.last_fetched is None else packer.last_fetched + 1
            yield inputs, targets, ChatPosition(reader, fetched, packer.buffered_keys())


class ChatDataModule(StreamDataModule):
    """Conversations from task mixtures for midtraining and SFT, resumable exactly. The tokenizer, shapes and packing
    default to the stage's (from its checkpoint and recipe), handed over by `inherit` before the data is read.

    Args:
        train: Tasks of the training mixture; list a task twice to see it twice (nanochat: MMLU x3, GSM8K x4).
        val: Tasks of the validation mixture; none: no validation.
        packing: "pad" (SFT) or "crop" (midtraining), see the module docstring; default the stage's recipe's.
        sequence_len: Tokens per row given to the model (T); default the stage's.
        device_batch_size: Rows per batch on each device; default the stage's.
        tokenizer_dir: Tokenizer directory; default the stage's.
        num_workers: DataLoader worker processes per rank for training (each renders its own conversations).
        val_tokens: Tokens per validation over all ranks (nanochat chat_sft.py: 40 x 524,288).
    """

    position_type = ChatPosition

    def __init__(
        self,
        train: list[Task],
        val: list[Task] | None = None,
        packing: Packing | None = None,
        sequence_len: int | None = None,
        device_batch_size: int | None = None,
        tokenizer_dir: str | None = None,
        num_workers: int = 0,
        val_tokens: int = 40 * 524_288,
    ):
        super().__init__(num_workers, val_tokens)
        if not train:
            raise UserError("data.train needs at least one task")
        self.train_mixture = TaskMixture(train)
        self.val_mixture = TaskMixture(val) if val else None
        self.packing = packing
        self.sequence_len = sequence_len
        self.device_batch_size = device_batch_size
        self.tokenizer_dir = tokenizer_dir

    def inherit(self, tokenizer: Tokenizer, sequence_len: int, device_batch_size: int, packing: Packing) -> None:
        """The stage's tokenizer, shapes and packing, taken where the config left them open."""
        self.packing = self.packing or packing
        if self.tokenizer_dir is None:
            self.tokenizer = tokenizer
        self.sequence_len = self.sequence_len or sequence_len
        self.device_batch_size = self.device_batch_size or device_batch_size

    @property
    def data_progress(self) -> float:
        """How far through the training mixture the run is (0 -> 1 over the first epoch), estimated per rank."""
        taken = sum(p.fetched - len(p.buffered) for p in self.progress.positions.values())  # used up by the packers
        return taken * self.world_size / len(self.train_mixture)

    def training_stats(self) -> dict[str, float]:
        return {"data_progress": self.data_progress}

    def _stream(self, split: str) -> ChatStream:
        if None in (self.sequence_len, self.device_batch_size, self.packing):
            raise UserError("data.sequence_len, device_batch_size and packing are needed (or a stage that sets them)")
        return ChatStream(
            self.train_mixture if split == "train" else self.val_mixture,
            self.tokenizer,
            self.device_batch_size,
            self.sequence_len,
            self.packing,
            rank=self.rank,
            world_size=self.world_size,
            progress=self.progress,
        )

    def val_dataloader(self):
        return [] if self.val_mixture is None else self._val_dataloader()

    def _layout(self) -> dict[str, Any]:
        return {**super()._layout(), "packing": self.packing, "conversations": len(self.train_mixture)}
