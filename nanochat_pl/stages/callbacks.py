"""Callbacks every stage attaches to itself."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
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
        # the clock ThroughputMonitor logs as train/time: started at train start, stopped during validation
        totals = {name: getattr(self, f"_{name}")[training] for name in ("batches", "samples", "lengths")}
        return {"time": time.perf_counter() - self._t0s[training], **totals}

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
        self._t0s[RunningStage.TRAINING] -= totals.pop("time", 0.0)
        for name, total in totals.items():  # batches, samples, lengths
            getattr(self, f"_{name}")[RunningStage.TRAINING] = total


def save_step(trainer: L.Trainer) -> str | None:
    """Checkpoint this optimizer step through the run's ModelCheckpoint, `last.ckpt` following it as configured, unless
    saved already; its path (None: no ModelCheckpoint). Runs on every rank: the data module's state is gathered."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):
        return None
    if not callback._should_skip_saving_checkpoint(trainer):
        # the calls ModelCheckpoint makes at a step trigger (on_train_batch_end, lightning 2.6)
        candidates = callback._monitor_candidates(trainer)
        callback._save_topk_checkpoint(trainer, candidates)
        if callback._last_global_step_saved == trainer.global_step:
            callback._save_last_checkpoint(trainer, candidates)
        else:  # top-k kept no file of this step (save_top_k 0, or a monitored metric got worse): last.ckpt holds it
            callback.last_model_path = callback.format_checkpoint_name(candidates, callback.CHECKPOINT_NAME_LAST)
            callback._save_checkpoint(trainer, callback.last_model_path)
    return callback._last_checkpoint_saved


class FinalCheckpoint(L.Callback):
    """The run's last checkpoint (`save_step`), however training ends. At its end, the final step's, before any
    end-of-run evaluation (which calls `on_train_end` first). On a first SIGINT (Ctrl-C) or SIGTERM (preemption), the
    step under way's, at its end, every rank at the same step; then an exit 128 + the signal's number with a line
    saying how to resume (a second signal kills at once; before the first step or after the final checkpoint one exits
    at once). This stands in for Lightning's SIGTERM handler (which stops mid-accumulation, saving nothing) and runs
    its SLURM requeue (SIGUSR1: an hpc checkpoint, `scontrol requeue`) at a step's end, its checkpoint whole."""

    def __init__(self) -> None:
        self.signum, self.requeue, self._phase, self._requeue = 0, False, None, None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # SIGINT from now (also in validate): the DataLoader workers, forked later, inherit the handler
        self._phase, self._pid, self._sigint = "setup", os.getpid(), signal.signal(signal.SIGINT, self._on_signal)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._phase, self._step = "training", trainer.global_step
        signal.signal(signal.SIGTERM, self._on_signal)
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            requeue = signal.signal(environment.requeue_signal, lambda *_: setattr(self, "requeue", True))
            self._requeue = lambda: requeue(environment.requeue_signal, None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._phase is not None:  # Lightning's teardown restores the handlers it found: ours for SIGINT
            trainer._signal_connector._original_handlers[signal.SIGINT] = self._sigint
            signal.signal(signal.SIGINT, self._sigint)
            self._phase = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker: the training process decides
            return
        training = self._phase == "training"
        if rank_zero_only.rank == 0:  # os.write: a print() here may interrupt a print() to the same stream
            said = "stopping at the end of this step, saving it (again: at once)" if training else "stopped"
            os.write(2, f"\n{signal.Signals(signum).name}: {said}\n".encode())
        if not training:  # nothing to wait for
            raise SystemExit(128 + signum)
        self.signum = signum
        for default in (signal.SIGINT, signal.SIGTERM):
            signal.signal(default, signal.SIG_DFL)  # a second signal kills at once

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step:  # a micro-batch inside an accumulation window
            return
        self._step, decide = trainer.global_step, trainer.strategy.reduce_boolean_decision
        if self._requeue and decide(self.requeue, all=False):
            self._requeue()  # Lightning's: hpc_ckpt_<n>.ckpt, then `scontrol requeue`
            self.requeue = False
        if decide(self.signum > 0, all=False):
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._phase == "training":  # once, whichever on_train_end calls it first
            save_step(trainer)
            if trainer.strategy.reduce_boolean_decision(self.signum > 0, all=False):  # during the last validation
                self._stop(trainer)
            self._phase = "done"

    def _stop(self, trainer: L.Trainer) -> None:
        path, signum = save_step(trainer), self.signum or signal.SIGTERM  # a rank the signal missed stops too
        if trainer.is_global_zero:
            resumed = sys.argv[-2:] == ["--ckpt_path", "last"]  # else the last --ckpt_path given wins
            args = sys.argv[1:] if resumed else [*sys.argv[1:], "--ckpt_path", "last"]
            resume = f"nanochat-pl {shlex.join(args)}" if args[0] == "fit" else f"ckpt_path={path}"
            saved = f"saved {path}; to resume: {resume}" if path else "no ModelCheckpoint: nothing saved"
            print(f"{signal.Signals(signum).name}: stopped after step {trainer.global_step}, {saved}", file=sys.stderr)
        raise SystemExit(128 + signum)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar for runs that steps end: with `max_epochs: -1` Lightning's reads "Epoch 0/-2"
    and counts towards no total; this one reads "train" and counts towards max_steps x accumulation, or, on one pass
    over a chat mixture (no max_steps), towards an estimate from the data module's `data_progress`, with an ETA. A
    stage puts it in place of the Trainer's RichProgressBar, with that bar's settings."""

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

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        progress, done = getattr(trainer.datamodule, "data_progress", 0.0), args[-1] + 1  # args[-1]: batch_idx
        if self.train_progress_bar_id is not None and trainer.max_steps < 0 and progress > 0:
            task = next(task for task in self.progress.tasks if task.id == self.train_progress_bar_id)
            if task.total == float("inf"):  # Lightning's task of no end, which never gives an ETA: one with an end
                self.progress.remove_task(task.id)
                self.train_progress_bar_id = self._add_task(1, self._get_train_description(trainer.current_epoch))
                task = self.progress.tasks[-1]
            task.total = max(done, round(done / progress))  # not by update(), which forgets the speed the ETA is from
        super().on_train_batch_end(trainer, pl_module, *args)
