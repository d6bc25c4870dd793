"""The pretraining data stream: shards -> documents -> tokens -> best-fit rows -> (inputs, targets) batches.

As nanochat dataloader.py, reorganised so that a resume is exact: the training split's row groups are dealt
round-robin to the R = world_size x max(1, num_workers) readers, reader r reading row groups r, r + R, ... in order,
then again (the shards are pre-shuffled). A reader tokenizes documents with BOS first and packs them by best fit
into rows of T+1 tokens, B rows a batch. Its position is the next document to read, the documents in the packer's
buffer and the crop counters: a resumed reader re-reads only the buffered documents. Validation reads the last
shard, one reader per rank, from its start every time: val_tokens // (B x T x world_size) batches per rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nanochat_pl.common import UserError
from nanochat_pl.data.packing import BestFitPacker
from nanochat_pl.data.stream import Batch, ReaderStream, StreamDataModule, rows_to_masked_batch
from nanochat_pl.sources.shards import num_row_groups, read_row_group, resolve_shards, split_shards
from nanochat_pl.tokenizer import Tokenizer

TOKENIZER_BATCH = 128  # documents per tiktoken batch call (nanochat dataloader.py tokenizer_batch_size)

RowGroup = tuple[Path, int]  # (shard, row group index in it)
DocKey = tuple[int, int]  # (row groups this reader had read before the document's, index in its row group)


@dataclass
class ReaderPosition:  # where one reader is after the last batch it produced (see the module docstring)
    reader: int
    next_doc: DocKey = (0, 0)
    buffered: list[DocKey] = field(default_factory=list)  # the packer's buffer, in arrival order
    epoch: int = 0  # next_doc's row-group count // the reader's row groups per epoch
    tokens_consumed: int = 0
    tokens_cropped: int = 0


@dataclass
class PretrainStream(ReaderStream):
    """Endless training batches `(inputs, targets, position)` of `row_groups` for one rank's readers."""

    row_groups: list[RowGroup]
    tokenizer: Tokenizer
    batch_size: int
    sequence_len: int  # T: a row is packed with T+1 tokens
    buffer_docs: int = 1000  # documents the packer chooses from (nanochat: 1000)
    tokenizer_threads: int = 4

    def batches(self, reader: int, num_readers: int, position: ReaderPosition | None) -> Iterator[Batch]:
        position = position or ReaderPosition(reader)
        # every num_readers-th row group from its own on; with fewer than readers (validation), reader mod their number
        row_groups = self.row_groups[reader::num_readers] or [self.row_groups[reader % len(self.row_groups)]]

        def encode(texts: list[str]) -> list[list[int]]:
            return self.tokenizer.encode(texts, prepend=self.tokenizer.bos_token_id, num_threads=self.tokenizer_threads)

        def texts(read: int) -> list[str]:
            return read_row_group(*row_groups[read % len(row_groups)])

        def documents() -> Iterator[tuple[DocKey, list[int]]]:
            read, start = position.next_doc
            empty_reads = 0
            while True:
                docs = texts(read)
                empty_reads = 0 if docs else empty_reads + 1
                if empty_reads > len(row_groups):
                    raise UserError(f"no documents in any of the {len(row_groups)} row groups from {row_groups[0][0]}")
                for first in range(start, len(docs), TOKENIZER_BATCH):
                    for offset, ids in enumerate(encode(docs[first : first + TOKENIZER_BATCH])):
                        yield (read, first + offset), ids
                read, start = read + 1, 0

        # the buffered documents go back into the buffer as they are, not through refills (see BestFitPacker)
        keys = [tuple(key) for key in position.buffered]
        buffered_texts = {read: texts(read) for read in {read for read, _ in keys}}
        buffered = zip(keys, encode([buffered_texts[read][index] for read, index in keys]), strict=True)
        # nanochat refills one tokenizer batch at a time
        packer = BestFitPacker(documents(), self.sequence_len + 1, self.buffer_docs, TOKENIZER_BATCH, buffered)
        packer.tokens_consumed, packer.tokens_cropped = position.tokens_consumed, position.tokens_cropped
        next_doc = position.next_doc
        while True:
            inputs, targets = rows_to_masked_batch([next(packer) for _ in range(self.batch_size)])
            if packer.last_fetched is not None:
                next_doc = (packer.last_fetched[0], packer.last_fetched[1] + 1)
            counts = (packer.tokens_consumed, packer.tokens_cropped)
            keys = packer.buffered_keys()
            yield inputs, targets, ReaderPosition(reader, next_doc, keys, next_doc[0] // len(row_groups), *counts)


class PretrainDataModule(StreamDataModule):
    """Pretraining batches streamed from shards, tokenized on the fly and packed by best fit (module docstring).
    Without a Trainer, set `rank` and `world_size` before `setup()` to play another rank.

    Args:
        source: "fineweb", "climbmix", "offline", or local files (see `nanochat_pl.sources.shards.resolve_shards`).
        tokenizer_dir: Tokenizer (a directory, or a checkpoint, which carries one); default: the data home's.
        sequence_len: Tokens per row given to the model (T).
        device_batch_size: Rows per batch on each device (B).
        num_workers: DataLoader worker processes per rank for training (0: the training process reads).
        buffer_docs: Documents the best-fit packer chooses from (nanochat: 1000).
        val_tokens: Tokens per validation over all ranks (nanochat base_train.py: 80 x 524,288).
        data_dir: Where "fineweb", "climbmix" or "offline" data lives; default: under the data home.
        tokenizer_threads: Threads of each tokenizer batch call (per worker).
    """

    position_type = ReaderPosition

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
        super().__init__(num_workers, val_tokens)
        for name in ("sequence_len", "device_batch_size", "buffer_docs", "tokenizer_threads"):
            if locals()[name] < 1:
                raise UserError(f"data.{name} must be at least 1, got {locals()[name]}")
        self.save_hyperparameters()
        self.source, self.tokenizer_dir, self.data_dir = source, tokenizer_dir, data_dir
        self.sequence_len, self.device_batch_size = sequence_len, device_batch_size
        self.buffer_docs, self.tokenizer_threads = buffer_docs, tokenizer_threads
        self._row_groups: dict[str, list[RowGroup]] = {}  # split -> its row groups

    def training_stats(self) -> dict[str, float]:
        """Logged every step: the fraction of document tokens this rank's packers cropped away so far (nanochat:
        ~35% at T=2048), and the epoch the furthest reader has reached (> 0: repeating its data)."""
        positions = self.progress.positions.values()
        consumed = sum(p.tokens_consumed for p in positions)
        crop_fraction = sum(p.tokens_cropped for p in positions) / consumed if consumed else 0.0
        return {"crop_fraction": crop_fraction, "epoch": float(max((p.epoch for p in positions), default=0))}

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self._row_groups:
            return
        shards = resolve_shards(self.source, self.data_dir)
        for split in ("train", "val"):
            self._row_groups[split] = [(s, i) for s in split_shards(shards, split) for i in range(num_row_groups(s))]
        num_readers = self.world_size * self.num_slots
        if len(self._row_groups["train"]) < num_readers:
            raise UserError(
                f"the train split of {self.source!r} has fewer row groups than the {num_readers} readers (world size "
                f"{self.world_size} x {self.num_slots} workers) that each need their own: use fewer data.num_workers"
            )

    def _stream(self, split: str) -> PretrainStream:
        return PretrainStream(
            self._row_groups[split],
            self.tokenizer,
            self.device_batch_size,
            self.sequence_len,
            self.buffer_docs,
            self.tokenizer_threads,
            rank=self.rank,
            world_size=self.world_size,
            progress=self.progress,
        )

    val_dataloader = StreamDataModule._val_dataloader

    def _layout(self) -> dict[str, int]:
        return dict(super()._layout(), buffer_docs=self.buffer_docs, train_row_groups=len(self._row_groups["train"]))
