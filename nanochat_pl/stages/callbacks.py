"""Callbacks every stage attaches to itself."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_only

from nanochat_pl.precision import peak_flops


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor for (inputs, targets) token batches: samples are rows, items are tokens; with the
    module's `flops_per_batch`, MFU where the device's peak is known (`precision.peak_flops`). Its running totals
    (`train/time`, `train/batches`, `train/samples`, `train/lengths`, of rank 0) go on across a resume."""

    def __init__(self) -> None:
        rows, tokens = (lambda batch: batch[0].size(0)), (lambda batch: batch[0].numel())
        super().__init__(batch_size_fn=rows, length_fn=tokens, window_size=20)
        self._resumed_totals: dict[str, float] = {}

    def state_dict(self) -> dict[str, float]:
        training = RunningStage.TRAINING
        if training not in self._t0s:  # only rank 0 counts (ThroughputMonitor's hooks are rank-zero-only)
            return {}
        return {
            # the clock ThroughputMonitor logs as train/time: started at train start, stopped during validation
            "time": time.perf_counter() - self._t0s[training],
            "batches": self._batches[training],
            "samples": self._samples[training],
            "lengths": self._lengths[training],
        }

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._resumed_totals = state_dict

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's setup, with MFU's peak FLOP/s taken as nanochat takes it: the card's dense bf16 peak for any
        bf16 precision (Lightning reads NanochatBf16 as fp32, and its own table lacks the H200's dense figure)."""
        super().setup(trainer, pl_module, stage)
        if "bf16" in str(trainer.precision):
            self.available_flops = peak_flops(trainer.strategy.root_device, torch.bfloat16)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)  # starts every count at zero and the clock now
        totals, self._resumed_totals = self._resumed_totals, {}
        if totals:
            training = RunningStage.TRAINING
            self._t0s[training] -= totals["time"]
            self._batches[training] = totals["batches"]
            self._samples[training] = totals["samples"]
            self._lengths[training] = totals["lengths"]


class FinalCheckpoint(L.Callback):
    """Checkpoint the final step when training ends, as the run's ModelCheckpoint saves at its own triggers (a run
    whose length is not a multiple of its every_n_train_steps would otherwise lose its last steps), `last.ckpt`
    following it as configured. Runs on every rank: the data module's state is gathered from all of them."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        # skipped also when the callback saved this very step already (and pointed last.ckpt at it)
        if not isinstance(callback, ModelCheckpoint) or callback._should_skip_saving_checkpoint(trainer):
            return
        # the calls ModelCheckpoint makes at a step trigger (on_train_batch_end, lightning 2.6)
        candidates = callback._monitor_candidates(trainer)
        callback._save_topk_checkpoint(trainer, candidates)
        if callback._last_global_step_saved == trainer.global_step:
            callback._save_last_checkpoint(trainer, candidates)
        else:  # top-k kept no file of this step (save_top_k 0, or a monitored metric got worse): last.ckpt holds it
            callback.last_model_path = callback.format_checkpoint_name(candidates, callback.CHECKPOINT_NAME_LAST)
            callback._save_checkpoint(trainer, callback.last_model_path)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar for runs that steps end: with `max_epochs: -1` Lightning's reads "Epoch 0/-2"
    and counts towards no total; this one reads "train" and counts towards max_steps x accumulation. A stage puts it
    in place of the Trainer's RichProgressBar, with that bar's settings."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            return super()._get_train_description(current_epoch)
        return f"{'train':{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.num_training_batches == float("inf") and trainer.max_steps > 0:
            return trainer.max_steps * trainer.accumulate_grad_batches
        return super().total_train_batches
