"""Checkpoints on disk: durable atomic writes, last.ckpt as a link to the final step, a checksum of the weights
that every load verifies and one of every other tensor that a resume verifies, and throughput totals that go on
across a resume."""

import os
import shutil
import struct
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from nanochat_pl import common
from nanochat_pl.checkpoint import (
    CHECKSUM_KEY,
    STATE_CHECKSUM_KEY,
    AtomicCheckpointIO,
    load_model,
    newest_checkpoint,
    read_checkpoint,
)
from nanochat_pl.common import UserError, atomic_write_text
from nanochat_pl.engine import load_engine
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer
from tests.stage_helpers import T, tiny_data, tiny_module, tiny_trainer

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("home")  # every test writes under its own NANOCHAT_PL_HOME


def test_a_write_is_on_the_disk_before_its_rename_and_the_rename_before_it_returns(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(source, target):
        events.append(("replace", str(target)))
        replace(source, target)

    monkeypatch.setattr(common.os, "fsync", record_fsync)
    monkeypatch.setattr(common.os, "replace", record_replace)
    target = tmp_path / "out.bin"
    atomic_write_text(target, "data")
    assert target.read_bytes() == b"data"
    (_, synced_file), *rest = events
    assert Path(synced_file).parent == tmp_path and Path(synced_file).name.startswith(".out.bin.")
    assert rest == [("replace", str(target)), ("fsync", str(tmp_path))]


def test_a_temporary_file_left_by_a_crash_is_removed_at_the_next_save(tmp_path):
    leftover = tmp_path / ".last.ckpt.k3j9x_2a.tmp"  # mkstemp's name for a save of last.ckpt that was killed
    leftover.write_bytes(b"half a checkpoint")
    other = tmp_path / ".epoch=0-step=4.ckpt.abcdefgh.tmp"  # another target's: not this save's to remove
    other.write_bytes(b"")
    atomic_write_text(tmp_path / "last.ckpt", "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "last.ckpt"]


def test_last_ckpt_is_a_link_to_the_final_step(corpus, tmp_path):
    """7 steps, checkpoints every 5 with save_last link: at the end the final step has its own step-7 file (the
    step-5 one goes, save_top_k 1) and last.ckpt links to it; `--ckpt_path last` resolves the link."""
    shards, tokenizer = corpus
    directory = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints = ModelCheckpoint(directory, "{step}", every_n_train_steps=5, save_last="link")
    trainer = tiny_trainer(tmp_path, callbacks=[checkpoints], enable_checkpointing=True)
    trainer.fit(tiny_module(tokenizer, num_iterations=7), tiny_data(shards, tokenizer))
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt", "step=7.ckpt"]
    assert os.readlink(directory / "last.ckpt") == "step=7.ckpt"
    assert read_checkpoint(directory / "last.ckpt")["global_step"] == 7
    assert newest_checkpoint(tmp_path) == directory / "step=7.ckpt"


@pytest.fixture(scope="module")
def trained_checkpoint(corpus, tmp_path_factory) -> Path:
    shards, tokenizer = corpus
    root = tmp_path_factory.mktemp("trained")
    L.seed_everything(0)
    trainer = tiny_trainer(root)
    trainer.fit(tiny_module(tokenizer, num_iterations=2), tiny_data(shards, tokenizer))
    trainer.save_checkpoint(root / "run.ckpt")
    return root / "run.ckpt"


def flip_a_byte_of(path: Path, tensor: torch.Tensor, out: Path) -> None:
    """Copy `path` to `out` with one byte changed inside the zip record that stores `tensor` (the zip stays
    valid: torch.save stores records uncompressed and torch.load does not check their CRCs)."""
    data = bytearray(path.read_bytes())
    wanted = tensor.numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        (record,) = [info for info in archive.infolist() if archive.read(info) == wanted]
    name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26 : record.header_offset + 30])
    start = record.header_offset + 30 + name_length + extra_length  # past the record's local header
    data[start + len(wanted) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    assert zipfile.is_zipfile(out)


def test_a_checkpoint_with_corrupted_weights_is_refused_in_one_line(corpus, trained_checkpoint, tmp_path):
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    assert isinstance(checkpoint[CHECKSUM_KEY], int)
    corrupt = tmp_path / "corrupt.ckpt"
    flip_a_byte_of(trained_checkpoint, checkpoint["state_dict"]["model.transformer.wte.weight"], corrupt)
    loaded = torch.load(corrupt, weights_only=True)["state_dict"]["model.transformer.wte.weight"]
    assert not torch.equal(loaded, checkpoint["state_dict"]["model.transformer.wte.weight"]), "torch loads it"

    message = f"{corrupt} is corrupt: its weights do not match the checksum written with them"
    with pytest.raises(UserError) as error:
        load_model(corrupt)  # chat, serve and the engine load through here
    assert str(error.value) == message
    with pytest.raises(UserError, match="is corrupt"):
        AtomicCheckpointIO().load_checkpoint(corrupt)
    shards, tokenizer = corpus
    with pytest.raises(UserError, match="is corrupt"):  # Lightning's resume
        module, data = tiny_module(tokenizer, num_iterations=4), tiny_data(shards, tokenizer)
        tiny_trainer(tmp_path).fit(module, data, ckpt_path=corrupt)

    # a checkpoint written without a checksum (before there were any) loads unchecked
    del checkpoint[CHECKSUM_KEY]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    load_model(tmp_path / "old.ckpt")


def test_a_checkpoint_with_a_corrupted_optimizer_state_is_refused_on_resume_in_one_line(
    corpus, trained_checkpoint, tmp_path
):
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    states = checkpoint["optimizer_states"][0]["state"]
    momentum = next(t for state in states.values() for t in state.values() if torch.is_tensor(t) and t.numel() > 64)
    corrupt = tmp_path / "corrupt.ckpt"
    flip_a_byte_of(trained_checkpoint, momentum, corrupt)

    with pytest.raises(UserError) as error:
        AtomicCheckpointIO().load_checkpoint(corrupt)
    assert (
        str(error.value) == f"{corrupt} is corrupt: its optimizer, loop or callback tensors do not match their checksum"
    )
    shards, tokenizer = corpus
    with pytest.raises(UserError, match="optimizer, loop or callback tensors"):  # Lightning's resume
        module, data = tiny_module(tokenizer, num_iterations=4), tiny_data(shards, tokenizer)
        tiny_trainer(tmp_path).fit(module, data, ckpt_path=corrupt)
    load_model(corrupt)  # its weights are intact: chat, serve and a next stage read nothing else

    # one written with the weights' checksum alone (before the optimizer's was) resumes, its weights checked
    del checkpoint[STATE_CHECKSUM_KEY]
    torch.save(checkpoint, tmp_path / "older.ckpt")
    assert AtomicCheckpointIO().load_checkpoint(tmp_path / "older.ckpt")[CHECKSUM_KEY] == checkpoint[CHECKSUM_KEY]


class Recorder(Logger):
    """Keeps what is logged: {metric: [(step, value)]}."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    name, version = "recorder", 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, value))


def test_throughput_totals_go_on_across_a_resume(corpus, tmp_path):
    """4 steps of 2 micro-batches straight, saving at step 2; then resumed from step 2: the resumed run's totals
    of micro-batches, rows and tokens are the straight run's, and its training time starts where step 2's was."""
    shards, tokenizer = corpus
    runs = []
    for ckpt_path in (None, tmp_path / "ckpt" / "step=2.ckpt"):
        recorder = Recorder()
        save = ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=2, save_top_k=-1)
        trainer = tiny_trainer(
            tmp_path, logger=recorder, log_every_n_steps=1, callbacks=[save], enable_checkpointing=True
        )
        module = tiny_module(tokenizer, num_iterations=4, total_batch_tokens=2 * 4 * T)
        trainer.fit(module, tiny_data(shards, tokenizer), ckpt_path=ckpt_path)
        runs.append(recorder.metrics)
    straight, resumed = runs
    assert [value for _, value in straight["train/batches"]] == [2, 4, 6, 8]  # logged once per optimizer step
    for total in ("train/batches", "train/samples", "train/lengths"):
        assert resumed[total] == straight[total][2:], total
    assert straight["train/lengths"][-1][1] == 8 * 4 * T  # 8 micro-batches of 4 rows of T tokens
    time_at_step_2 = straight["train/time"][1][1]
    assert time_at_step_2 < resumed["train/time"][0][1] < time_at_step_2 + straight["train/time"][-1][1]


def test_a_checkpoint_carries_its_tokenizer_anywhere(corpus, tmp_path):
    """Trained with a tokenizer directory that is then gone, and copied elsewhere: the checkpoint alone loads,
    chats (the engine's load), and resumes training; an explicit tokenizer still overrides what it carries."""
    shards, tokenizer_dir = corpus
    moved = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, moved)
    L.seed_everything(0)
    trainer = tiny_trainer(tmp_path / "run")
    trainer.fit(tiny_module(moved, num_iterations=2), tiny_data(shards, moved))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    shutil.rmtree(moved)
    copied = tmp_path / "elsewhere" / "run.ckpt"
    copied.parent.mkdir()
    shutil.copy(tmp_path / "run.ckpt", copied)

    expected = Tokenizer.load(tokenizer_dir)
    model, tokenizer, meta = load_model(copied)
    assert tokenizer.to_state() == expected.to_state() and meta["tokenizer"] == expected.to_state()
    assert get_tokenizer(copied).to_state() == expected.to_state()  # any `tokenizer_dir` may name a checkpoint
    engine, _ = load_engine(copied, torch.device("cpu"))
    assert engine.tokenizer.to_state() == expected.to_state()

    # resume: the module and the data take their tokenizer from the checkpoint (the CLI sets this; see
    # test_fit_cli), and the run goes on from step 2
    module, data = tiny_module(copied, num_iterations=4), tiny_data(shards, copied)
    resumed = tiny_trainer(tmp_path / "resumed")
    resumed.fit(module, data, ckpt_path=copied)
    assert resumed.global_step == 4

    # an explicit tokenizer wins: one of another vocabulary is refused as not the model's
    digits = " ".join(map(str, range(2000)))
    other = Tokenizer.train_from_iterator([digits], vocab_size=280).save(tmp_path / "other")
    with pytest.raises(UserError, match="vocabulary"):
        load_model(copied, tokenizer_dir=other)


def test_an_older_checkpoint_that_names_its_tokenizer_directory_still_loads(corpus, trained_checkpoint, tmp_path):
    _, tokenizer_dir = corpus
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    del checkpoint["nanochat_pl"]["tokenizer"]
    checkpoint["nanochat_pl"]["tokenizer_dir"] = str(tokenizer_dir)
    torch.save(checkpoint, tmp_path / "older.ckpt")
    _, tokenizer, _ = load_model(tmp_path / "older.ckpt")
    assert tokenizer.to_state() == Tokenizer.load(tokenizer_dir).to_state()
    checkpoint["nanochat_pl"]["tokenizer_dir"] = None  # and one with neither: a one-line error that says what to do
    torch.save(checkpoint, tmp_path / "neither.ckpt")
    with pytest.raises(UserError, match="has no tokenizer with it or beside it: give one with --tokenizer_dir"):
        load_model(tmp_path / "neither.ckpt")
