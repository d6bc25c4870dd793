"""Bits per byte: a loss that does not depend on the tokenizer.

bpb = Σ nats over target tokens / (ln 2 · Σ UTF-8 bytes of those tokens). Special tokens (0 bytes) and ignored targets
(-1) count in neither sum, as in nanochat's `loss_eval.evaluate_bpb`. Both sums are summed over all ranks before the
division, so the figure is the same on 1 GPU or 8.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class BitsPerByte(Metric):
    full_state_update = False
    higher_is_better = False

    def __init__(self, token_bytes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("token_bytes", token_bytes.to(torch.int64), persistent=False)
        self.add_state("nats", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, token_losses: torch.Tensor, targets: torch.Tensor) -> None:
        """token_losses: per-token cross-entropy in nats (B, T); targets: (B, T) ids, -1 where ignored."""
        num_bytes = torch.where(targets >= 0, self.token_bytes[targets.clamp(min=0)], 0)
        self.nats += token_losses.double()[num_bytes > 0].sum()
        self.bytes += num_bytes.sum()

    def compute(self) -> torch.Tensor:
        if self.bytes == 0:  # nothing measured: say so rather than report a perfect 0.0
            return torch.tensor(math.nan, dtype=torch.float64, device=self.nats.device)
        return self.nats / (math.log(2) * self.bytes)
