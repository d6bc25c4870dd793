"""The pretraining data stream: shards -> documents -> tokens -> best-fit rows -> (inputs, targets) batches.

How the stream is cut up (nanochat dataloader.py@92d63d4, reorganised so that a resume is exact):

- Readers. The training split's row groups, numbered g = 0, 1, ... over all its shards in order, are dealt
  round-robin to R = world_size x max(1, num_workers) readers: reader r = rank x workers + worker slot reads
  the row groups g = r (mod R), in order, then again from the start (the next epoch; the shards are
  pre-shuffled, so nanochat does not reshuffle either). No DistributedSampler is involved: Lightning adds
  none for an IterableDataset. Each reader tokenizes its documents (BOS first, 128 per tiktoken batch call,
  several threads) and packs them with `BestFitPacker` into rows of T+1 tokens; B rows make a batch, and
  every batch comes from one reader.
- Position. A reader's position after a batch is small: the next document to read (row groups read so far,
  counting across epochs, and the document's index in its row group), the keys (row group read, index) of
  the ~1000 documents waiting in the packer's buffer, and the token counters of the crop statistic. Given a
  position, a reader re-reads and re-tokenizes only the buffered documents and then goes on exactly as the
  original would have. How positions travel with the batches, rotate with the workers and are gathered from
  every rank into the checkpoint is data/stream.py's, shared with the chat stream.
- What is exact. A resumed run sees exactly the batches the uninterrupted run would have seen, with any
  num_workers, provided it has the same world size, num_workers, batch size, sequence length, buffer size,
  training row groups and tokenizer; a different layout is refused with a UserError.
- Validation reads the last shard in the training process (one reader per rank, so the set does not
  depend on num_workers; the offline corpus's validation shard is a single row group), from its beginning
  every time: exactly val_tokens // (B x T x world_size) batches per rank (nanochat's eval_tokens rule),
  the same batches at every validation, cycling over the shard if it holds fewer tokens than that. With
  fewer row groups than ranks, rank r reads row group r mod their number.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from nanochat_pl.common import UserError
from nanochat_pl.data.packing import BestFitPacker
from nanochat_pl.data.stream import ResumableStreamModule, StreamProgress, rows_to_batch, worker_slot
from nanochat_pl.sources.shards import num_row_groups, read_row_group, resolve_shards, split_shards
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer

# documents per tiktoken batch call (nanochat dataloader.py@92d63d4 tokenizer_batch_size)
TOKENIZER_BATCH = 128

RowGroup = tuple[Path, int]  # (shard, row group index in it)
DocKey = tuple[int, int]  # (row groups this reader had read before the document's, index in its row group)


@dataclass
class ReaderPosition:
    """Where one reader is, after the last batch it produced (see the module docstring)."""

    reader: int
    next_doc: DocKey
    buffered: np.ndarray  # int64 [n, 2]: keys of the documents in the packer's buffer, in arrival order
    epoch: int  # next_doc's row-group count // the reader's row groups per epoch
    tokens_consumed: int = 0
    tokens_cropped: int = 0

    @classmethod
    def start(cls, reader: int) -> ReaderPosition:
        return cls(reader, (0, 0), np.zeros((0, 2), dtype=np.int64), epoch=0)

    def to_state(self) -> dict[str, Any]:
        # plain ints and a tensor: Lightning may load checkpoints with torch.load(weights_only=True)
        return {
            "reader": self.reader,
            "next_doc": list(self.next_doc),
            "buffered": torch.from_numpy(self.buffered.copy()),
            "epoch": self.epoch,
            "tokens_consumed": self.tokens_consumed,
            "tokens_cropped": self.tokens_cropped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReaderPosition:
        buffered = torch.as_tensor(state["buffered"], dtype=torch.int64).numpy().reshape(-1, 2)
        return cls(
            int(state["reader"]),
            (int(state["next_doc"][0]), int(state["next_doc"][1])),
            buffered,
            int(state["epoch"]),
            int(state["tokens_consumed"]),
            int(state["tokens_cropped"]),
        )


def reader_row_groups(row_groups: Sequence[RowGroup], reader: int, num_readers: int) -> list[RowGroup]:
    """The row groups `reader` reads each epoch: every num_readers-th one, starting at its own index."""
    return list(row_groups[reader::num_readers])


class PretrainStream(IterableDataset):
    """Endless training batches `(inputs, targets, position)` for one rank, each worker one reader.

    Args:
        row_groups: The training split's row groups, in order.
        tokenizer: Encodes the documents; its BOS starts every document.
        batch_size: Rows per batch (B).
        sequence_len: Tokens per row given to the model (T); a row is packed with T+1 tokens.
        rank: This process's global rank.
        world_size: Number of ranks.
        buffer_docs: Documents the packer chooses from (nanochat: 1000).
        tokenizer_threads: Threads of each tiktoken batch call.
        progress: Where to start each iteration (read when it starts); by default, from the beginning.
    """

    def __init__(
        self,
        row_groups: Sequence[RowGroup],
        tokenizer: Tokenizer,
        batch_size: int,
        sequence_len: int,
        rank: int = 0,
        world_size: int = 1,
        buffer_docs: int = 1000,
        tokenizer_threads: int = 4,
        progress: StreamProgress | None = None,
    ):
        self.row_groups = list(row_groups)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.sequence_len = sequence_len
        self.rank = rank
        self.world_size = world_size
        self.buffer_docs = buffer_docs
        self.tokenizer_threads = tokenizer_threads
        self.progress = progress if progress is not None else StreamProgress()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, ReaderPosition]]:
        reader = self.progress.reader_for_worker(self.rank)
        num_readers = self.world_size * worker_slot()[1]
        position = self.progress.positions.get(reader) or ReaderPosition.start(reader)
        return self._batches(reader_row_groups(self.row_groups, reader, num_readers), position)

    def _batches(
        self, row_groups: list[RowGroup], position: ReaderPosition
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, ReaderPosition]]:
        documents = _ReaderDocuments(row_groups, self.tokenizer, self.tokenizer_threads, position.next_doc)
        # the buffered documents go back into the buffer as they are, not through refills (see BestFitPacker);
        # nanochat refills one tokenizer batch at a time
        buffered = documents.reread([tuple(key) for key in position.buffered.tolist()])
        packer = BestFitPacker(
            documents, self.sequence_len + 1, self.buffer_docs, refill_docs=TOKENIZER_BATCH, buffered=buffered
        )
        packer.tokens_consumed, packer.tokens_cropped = position.tokens_consumed, position.tokens_cropped
        while True:
            inputs, targets = rows_to_batch([next(packer) for _ in range(self.batch_size)])
            keys = np.array(packer.buffered_keys(), dtype=np.int64).reshape(-1, 2)
            after = ReaderPosition(
                position.reader,
                documents.next_doc,
                keys,
                documents.next_doc[0] // len(row_groups),
                packer.tokens_consumed,
                packer.tokens_cropped,
            )
            yield inputs, targets, after


class ValidationStream(PretrainStream):
    """The same `num_batches` batches `(inputs, targets)` for one rank every time, read from the start.

    Read in the training process (DataLoader num_workers=0), one reader per rank.
    """

    def __init__(self, row_groups: Sequence[RowGroup], tokenizer: Tokenizer, num_batches: int, **kwargs: Any):
        super().__init__(row_groups, tokenizer, **kwargs)
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        row_groups = reader_row_groups(self.row_groups, self.rank, self.world_size) or [
            self.row_groups[self.rank % len(self.row_groups)]
        ]
        batches = self._batches(row_groups, ReaderPosition.start(self.rank))
        for inputs, targets, _ in itertools.islice(batches, self.num_batches):
            yield inputs, targets


class PretrainDataModule(ResumableStreamModule):
    """Pretraining batches streamed from parquet shards, tokenized on the fly and packed by best fit.

    Training is endless (epochs are counted in the state) and resumes exactly from a checkpoint;
    validation is a fixed set of batches from the last shard. See the module docstring for the design.
    Under a Trainer, `setup()` takes the rank and world size from it; without one they are 0 and 1 (set
    `rank` and `world_size` before `setup()` to play another rank).

    Args:
        source: "fineweb", "climbmix", "offline", or local files (see `nanochat_pl.sources.shards.resolve_shards`).
        tokenizer_dir: Tokenizer (a directory, or a checkpoint, which carries one); default: the data home's
            tokenizer/.
        sequence_len: Tokens per row given to the model (T).
        device_batch_size: Rows per batch on each device (B).
        num_workers: DataLoader worker processes per rank for training, each reading its own row groups;
            0 reads in the training process. Validation always reads in the training process.
        buffer_docs: Documents the best-fit packer chooses from (nanochat: 1000).
        val_tokens: Tokens per validation over all ranks (nanochat base_train.py@92d63d4: 80 x 524,288).
        data_dir: Where "fineweb", "climbmix" or "offline" data lives; default: under the data home.
        tokenizer_threads: Threads of each tokenizer batch call (per worker).
    """

    def __init__(
        self,
        source: str = "fineweb",
        tokenizer_dir: str | None = None,
        sequence_len: int = 2048,
        device_batch_size: int = 32,
        num_workers: int = 0,
        buffer_docs: int = 1000,
        val_tokens: int = 80 * 524_288,
        data_dir: str | None = None,
        tokenizer_threads: int = 4,
    ):
        super().__init__()
        for name, value in (
            ("sequence_len", sequence_len),
            ("device_batch_size", device_batch_size),
            ("buffer_docs", buffer_docs),
            ("val_tokens", val_tokens),
            ("tokenizer_threads", tokenizer_threads),
        ):
            if value < 1:
                raise UserError(f"data.{name} must be at least 1, got {value}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be at least 0, got {num_workers}")
        self.save_hyperparameters()
        self.source = source
        self.tokenizer_dir = tokenizer_dir
        self.sequence_len = sequence_len
        self.device_batch_size = device_batch_size
        self.num_workers = num_workers
        self.buffer_docs = buffer_docs
        self.val_tokens = val_tokens
        self.data_dir = data_dir
        self.tokenizer_threads = tokenizer_threads
        self._train_row_groups: list[RowGroup] | None = None
        self._val_row_groups: list[RowGroup] = []

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.tokenizer_dir)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def crop_fraction(self) -> float:
        """Fraction of document tokens this rank's packers cropped away so far (nanochat: ~35% at T=2048)."""
        positions = self.progress.positions.values()
        consumed = sum(p.tokens_consumed for p in positions)
        return sum(p.tokens_cropped for p in positions) / consumed if consumed else 0.0

    @property
    def epoch(self) -> int:
        """The training epoch the furthest of this rank's readers has reached (0 for the first pass)."""
        return max((p.epoch for p in self.progress.positions.values()), default=0)

    def training_stats(self) -> dict[str, float]:
        """What the stage logs about the stream with every training step."""
        return {"crop_fraction": self.crop_fraction, "epoch": float(self.epoch)}  # epoch > 0: repeating its data

    def setup(self, stage: str | None = None) -> None:
        if self._train_row_groups is not None:
            return
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        shards = resolve_shards(self.source, self.data_dir)
        self._train_row_groups = _row_groups(split_shards(shards, "train"))
        self._val_row_groups = _row_groups(split_shards(shards, "val"))
        num_readers = self.world_size * self.num_slots
        if len(self._train_row_groups) < num_readers:
            raise UserError(
                f"the train split of {self.source!r} has {len(self._train_row_groups)} row groups, fewer "
                f"than the {num_readers} readers (world size {self.world_size} x {self.num_slots} workers) "
                "that each need their own: use fewer data.num_workers or more data"
            )
        first = self.rank * self.num_slots
        self.progress.positions = {r: ReaderPosition.start(r) for r in range(first, first + self.num_slots)}

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        self._restore_loaded_state()
        stream = PretrainStream(
            self._train_row_groups,
            self.tokenizer,
            self.device_batch_size,
            self.sequence_len,
            self.rank,
            self.world_size,
            self.buffer_docs,
            self.tokenizer_threads,
            progress=self.progress,
        )
        # batch_size=None: the stream yields whole batches; pinned memory speeds the copy to a GPU
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        tokens_per_batch = self.device_batch_size * self.sequence_len * self.world_size
        num_batches = self.val_tokens // tokens_per_batch
        if num_batches == 0:
            raise UserError(
                f"data.val_tokens={self.val_tokens} is less than one batch on every rank "
                f"({self.device_batch_size} x {self.sequence_len} x {self.world_size} ranks "
                f"= {tokens_per_batch} tokens)"
            )
        stream = ValidationStream(
            self._val_row_groups,
            self.tokenizer,
            num_batches,
            batch_size=self.device_batch_size,
            sequence_len=self.sequence_len,
            rank=self.rank,
            world_size=self.world_size,
            buffer_docs=self.buffer_docs,
            tokenizer_threads=self.tokenizer_threads,
        )
        return DataLoader(stream, batch_size=None, num_workers=0, pin_memory=torch.cuda.is_available())

    def _position_from_state(self, state: dict[str, Any]) -> ReaderPosition:
        return ReaderPosition.from_state(state)

    def _layout(self) -> dict[str, int]:
        """What must not change for the saved positions to mean the same data."""
        assert self._train_row_groups is not None
        return {
            "world_size": self.world_size,
            "readers_per_rank": self.num_slots,  # max(1, num_workers)
            "device_batch_size": self.device_batch_size,
            "sequence_len": self.sequence_len,
            "buffer_docs": self.buffer_docs,
            "train_row_groups": len(self._train_row_groups),
        }

    def _require_setup(self) -> None:
        if self._train_row_groups is None:
            self.setup()


class _ReaderDocuments:
    """One reader's documents `(key, tokens)`, from `next_doc` on, endlessly; `next_doc` follows along."""

    def __init__(self, row_groups: list[RowGroup], tokenizer: Tokenizer, threads: int, next_doc: DocKey):
        self.row_groups = row_groups
        self.tokenizer = tokenizer
        self.threads = threads
        self.next_doc = next_doc
        self._stream = self._generate()

    def __iter__(self) -> Iterator[tuple[DocKey, list[int]]]:
        return self

    def __next__(self) -> tuple[DocKey, list[int]]:
        return next(self._stream)

    def reread(self, keys: list[DocKey]) -> Iterator[tuple[DocKey, list[int]]]:
        """The documents `keys` again, in that order (a resumed packer's buffer)."""
        tokens: dict[DocKey, list[int]] = {}
        for read in sorted({read for read, _ in keys}):
            indices = [index for r, index in keys if r == read]
            texts = self._texts(read)
            for index, ids in zip(indices, self._encode([texts[i] for i in indices]), strict=True):
                tokens[(read, index)] = ids
        return ((key, tokens[key]) for key in keys)

    def _generate(self) -> Iterator[tuple[DocKey, list[int]]]:
        read, start = self.next_doc
        empty_reads = 0
        while True:
            texts = self._texts(read)
            empty_reads = empty_reads + 1 if not texts else 0
            if empty_reads > len(self.row_groups):
                first_shard = self.row_groups[0][0]
                raise UserError(f"no documents in any of the {len(self.row_groups)} row groups from {first_shard}")
            for first in range(start, len(texts), TOKENIZER_BATCH):
                for offset, ids in enumerate(self._encode(texts[first : first + TOKENIZER_BATCH])):
                    self.next_doc = (read, first + offset + 1)
                    yield (read, first + offset), ids
            read, start = read + 1, 0

    def _texts(self, read: int) -> list[str]:
        path, index = self.row_groups[read % len(self.row_groups)]
        return read_row_group(path, index)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode(texts, prepend=self.tokenizer.bos_token_id, num_threads=self.threads)


def _row_groups(shards: list[Path]) -> list[RowGroup]:
    return [(shard, index) for shard in shards for index in range(num_row_groups(shard))]
