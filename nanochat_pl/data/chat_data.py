"""Chat data: task mixtures -> rendered conversations -> best-fit rows -> (inputs, targets) batches.

Two ways to make rows of T+1 tokens from conversations, both BOS-aligned (every conversation starts with BOS
and begins a row or follows another whole one), chosen by `packing`:

- "pad" (SFT, nanochat chat_sft.py@92d63d4): a buffer of 100 conversations, topped up one at a time; each row
  greedily takes the longest conversation that fits in the space left, and when none fits, the rest of the
  row is padded with BOS. No token is cropped. Targets are -1 (no loss) wherever the conversation's mask is 0
  (the user's turns, tool outputs, BOS, <|assistant_start|>) and on the padding: loss on the assistant only.
- "crop" (midtraining): packed like pretraining (data/packing.py, a buffer of 1000 refilled 128 at a time,
  the shortest conversation cropped to fill a row), with a loss on every token, as nanochat's mid_train.py
  @dfc8833 trained on its concatenated conversation stream.

A conversation is rendered with `render_conversation` and cut to T+1 tokens, so that even the longest one
fits an empty row (a longer one would never fit, and stay in the buffer for ever: chat-stages.md §1f).

The stream is read by R = world_size x max(1, num_workers) readers; reader r takes conversations r, r + R,
r + 2R, ... of the training mixture (nanochat: cursor = rank, += world_size), wrapping around at the end (the
next epoch). A reader's position is tiny: how many conversations it has fetched and which of them wait in its
packer's buffer; a resumed reader re-renders only those. How positions travel with the batches and reach the
checkpoint is data/stream.py's. The run ends when the conversations taken out of the buffers reach the size of
the mixture (nanochat's `consumed >= dataset_size`, estimated per rank as its own count x world size, so that
every rank reaches it at about the same step; the stage stops them all when one does).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from nanochat_pl.common import UserError
from nanochat_pl.data.packing import BestFitPacker
from nanochat_pl.data.stream import ResumableStreamModule, StreamProgress, worker_slot
from nanochat_pl.tasks.task import Task, TaskMixture
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer

Packing = Literal["pad", "crop"]
# (buffer size, refill chunk): chat_sft.py@92d63d4 keeps 100 conversations topped up one at a time;
# "crop" packs as pretraining does (dataloader.py@92d63d4: 1000, refilled 128 at a time)
BUFFERS = {"pad": (100, 1), "crop": (1000, 128)}


@dataclass
class ChatPosition:
    """Where one reader is after a batch: conversations fetched so far and those waiting in its buffer."""

    reader: int
    fetched: int
    buffered: list[int]  # the reader's conversation numbers k (its k-th fetch) in the buffer, in arrival order

    @property
    def taken(self) -> int:
        """Conversations the packer has used up."""
        return self.fetched - len(self.buffered)

    def to_state(self) -> dict[str, Any]:
        return {"reader": self.reader, "fetched": self.fetched, "buffered": torch.tensor(self.buffered)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ChatPosition:
        return cls(int(state["reader"]), int(state["fetched"]), torch.as_tensor(state["buffered"]).tolist())


class ChatStream(IterableDataset):
    """Batches `(inputs, targets, position)` of one rank's readers, endlessly (see the module docstring).

    Args:
        dataset: The conversations (a task or a mixture).
        tokenizer: Renders them.
        batch_size: Rows per batch (B).
        sequence_len: Tokens per row given to the model (T).
        packing: "pad" or "crop".
        rank: This process's global rank.
        world_size: Number of ranks.
        progress: Where each reader starts (read when an iteration starts).
    """

    def __init__(
        self,
        dataset: Task,
        tokenizer: Tokenizer,
        batch_size: int,
        sequence_len: int,
        packing: Packing,
        rank: int = 0,
        world_size: int = 1,
        progress: StreamProgress | None = None,
    ):
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.sequence_len = sequence_len
        self.packing = packing
        self.rank = rank
        self.world_size = world_size
        self.progress = progress if progress is not None else StreamProgress()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, ChatPosition]]:
        reader = self.progress.reader_for_worker(self.rank)
        num_readers = self.world_size * worker_slot()[1]
        start = self.progress.positions.get(reader) or ChatPosition(reader, 0, [])
        return self._batches(reader, num_readers, start)

    def _batches(
        self, reader: int, num_readers: int, start: ChatPosition
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, ChatPosition]]:
        size = len(self.dataset)
        if size == 0:
            raise UserError("the chat mixture has no conversations")

        def rendered(k: int) -> tuple[int, np.ndarray]:
            """The reader's k-th conversation as packer tokens: id, or -(id+1) where no loss is taken."""
            conversation = self.dataset[(reader + k * num_readers) % size]
            ids, mask = self.tokenizer.render_conversation(conversation, max_tokens=self.sequence_len + 1)
            ids = np.asarray(ids, dtype=np.int64)
            return k, ids if self.packing == "crop" else np.where(np.asarray(mask) > 0, ids, -ids - 1)

        fetches = _Fetches(rendered, start.fetched)
        buffer_docs, refill_docs = BUFFERS[self.packing]
        pad = -self.tokenizer.bos_token_id - 1 if self.packing == "pad" else None  # BOS, with no loss
        packer = BestFitPacker(
            fetches,
            self.sequence_len + 1,
            buffer_docs,
            refill_docs,
            buffered=map(rendered, start.buffered),
            pad_token=pad,
        )
        while True:
            rows = np.stack([next(packer) for _ in range(self.batch_size)])
            yield (*rows_to_masked_batch(rows), ChatPosition(reader, fetches.next, list(packer.buffered_keys())))


class _Fetches(Iterator[tuple[int, np.ndarray]]):
    """A reader's conversations k, k+1, ... rendered, counting how many the packer has fetched."""

    def __init__(self, render: Callable[[int], tuple[int, np.ndarray]], start: int):
        self.render = render
        self.next = start

    def __next__(self) -> tuple[int, np.ndarray]:
        self.next += 1
        return self.render(self.next - 1)


def rows_to_masked_batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows (B, T+1) of ids and -(id+1) (no loss) -> inputs (B, T) and targets (B, T), -1 where no loss:
    the target at t is the token at t+1, trained if that token is."""
    ids = np.where(rows < 0, -rows - 1, rows)
    targets = np.where(rows[:, 1:] < 0, -1, ids[:, 1:])
    return torch.from_numpy(np.ascontiguousarray(ids[:, :-1])), torch.from_numpy(np.ascontiguousarray(targets))


class ChatValidation(IterableDataset):
    """The same `num_batches` batches `(inputs, targets)` every time: rank r's reader from the start."""

    def __init__(self, stream: ChatStream, num_batches: int):
        self.stream = stream
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.stream
        batches = s._batches(s.rank, s.world_size, ChatPosition(s.rank, 0, []))
        for inputs, targets, _ in itertools.islice(batches, self.num_batches):
            yield inputs, targets


class ChatDataModule(ResumableStreamModule):
    """Conversations from task mixtures for midtraining and SFT, resumable exactly like the pretraining stream.

    The tokenizer, sequence length and device batch size default to the stage's: a chat stage inherits them
    from the checkpoint it starts from and hands them over before the data is read.

    Args:
        train: Tasks of the training mixture; list a task twice to see it twice (nanochat: MMLU x3, GSM8K x4).
        val: Tasks of the validation mixture; none: no validation.
        packing: "pad" (SFT: loss on the assistant's tokens, rows padded, nothing cropped) or "crop"
            (midtraining: loss on every token, packed like pretraining).
        sequence_len: Tokens per row given to the model (T); default the stage's.
        device_batch_size: Rows per batch on each device; default the stage's.
        tokenizer_dir: Tokenizer directory; default the stage's.
        num_workers: DataLoader worker processes per rank for training (each renders its own conversations).
        val_tokens: Tokens per validation over all ranks (nanochat chat_sft.py@92d63d4: 40 x 524,288).
    """

    def __init__(
        self,
        train: list[Task],
        val: list[Task] | None = None,
        packing: Packing = "pad",
        sequence_len: int | None = None,
        device_batch_size: int | None = None,
        tokenizer_dir: str | None = None,
        num_workers: int = 0,
        val_tokens: int = 40 * 524_288,
    ):
        super().__init__()
        if not train:
            raise UserError("data.train needs at least one task")
        if packing not in BUFFERS:
            raise UserError(f"data.packing must be one of {', '.join(BUFFERS)}, got {packing!r}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be at least 0, got {num_workers}")
        if val_tokens < 1:
            raise UserError(f"data.val_tokens must be at least 1, got {val_tokens}")
        self.train_mixture = TaskMixture(train)
        self.val_mixture = TaskMixture(val) if val else None
        self.packing = packing
        self.sequence_len = sequence_len
        self.device_batch_size = device_batch_size
        self.tokenizer_dir = tokenizer_dir
        self.num_workers = num_workers
        self.val_tokens = val_tokens

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.tokenizer_dir)

    def inherit(self, tokenizer: Tokenizer, sequence_len: int, device_batch_size: int) -> None:
        """Take the stage's tokenizer and shapes where the config left them open."""
        if self.tokenizer_dir is None:
            self.tokenizer = tokenizer
        self.sequence_len = self.sequence_len or sequence_len
        self.device_batch_size = self.device_batch_size or device_batch_size

    @property
    def data_progress(self) -> float:
        """How far through the training mixture the run is (0 -> 1 over the first epoch): conversations this
        rank's packers used up, times the world size, over the mixture's size."""
        taken = sum(p.taken for p in self.progress.positions.values())
        return taken * self.world_size / len(self.train_mixture)

    def training_stats(self) -> dict[str, float]:
        return {"data_progress": self.data_progress}

    def prepare_data(self) -> None:
        """Load (download, once per machine) every task's data before the ranks read it."""
        for mixture in (self.train_mixture, self.val_mixture):
            if mixture is not None:
                len(mixture)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        first = self.rank * self.num_slots
        if not self.progress.positions:
            self.progress.positions = {r: ChatPosition(r, 0, []) for r in range(first, first + self.num_slots)}

    def _stream(self, dataset: Task) -> ChatStream:
        if self.sequence_len is None or self.device_batch_size is None:
            raise UserError("data.sequence_len and data.device_batch_size are needed (or a stage that sets them)")
        return ChatStream(
            dataset,
            self.tokenizer,
            self.device_batch_size,
            self.sequence_len,
            self.packing,
            self.rank,
            self.world_size,
            progress=self.progress,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        self._restore_loaded_state()
        return DataLoader(
            self._stream(self.train_mixture),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_mixture is None:
            return []
        self.setup()
        tokens_per_batch = self.device_batch_size * self.sequence_len * self.world_size
        num_batches = self.val_tokens // tokens_per_batch
        if num_batches == 0:
            raise UserError(f"data.val_tokens={self.val_tokens} is less than one batch on every rank")
        validation = ChatValidation(self._stream(self.val_mixture), num_batches)
        return DataLoader(validation, batch_size=None, num_workers=0, pin_memory=torch.cuda.is_available())

    def _layout(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "readers_per_rank": self.num_slots,
            "device_batch_size": self.device_batch_size,
            "sequence_len": self.sequence_len,
            "packing": self.packing,
            "conversations": len(self.train_mixture),
        }

    def _position_from_state(self, state: dict[str, Any]) -> ChatPosition:
        return ChatPosition.from_state(state)
