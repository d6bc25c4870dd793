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
    """Lightning's ThroughputMonitor for (inputs, targets) token batches: samples are rows, items are tokens,
    so `train/items_per_sec` is tokens/s; with the module's `flops_per_batch` it also logs MFU where the device's
    peak FLOP/s is known (`precision.peak_flops`; e.g. H100: 989 TFLOP/s bf16, the basis nanochat's MFU uses).

    Its running totals `train/time`, `train/batches`, `train/samples` and `train/lengths` (training seconds,
    micro-batches, rows and tokens of rank 0) go on across a resume: a checkpoint holds them, and the resumed run
    counts on from there instead of from zero.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(
            batch_size_fn=lambda batch: batch[0].size(0),
            length_fn=lambda batch: batch[0].numel(),
            window_size=window_size,
        )
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
        """Lightning's setup, with the peak FLOP/s MFU divides by taken as nanochat takes it: the card's dense bf16
        peak for any bf16 precision (Lightning reads NanochatBf16, a plain Precision plugin, as fp32; its table
        has the H200's sparse figure and misses "NVIDIA H200")."""
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
    """Checkpoint the final step when training ends, as the run's ModelCheckpoint saves at its own triggers.

    ModelCheckpoint saves every N steps, so a run whose length is not a multiple of N would otherwise end with
    its last steps (most of the warmdown) in no checkpoint. The final step is saved under the callback's usual
    name (`epoch=0-step=N.ckpt`, subject to its `save_top_k`) and `last.ckpt` follows it as the callback is
    configured: with `save_last: link` a symbolic link to that file, not a second copy. Runs on every rank: the
    data module's state is gathered from all of them.
    """

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
    """Lightning's rich progress bar for runs that steps end. With `max_epochs: -1` (the pretraining stream has no
    epochs) Lightning's reads "Epoch 0/-2" and counts micro-batches towards no total; this one reads "train" and,
    when the data has no length, counts them towards max_steps x accumulation. A stage puts it in place of the
    Trainer's RichProgressBar, with that bar's settings (`like`), never where the bar is off or of another kind."""

    @classmethod
    def like(cls, bar: RichProgressBar) -> StepProgressBar:
        """This bar with `bar`'s settings (refresh rate, leave, theme, console), as configured or Lightning's."""
        return cls(bar.refresh_rate, bar._leave, bar.theme, bar._console_kwargs)

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
