"""Callbacks every stage attaches to itself."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor for (inputs, targets) token batches: samples are rows, items are tokens,
    so `train/items_per_sec` is tokens/s; with the module's `flops_per_batch` it also logs MFU where
    Lightning knows the device's peak FLOP/s (e.g. H100: 989 TFLOP/s bf16, the basis nanochat's MFU uses)."""

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(
            batch_size_fn=lambda batch: batch[0].size(0),
            length_fn=lambda batch: batch[0].numel(),
            window_size=window_size,
        )


class FinalCheckpoint(L.Callback):
    """Write `last.ckpt` with the final weights when training ends.

    ModelCheckpoint saves every N steps, so a run whose length is not a multiple of N would otherwise end with
    its last steps (most of the warmdown) in no checkpoint. Runs on every rank: the data module's state is
    gathered from all of them.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath is not None:
            trainer.save_checkpoint(Path(checkpoint.dirpath) / "last.ckpt")
