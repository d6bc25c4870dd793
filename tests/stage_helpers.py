"""Shared pieces of the pretraining-stage tests: a tiny corpus and tokenizer, a tiny model, a quiet Trainer."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nanochat_pl.checkpoint import AtomicCheckpointIO
from nanochat_pl.data.pretrain_data import PretrainDataModule
from nanochat_pl.stages.base import BaseTraining
from nanochat_pl.tokenizer import Tokenizer

# A repetitive corpus: documents are runs of a few fixed sentences, so a depth-1 model learns it in dozens of steps.
SENTENCES = (
    "the cat sat on the mat.",
    "a dog ran to the park.",
    "we like to read good books.",
    "the sun is hot and the sky is blue.",
    "one two three four five six.",
    "she sang a song for her friend.",
)
NUM_SHARDS, DOCS_PER_SHARD, ROW_GROUP = 3, 96, 16  # 2 train shards + 1 val shard, 6 row groups each
VOCAB_SIZE = 300
T, B = 32, 4  # sequence length, device batch size


def write_corpus(root: Path) -> tuple[Path, Path]:
    """Parquet shards in FineWeb-Edu's layout (a `text` column) and a tokenizer trained on them: (shards, tokenizer)."""
    rng = random.Random(0)
    shards = root / "shards"
    shards.mkdir(parents=True)
    texts = []
    for shard in range(NUM_SHARDS):
        docs = [" ".join(rng.choices(SENTENCES, k=rng.randint(1, 6))) for _ in range(DOCS_PER_SHARD)]
        pq.write_table(pa.table({"text": docs}), shards / f"shard_{shard:05d}.parquet", row_group_size=ROW_GROUP)
        texts += docs
    tokenizer = root / "tokenizer"
    Tokenizer.train_from_iterator(texts, vocab_size=VOCAB_SIZE).save(tokenizer)
    return shards, tokenizer


def tiny_module(tokenizer_dir: Path, **overrides: Any) -> BaseTraining:
    """A depth-1, 64-wide GPT (2 heads of 32) with the 2026 recipe; sampling off (it is slow and prints)."""
    settings: dict[str, Any] = dict(
        depth=1,
        aspect_ratio=64,
        head_dim=32,
        sequence_len=T,
        tokenizer_dir=str(tokenizer_dir),
        total_batch_tokens=B * T,
        num_iterations=8,
        eval_every=1000,
        sample_every=0,
    )
    return BaseTraining(**{**settings, **overrides})


def tiny_data(shards: Path, tokenizer_dir: Path, **overrides: Any) -> PretrainDataModule:
    settings: dict[str, Any] = dict(
        source=str(shards),
        tokenizer_dir=str(tokenizer_dir),
        sequence_len=T,
        device_batch_size=B,
        buffer_docs=16,
        val_tokens=4 * B * T,
        tokenizer_threads=1,
    )
    return PretrainDataModule(**{**settings, **overrides})


def tiny_trainer(root: Path, **overrides: Any) -> L.Trainer:
    """A CPU Trainer in fp32 (bitwise reproducible), silent, with no sanity validation, writing checkpoints as
    `nanochat-pl fit` does (AtomicCheckpointIO)."""
    settings: dict[str, Any] = dict(
        plugins=[AtomicCheckpointIO()],
        accelerator="cpu",
        devices=1,
        precision="32-true",
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
    )
    return L.Trainer(**{**settings, **overrides})


def cpu_trainer_config(checkpoint_args: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """The `trainer:` section of a tiny run's YAML: the CPU in fp32, quiet, no sanity check, validation by steps,
    a ModelCheckpoint with `checkpoint_args`; `settings` add or replace."""
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint_args}
    return {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "callbacks": [checkpoint],
        **settings,
    }


class StepLosses(L.Callback):
    """Records (optimizer step, micro-batch index, loss) of every training micro-batch, and the validation bpb
    at the end of every validation outside the sanity check."""

    def __init__(self) -> None:
        self.train: list[tuple[int, int, float]] = []
        self.val_bpb: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch, batch_idx):
        self.train.append((trainer.global_step, batch_idx, outputs["loss"].item()))

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_bpb.append((trainer.global_step, trainer.callback_metrics["val/bpb"].item()))


def model_parameters(module: BaseTraining) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


class SyntheticTokens(L.LightningDataModule):
    """Deterministic token batches: step i's global batch is `global_batch` rows of T+1 tokens, and with world size
    W each rank takes its own contiguous slice of global_batch / W rows, so the ranks together see exactly the
    batch a single process sees. Rows are arithmetic sequences mod the vocabulary (learnable, and all different).
    """

    def __init__(self, global_batch: int, sequence_len: int, vocab_size: int) -> None:
        super().__init__()
        self.global_batch, self.sequence_len, self.vocab_size = global_batch, sequence_len, vocab_size
        self.device_batch_size = global_batch  # what BaseTraining reads; set per rank in setup()

    def setup(self, stage: str) -> None:
        self.device_batch_size = self.global_batch // self.trainer.world_size

    def global_batch_at(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(index)
        starts = torch.randint(0, self.vocab_size, (self.global_batch, 1), generator=generator)
        strides = torch.randint(1, 7, (self.global_batch, 1), generator=generator)
        return (starts + strides * torch.arange(self.sequence_len + 1)) % self.vocab_size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, b = self.trainer.global_rank, self.device_batch_size
        return torch.utils.data.DataLoader(_Batches(self, rank * b, (rank + 1) * b), batch_size=None)


class _Batches(torch.utils.data.IterableDataset):
    """Endless (inputs, targets) of rows [first, last) of each global batch (an IterableDataset: Lightning adds
    no DistributedSampler to it)."""

    def __init__(self, source: SyntheticTokens, first: int, last: int) -> None:
        self.source, self.first, self.last = source, first, last

    def __iter__(self):
        index = 0
        while True:
            rows = self.source.global_batch_at(index)[self.first : self.last]
            yield rows[:, :-1], rows[:, 1:]
            index += 1


class GradientRecorder(L.Callback):
    """The gradients the optimizer is about to apply at every step (after accumulation and any DDP all-reduce)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}
        )


def train_on_synthetic_tokens(tokenizer_dir: str, out: str, devices: int) -> None:
    """4 optimizer steps of 2 accumulated micro-batches on a global batch of 4 rows, on `devices` CPU processes
    (DDP when 2); each rank saves its micro-batch losses, per-step gradients and final weights to out.RANK.pt."""
    L.seed_everything(0)
    module = tiny_module(tokenizer_dir, total_batch_tokens=2 * 4 * T, num_iterations=4, lr_scale=1.0)
    data = SyntheticTokens(global_batch=4, sequence_len=T, vocab_size=module.gpt_config.vocab_size)
    losses, grads = StepLosses(), GradientRecorder()
    strategy = "ddp" if devices > 1 else "auto"
    trainer = tiny_trainer(Path(out + ".root"), devices=devices, strategy=strategy, callbacks=[losses, grads])
    trainer.fit(module, data)
    assert trainer.world_size == devices and trainer.accumulate_grad_batches == 2
    result = {"losses": losses.train, "grads": grads.grads, "params": model_parameters(module)}
    torch.save(result, f"{out}.{trainer.global_rank}.pt")


REPO = Path(__file__).resolve().parents[1]


def run_ddp_script(source: str, args: list[str], root: Path, timeout: float) -> None:
    """Run `source` as a script that launches a 2-process gloo fit (Lightning starts rank 1 by running the same
    script again, with the rank in the environment); fail with its stderr if it fails."""
    script = root / "train_ddp.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), *args]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
