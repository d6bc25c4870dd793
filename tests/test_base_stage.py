"""The pretraining stage end to end through a real Lightning Trainer on tiny parquet shards: learning, exact
resume with gradient accumulation, DDP equivalence, the checkpoint hand-off, and a save that fails midway."""

import math
import os
import resource
import signal
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

from nanochat_pl.checkpoint import AtomicCheckpointIO, load_model, read_checkpoint
from nanochat_pl.common import UserError
from nanochat_pl.stages.callbacks import StepProgressBar
from nanochat_pl.tokenizer import Tokenizer
from tests.stage_helpers import (
    SENTENCES,
    B,
    StepLosses,
    T,
    model_parameters,
    run_ddp_script,
    tiny_data,
    tiny_module,
    tiny_trainer,
    train_on_synthetic_tokens,
)

torch.set_num_threads(1)  # the models are tiny: threads cost more than they give, and 1 keeps sums in one order


pytestmark = pytest.mark.usefixtures("home")  # every test writes under its own NANOCHAT_PL_HOME


def reference_bpb(model, data) -> float:
    """Bits per byte of `model` on the validation batches, counted here: cross-entropy in nats summed over
    targets / (ln 2 x the UTF-8 bytes those targets stand for, special tokens none)."""
    encoding = data.tokenizer.encoding
    special = set(data.tokenizer.special_tokens.values())
    nats, num_bytes = 0.0, 0
    with torch.no_grad():
        for inputs, targets in data.val_dataloader():
            logits = model(inputs)
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").double()
            lengths = [
                0 if t in special else len(encoding.decode_single_token_bytes(t)) for t in targets.flatten().tolist()
            ]
            nats += sum(loss for loss, n in zip(losses.tolist(), lengths, strict=True) if n)
            num_bytes += sum(lengths)
    return nats / (math.log(2) * num_bytes)


def test_a_tiny_run_learns_and_logs_the_true_bits_per_byte(corpus, tmp_path):
    shards, tokenizer = corpus
    L.seed_everything(0)
    module = tiny_module(tokenizer, num_iterations=40, eval_every=10, lr_scale=1.0)
    data = tiny_data(shards, tokenizer)
    record = StepLosses()
    tiny_trainer(tmp_path, callbacks=[record]).fit(module, data)

    assert [step for step, _ in record.val_bpb] == [0, 10, 20, 30, 40], "validation at 0 and every eval_every steps"
    assert len(record.train) == 40
    first_bpb, last_bpb = record.val_bpb[0][1], record.val_bpb[-1][1]
    assert last_bpb < 0.25 * first_bpb, record.val_bpb
    meta = module.checkpoint_metadata()  # a checkpoint says which validation its bpb is (`nanochat-pl runs` shows it)
    assert (meta["val_bpb"], meta["val_bpb_step"]) == (pytest.approx(last_bpb), 40)
    losses = [loss for *_, loss in record.train]
    # the untrained model predicts almost uniformly: its first loss is close to ln(vocabulary)
    assert losses[0] == pytest.approx(math.log(module.gpt_config.vocab_size), rel=0.02)
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5]), losses
    assert reference_bpb(module.model, data) == pytest.approx(last_bpb, rel=1e-5)


def straight_and_resumed(corpus, root, num_workers=0, steps=8):
    """`steps` steps straight, saving at the middle; then fresh objects resume from the middle checkpoint."""
    shards, tokenizer = corpus
    runs = []
    for ckpt in (None, root / "ckpt" / f"step={steps // 2}.ckpt"):
        L.seed_everything(0)
        # total batch = 2 micro-batches of B x T: every optimizer step accumulates 2 gradients
        module = tiny_module(tokenizer, num_iterations=steps, total_batch_tokens=2 * 4 * T, eval_every=3)
        data = tiny_data(shards, tokenizer, num_workers=num_workers)
        record = StepLosses()
        save = ModelCheckpoint(root / "ckpt", "{step}", every_n_train_steps=steps // 2, save_top_k=-1)
        trainer = tiny_trainer(root, callbacks=[record, save], enable_checkpointing=True)
        trainer.fit(module, data, ckpt_path=ckpt)
        assert trainer.accumulate_grad_batches == 2 and trainer.global_step == steps
        runs.append((record, model_parameters(module), module))
    return runs


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact_with_gradient_accumulation(corpus, tmp_path, num_workers):
    """Losses are the closure losses Lightning reports (divided by the accumulation count), compared exactly:
    same fp32 ops on the same data in the same order give the same bits."""
    (straight, straight_params, _), (resumed, resumed_params, _) = straight_and_resumed(corpus, tmp_path, num_workers)
    assert len(straight.train) == 16
    assert resumed.train == straight.train[8:], "(step, micro-batch, loss) after the resume point"
    assert resumed.val_bpb == straight.val_bpb[-2:]  # the validations at step 6 and at the final step 8
    for name, value in straight_params.items():
        assert torch.equal(resumed_params[name], value), name


DDP_SCRIPT = """
import sys

import torch

from tests.stage_helpers import train_on_synthetic_tokens

torch.set_num_threads(1)
train_on_synthetic_tokens(sys.argv[1], sys.argv[2], devices=2)
"""


def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(corpus, tmp_path):
    """2 ranks x 2 rows vs 1 rank x 4 rows, 2 accumulation steps each, 4 optimizer steps.

    MuonAdamW normalises its updates (Adam divides by the gradient's scale, Muon orthogonalises), so a gradient
    summed over ranks instead of averaged would train the same: what proves gradients are averaged exactly once is
    the gradient itself, compared at the first step (the only one where both runs hold the same weights exactly).
    After it, float round-off in gradients that are zero in exact arithmetic at init (c_proj starts at zero) is
    blown up into full-size Adam/Muon updates of parameters that barely matter yet, so weights drift apart by up
    to ~5e-2 and are not compared; every micro-batch's loss, which depends on the whole trajectory, stays within
    1e-5 (measured: 2e-7).
    """
    _, tokenizer = corpus
    run_ddp_script(DDP_SCRIPT, [str(tokenizer), str(tmp_path / "ddp")], tmp_path, timeout=120)
    train_on_synthetic_tokens(str(tokenizer), str(tmp_path / "single"), devices=1)
    single = torch.load(tmp_path / "single.0.pt")
    ranks = [torch.load(tmp_path / f"ddp.{rank}.pt") for rank in (0, 1)]

    # every rank applies the same update: the replicas stay identical, bit for bit
    for name, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], value), name
    # the first step's gradients (accumulated over 2 micro-batches, all-reduced) are the single process's
    first_single, first_ddp = single["grads"][0], ranks[0]["grads"][0]
    assert first_single.keys() == first_ddp.keys()
    scale = max(g.abs().max().item() for g in first_single.values())
    for name, grad in first_single.items():
        torch.testing.assert_close(first_ddp[name], grad, rtol=1e-5, atol=1e-6 * scale, msg=name)
    # each micro-batch's loss averaged over the ranks is the single process's loss on the whole batch
    assert [key for *key, _ in ranks[0]["losses"]] == [key for *key, _ in single["losses"]]
    rank_losses = zip(ranks[0]["losses"], ranks[1]["losses"], single["losses"], strict=True)
    for (*_, loss0), (*_, loss1), (*_, loss) in rank_losses:
        assert (loss0 + loss1) / 2 == pytest.approx(loss, abs=1e-5)


def test_the_final_step_is_validated_and_checkpointed(corpus, tmp_path):
    """7 steps, validation every 3, checkpoints every 5: the run still ends with a validation at step 7 and a
    last.ckpt of step 7, not of step 5 (Lightning alone stops at max_steps before either happens)."""
    shards, tokenizer = corpus
    losses = StepLosses()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=5, save_last=True)
    trainer = tiny_trainer(tmp_path, callbacks=[losses, checkpoints], enable_checkpointing=True)
    trainer.fit(tiny_module(tokenizer, num_iterations=7, eval_every=3), datamodule=tiny_data(shards, tokenizer))
    assert [step for step, _ in losses.val_bpb] == [0, 3, 6, 7]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 7


class BarReading(L.Callback):
    """What the progress bar shows while training: its description and its total."""

    def on_train_batch_end(self, trainer, *args):
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar):
            description = bar._get_train_description(trainer.current_epoch).strip()
            self.reading = (type(bar), description, bar.total_train_batches, bar.refresh_rate, bar._leave)
        elif bar is not None:
            self.reading = (type(bar),)


@pytest.mark.parametrize("bar", ["rich", "rich configured", "tqdm", "off"])
def test_the_progress_bar_counts_towards_the_runs_last_step(bar, corpus, tmp_path):
    """An endless stream, max_epochs -1, 3 steps of 2 micro-batches: Lightning's rich bar would read "Epoch 0/-2"
    and count to no total; the stage's reads "train" and counts to 6, with the settings of the rich bar it
    replaces. A bar of another kind, or none, is left as it is."""
    shards, tokenizer = corpus
    reading = BarReading()
    chosen = {
        "rich": {},
        "rich configured": {"callbacks": [RichProgressBar(refresh_rate=7, leave=True), reading]},
        "tqdm": {"callbacks": [TQDMProgressBar(), reading]},
        "off": {"enable_progress_bar": False},
    }
    settings = {"enable_progress_bar": True, "max_epochs": -1, "callbacks": [reading], **chosen[bar]}
    trainer = tiny_trainer(tmp_path, **settings)
    module = tiny_module(tokenizer, num_iterations=3, total_batch_tokens=2 * B * T)
    trainer.fit(module, datamodule=tiny_data(shards, tokenizer))
    if bar == "rich":
        assert reading.reading == (StepProgressBar, "train", 6, 100, False)  # Lightning's defaults
    elif bar == "rich configured":
        assert reading.reading == (StepProgressBar, "train", 6, 7, True)
    elif bar == "tqdm":
        assert reading.reading == (TQDMProgressBar,)
    else:
        assert trainer.progress_bar_callback is None


def test_a_checkpoint_rebuilds_the_trained_model(corpus, tmp_path):
    shards, tokenizer = corpus
    L.seed_everything(0)
    module = tiny_module(tokenizer, num_iterations=3)
    data = tiny_data(shards, tokenizer)
    trainer = tiny_trainer(tmp_path)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    model, loaded_tokenizer, meta = load_model(tmp_path / "run.ckpt")
    assert meta["stage"] == "base" and Path(meta["tokenizer_dir"]) == tokenizer.resolve()
    assert loaded_tokenizer.vocab_size == module.tokenizer.vocab_size
    assert not model.training
    inputs = torch.tensor([module.tokenizer.encode(SENTENCES[0] + " " + SENTENCES[1], prepend="<|bos|>")])
    module.model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), module.model(inputs))


@pytest.fixture(scope="module")
def trained_checkpoint(corpus, tmp_path_factory):
    shards, tokenizer = corpus
    root = tmp_path_factory.mktemp("trained")
    L.seed_everything(0)
    trainer = tiny_trainer(root)
    trainer.fit(tiny_module(tokenizer, num_iterations=2), tiny_data(shards, tokenizer))
    trainer.save_checkpoint(root / "run.ckpt")
    return root / "run.ckpt"


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A tokenizer with a different vocabulary size (280 vs 300)."""
    directory = tmp_path_factory.mktemp("other") / "tokenizer"
    Tokenizer.train_from_iterator(list(SENTENCES) * 20, vocab_size=280).save(directory)
    return directory


def test_a_checkpoint_with_another_vocabulary_is_refused(corpus, trained_checkpoint, other_tokenizer, tmp_path):
    with pytest.raises(UserError, match="vocabulary of 300, the tokenizer 280") as error:
        load_model(trained_checkpoint, tokenizer_dir=other_tokenizer)
    assert "\n" not in str(error.value)
    # resuming training with that tokenizer is refused before any weight is loaded
    shards, _ = corpus
    trainer = tiny_trainer(tmp_path)
    module, data = tiny_module(other_tokenizer, num_iterations=4), tiny_data(shards, other_tokenizer)
    with pytest.raises(UserError, match="vocabulary"):
        trainer.fit(module, data, ckpt_path=trained_checkpoint)


def test_a_truncated_or_foreign_checkpoint_is_a_user_error(trained_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    data = trained_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint .*truncated.ckpt") as error:
        load_model(truncated)
    assert "\n" not in str(error.value)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a nanochat-pl checkpoint"):
        load_model(foreign)
    with pytest.raises(UserError, match="no checkpoint at"):
        load_model(tmp_path / "missing.ckpt")


def test_checkpoints_are_staged_beside_their_target(trained_checkpoint, tmp_path, monkeypatch):
    """A checkpoint is written to a temporary file in its own directory and renamed onto its name. Staged in
    $TMPDIR instead (as fsspec's local transactions do, Lightning #21253), a save fails where $TMPDIR is small or
    missing, and across filesystems (a tmpfs /tmp; a node-local /tmp under a network home) the final move is a
    copy over the previous checkpoint, which a crash leaves half-written. $TMPDIR here does not exist."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    target = tmp_path / "ckpt" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    assert read_checkpoint(target)["global_step"] == checkpoint["global_step"]
    assert os.listdir(target.parent) == ["last.ckpt"]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(corpus, tmp_path):
    """The disk fills up (RLIMIT_FSIZE: writes past half a checkpoint fail with EFBIG) while step 4's
    last.ckpt is written over step 2's: the old file stays intact, and training resumes from it exactly."""
    shards, tokenizer = corpus

    class FillTheDisk(L.Callback):
        """Once step 2's checkpoint is written, limit file sizes to half of it (SIGXFSZ ignored: writes fail)."""

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 2 and resource.getrlimit(resource.RLIMIT_FSIZE) == limits:
                size = (tmp_path / "ckpt" / "last.ckpt").stat().st_size
                resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, limits[1]))

    def run(ckpt_dir, ckpt_path=None, callbacks=()):
        L.seed_everything(0)
        record = StepLosses()
        save = ModelCheckpoint(ckpt_dir, every_n_train_steps=2, save_top_k=0, save_last=True)
        trainer = tiny_trainer(tmp_path, callbacks=[record, save, *callbacks], enable_checkpointing=True)
        module = tiny_module(tokenizer, num_iterations=6, total_batch_tokens=2 * 4 * T)
        trainer.fit(module, tiny_data(shards, tokenizer), ckpt_path=ckpt_path)
        return record

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with pytest.raises((OSError, RuntimeError)):  # torch.save's C++ writer reports EFBIG as RuntimeError
            run(tmp_path / "ckpt", callbacks=[FillTheDisk()])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert os.listdir(tmp_path / "ckpt") == ["last.ckpt"], "no half-written file left behind"
    assert read_checkpoint(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 2

    resumed = run(tmp_path / "ckpt", ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    straight = run(tmp_path / "straight")
    assert len(straight.train) == 12
    assert resumed.train == straight.train[4:]


@pytest.mark.parametrize(
    ("setting", "value"), [("num_iterations", "0"), ("target_param_data_ratio", "-0.5"), ("warmdown_ratio", "1.5")]
)
def test_an_out_of_range_setting_is_a_one_line_error_where_it_enters(setting, value, capsys):
    """The depth rules and the schedules take these in range: the stage refuses others as it is built."""
    from tests.test_fit_cli import REPO, error_lines, run_main

    config = str(REPO / "configs/cpu/base_tiny.yaml")
    code, _, err = run_main(capsys, "fit", "--config", config, f"--model.init_args.{setting}", value)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and f"settings out of range: {setting} {value}" in lines[0], err
    assert err.rstrip().endswith(lines[0]) and "Traceback" not in err
