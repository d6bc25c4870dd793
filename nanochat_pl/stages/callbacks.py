"""Callbacks every stage attaches to itself."""

from __future__ import annotations

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
