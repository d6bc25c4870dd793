"""The pretraining stream on small parquet shards written here: batches, sharding, validation, resume."""

import io
import itertools
import random
import re
import socket

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from nanochat_pl.common import UserError
from nanochat_pl.data.packing import BestFitPacker
from nanochat_pl.data.pretrain_data import PretrainDataModule, PretrainStream
from nanochat_pl.tokenizer import Tokenizer

NUM_SHARDS, DOCS_PER_SHARD, ROW_GROUP = 3, 200, 16  # 2 train shards + 1 val shard, 13 row groups each
B, T, BUFFER = 4, 48, 24
WORDS = [
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
]
MARKER = re.compile(r"<(\d+)\.(\d+)> ")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(shard dir, tokenizer dir): documents "<shard.index> words...", ~35 tokens long on average."""
    root = tmp_path_factory.mktemp("pretrain")
    rng = random.Random(0)
    texts = []
    for shard in range(NUM_SHARDS):
        docs = [
            f"<{shard}.{i}> " + " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(2.7, 0.9)) + 1))
            for i in range(DOCS_PER_SHARD)
        ]
        pq.write_table(pa.table({"text": docs}), root / f"shard_{shard:05d}.parquet", row_group_size=ROW_GROUP)
        texts += docs
    Tokenizer.train_from_iterator(texts, vocab_size=320).save(root / "tokenizer")
    return root, root / "tokenizer"


def make_module(corpus, rank=0, world_size=1, **kwargs):
    shards, tokenizer = corpus
    settings = dict(sequence_len=T, device_batch_size=B, buffer_docs=BUFFER, val_tokens=3 * B * T * world_size)
    dm = PretrainDataModule(source=str(shards), tokenizer_dir=str(tokenizer), **{**settings, **kwargs})
    dm.rank, dm.world_size = rank, world_size  # what setup() takes from the trainer under DDP
    dm.setup("fit")
    return dm


def train_batches(dm, count, loader_iter=None):
    """`count` batches as the training loop sees them (through the datamodule's transfer hook).

    Iterators with workers are dropped as soon as they are done with: one left to the garbage collector
    was seen to take the DataLoader's 5 s shutdown timeout per worker."""
    if loader_iter is None:
        loader_iter = iter(dm.train_dataloader())
    return [dm.on_before_batch_transfer(next(loader_iter), 0) for _ in range(count)]


def train_row_groups(shards_dir):
    """The training split's row groups, listed independently of nanochat_pl: (shard number, index)."""
    return [
        (shard, index)
        for shard in range(NUM_SHARDS - 1)
        for index in range(pq.ParquetFile(shards_dir / f"shard_{shard:05d}.parquet").num_row_groups)
    ]


def markers(tokenizer, inputs):
    """(shard, doc index) of every document start in the batch whose marker survived cropping."""
    found = []
    for row in inputs.tolist():
        text = tokenizer.decode(row)
        found += [(int(s), int(i)) for s, i in MARKER.findall(text)]
    return found


def test_batches_are_best_fit_rows_of_the_readers_documents(corpus):
    """Rank 1 of 2 reads row groups 1, 3, 5, ... of the train shards in order, tokenizes each document
    with BOS first and packs them by best fit; epochs repeat the same row groups."""
    shards_dir, _ = corpus
    dm = make_module(corpus)
    tok = dm.tokenizer
    stream = PretrainStream(
        dm._row_groups["train"], tok, B, T, rank=1, world_size=2, buffer_docs=BUFFER, tokenizer_threads=2
    )
    mine = train_row_groups(shards_dir)[1::2]
    epoch_docs = []
    for shard, index in mine:
        table = pq.ParquetFile(shards_dir / f"shard_{shard:05d}.parquet").read_row_group(index)
        epoch_docs += [[tok.bos_token_id] + tok.encoding.encode_ordinary(t) for t in table.column("text").to_pylist()]
    documents = ((n, doc) for n, doc in enumerate(itertools.chain(epoch_docs, epoch_docs, epoch_docs)))
    reference = BestFitPacker(documents, T + 1, BUFFER)

    epoch_tokens = sum(map(len, epoch_docs))
    num_batches = int(1.5 * epoch_tokens / (B * (T + 1)))  # past the first epoch (crops eat documents faster)
    for inputs, targets, position in itertools.islice(iter(stream), num_batches):
        assert inputs.shape == targets.shape == (B, T) and inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1]), "targets are the inputs shifted by one"
        rows = torch.cat([inputs, targets[:, -1:]], dim=1)
        expected = np.stack([next(reference) for _ in range(B)])
        assert np.array_equal(rows.numpy(), expected)
        assert position.reader == 1
        assert (position.tokens_consumed, position.tokens_cropped) == (
            reference.tokens_consumed,
            reference.tokens_cropped,
        )
    assert position.epoch >= 1
    assert 0 < reference.tokens_cropped < reference.tokens_consumed


def test_ranks_and_workers_read_only_their_own_row_groups(corpus):
    """Two ranks with two workers each: every document a batch starts comes from a row group dealt to the
    reader that made the batch (row group g to reader g mod 4), and all four readers take turns."""
    shards_dir, _ = corpus
    groups = train_row_groups(shards_dir)
    seen_readers, docs_by_rank = [], []
    for rank in range(2):
        dm = make_module(corpus, rank=rank, world_size=2, num_workers=2)
        loader = dm.train_dataloader()
        docs = set()
        for inputs, _, position in itertools.islice(loader, 12):
            seen_readers.append(position.reader)
            for shard, index in markers(dm.tokenizer, inputs):
                reader = groups.index((shard, index // ROW_GROUP)) % 4
                assert reader == position.reader
                docs.add((shard, index))
        docs_by_rank.append(docs)
    assert seen_readers == [0, 1] * 6 + [2, 3] * 6
    assert docs_by_rank[0] and docs_by_rank[1] and not docs_by_rank[0] & docs_by_rank[1]


def test_validation_batches_are_fixed_and_split_across_ranks(corpus):
    rank0 = make_module(corpus, rank=0, world_size=2)
    first = list(rank0.val_dataloader())
    assert len(rank0.val_dataloader()) == len(first) == 3  # val_tokens // (B * T * world_size)
    assert all(inputs.shape == (B, T) for inputs, _ in first)
    again = list(rank0.val_dataloader())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    # training in between changes nothing, and neither does the number of training workers
    train_batches(rank0, 5)
    with_workers = make_module(corpus, rank=0, world_size=2, num_workers=2)
    for other in (list(rank0.val_dataloader()), list(with_workers.val_dataloader())):
        assert all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    rank1 = list(make_module(corpus, rank=1, world_size=2).val_dataloader())
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(first, rank1, strict=True))
    # validation reads the last shard only
    shards = {s for inputs, _ in first + rank1 for s, _ in markers(rank0.tokenizer, inputs)}
    assert shards == {NUM_SHARDS - 1}


@pytest.mark.parametrize("num_workers,load_before_setup", [(0, True), (2, False), (3, True)])
def test_resume_continues_with_exactly_the_uninterrupted_batches(corpus, num_workers, load_before_setup):
    """Stop after k batches with more prefetched than trained on, save, restore into a fresh module: the
    next batches are the uninterrupted run's, across an epoch boundary."""
    k, m = 23, 40
    uninterrupted = train_batches(make_module(corpus, num_workers=num_workers), k + m)

    first = make_module(corpus, num_workers=num_workers)
    loader_iter = iter(first.train_dataloader())
    head = train_batches(first, k, loader_iter)
    for _ in range(3):  # prefetched by Lightning and the workers, never trained on
        next(loader_iter)
    del loader_iter  # stop its workers now rather than whenever the garbage collector runs
    state = first.state_dict()
    assert state["consumed"] == k

    # through torch.save and back, loaded the way Lightning may load a checkpoint
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    shards, tokenizer = corpus
    resumed = PretrainDataModule(
        source=str(shards),
        tokenizer_dir=str(tokenizer),
        sequence_len=T,
        device_batch_size=B,
        buffer_docs=BUFFER,
        num_workers=num_workers,
    )
    if load_before_setup:
        resumed.load_state_dict(state)
        resumed.setup("fit")
    else:
        resumed.setup("fit")
        resumed.load_state_dict(state)
    epoch_at_resume = resumed.training_stats()["epoch"]
    tail = train_batches(resumed, m)
    for got, want in zip(head + tail, uninterrupted, strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    stats = resumed.training_stats()
    assert epoch_at_resume == 0 < stats["epoch"], "the resumed stretch crosses an epoch boundary"
    assert 0 < stats["crop_fraction"] < 1


def _ddp_rank(rank, corpus, port, state_path):
    """One of two gloo ranks: checkpoint the stream after 5 batches, then resume both ranks from the state
    rank 0 alone would write, and compare with the uninterrupted stream."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        uninterrupted = train_batches(make_module(corpus, rank, 2, num_workers=2), 9)
        first = make_module(corpus, rank, 2, num_workers=2)
        train_batches(first, 5)
        state = first.state_dict()  # collective: every rank's positions
        if rank == 0:
            torch.save(state, state_path)
        torch.distributed.barrier()
        resumed = make_module(corpus, rank, 2, num_workers=2)
        resumed.load_state_dict(torch.load(state_path, weights_only=True))
        tail = train_batches(resumed, 4)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, uninterrupted[5:], strict=True))
    finally:
        torch.distributed.destroy_process_group()


def test_resume_under_ddp_restores_every_rank_from_rank_zeros_checkpoint(corpus, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks start at once with everything imported (spawn would re-import torch in each)
    torch.multiprocessing.start_processes(
        _ddp_rank, args=(corpus, port, tmp_path / "state.pt"), nprocs=2, start_method="fork"
    )
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert [r["reader"] for r in state["readers"]] == [0, 1, 2, 3] and state["consumed"] == 5


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterating_the_loader_again_continues_the_stream(corpus, num_workers):
    """Lightning iterates the loader again at each epoch under limit_train_batches: no batch repeats."""
    uninterrupted = train_batches(make_module(corpus, num_workers=num_workers), 12)
    dm = make_module(corpus, num_workers=num_workers)
    loader = dm.train_dataloader()
    loader_iter = iter(loader)
    first = train_batches(dm, 5, loader_iter)
    next(loader_iter)  # prefetched, never trained on
    del loader_iter
    second = train_batches(dm, 7, iter(loader))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first + second, uninterrupted, strict=True))


class BatchRecorder(L.LightningModule):
    """A tiny bigram model that remembers every batch it trained on."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, vocab_size)
        self.seen = []

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.seen.append(inputs.clone())
        return F.cross_entropy(self.embedding(inputs).flatten(0, 1), targets.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(corpus, tmp_path, num_workers, ckpt_path=None):
    dm = make_module(corpus, num_workers=num_workers)
    model = BatchRecorder(dm.tokenizer.vocab_size)
    trainer = L.Trainer(
        max_steps=7,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(tmp_path, filename="{step}", every_n_train_steps=3, save_top_k=-1)],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_resume_trains_on_exactly_the_uninterrupted_batches(corpus, tmp_path, num_workers):
    """Through the real Trainer: its one-batch prefetch and the workers' prefetch are not counted, and the
    datamodule state saved in the checkpoint brings the stream back to batch 4."""
    full = fit(corpus, tmp_path / "full", num_workers)
    checkpoint = tmp_path / "full" / "step=3.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["PretrainDataModule"]
    assert saved["consumed"] == 3
    resumed = fit(corpus, tmp_path / "resumed", num_workers, ckpt_path=checkpoint)
    assert len(full) == 7 and len(resumed) == 4
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed, strict=True))


def test_resume_refuses_a_different_layout(corpus):
    state = make_module(corpus, num_workers=2).state_dict()
    other = make_module(corpus, num_workers=0)
    other.load_state_dict(state)
    with pytest.raises(UserError, match="readers_per_rank 2 -> 1"):
        other.train_dataloader()
    # a run resumed on another number of GPUs: the optimizer's state loads at any world size, the stream says no
    state = make_module(corpus, world_size=2).state_dict()
    fewer = make_module(corpus, world_size=1)
    fewer.load_state_dict(state)
    with pytest.raises(UserError, match="world_size 2 -> 1"):
        fewer.train_dataloader()
    # a checkpoint whose data state an older version wrote (positions as tensors) is one clear line
    older = make_module(corpus)
    older.load_state_dict({**state, "version": 1})
    with pytest.raises(UserError, match="data state has version 1, want 2"):
        older.train_dataloader()


def test_bad_input_is_a_user_error(corpus, tmp_path):
    shards, tokenizer = corpus
    with pytest.raises(UserError, match="no .parquet"):
        PretrainDataModule(source=str(tmp_path), tokenizer_dir=str(tokenizer)).setup("fit")
    for name in ("a.parquet", "b.parquet"):
        (tmp_path / name).write_bytes(b"PAR1 this is not a parquet file PAR1")
    with pytest.raises(UserError, match="parquet"):
        PretrainDataModule(source=str(tmp_path), tokenizer_dir=str(tokenizer)).setup("fit")
    with pytest.raises(UserError, match="val_tokens"):
        make_module(corpus, val_tokens=B * T - 1).val_dataloader()
    with pytest.raises(UserError, match="readers"):
        make_module(corpus, world_size=8, num_workers=4)

    with pytest.raises(UserError, match="buffer_docs"):
        PretrainDataModule(buffer_docs=0)
