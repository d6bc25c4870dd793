"""Callbacks every stage attaches to itself."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
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


SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handle(signals: tuple[int, ...], handler: Any) -> None:
    if threading.current_thread() is threading.main_thread():  # only the main thread may (Lightning's rule too)
        for signum in signals:
            signal.signal(signum, handler)


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
    """The run's last checkpoint, however training ends (a run whose length is not a multiple of the ModelCheckpoint's
    every_n_train_steps would otherwise lose its last steps, a stopped run everything since its last checkpoint).

    At the end of training, the final step's, before any end-of-run evaluation (evaluation.py calls `on_train_end`
    first: Lightning runs the config's callbacks before a stage's). On the first SIGINT (Ctrl-C) or SIGTERM (a spot or
    SLURM preemption), the step under way's, at its end (not mid-accumulation), every rank at the same step; then the
    run exits with 128 + the signal's number and a line saying how to resume, evaluating nothing. A second signal
    kills at once; before the first step or after the final checkpoint, a signal exits at once. While training, this
    stands in for Lightning's SIGTERM handler (which stops after the micro-batch under way, saving nothing) and runs
    Lightning's SLURM requeue (SIGUSR1: an hpc checkpoint, `scontrol requeue`) at a step's end, where its checkpoint
    resumes exactly. Lightning's teardown puts back the handlers of before the fit."""

    def __init__(self) -> None:
        self.signum, self.requeue, self._phase, self._requeue = 0, False, None, None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.signum, self._phase, self._pid, self._rank_zero = 0, "setup", os.getpid(), trainer.is_global_zero
            self._sigint = signal.getsignal(signal.SIGINT)
            _handle((signal.SIGINT,), self._on_signal)  # now: the DataLoader workers, forked later, inherit it

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._phase, self._step = "training", trainer.global_step
        _handle((signal.SIGTERM,), self._on_signal)
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            self._requeue = (environment.requeue_signal, signal.getsignal(environment.requeue_signal))
            _handle((environment.requeue_signal,), self._on_requeue_signal)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._phase is not None:  # Lightning restores what it found when it set its own: ours for SIGINT
            trainer._signal_connector._original_handlers[signal.SIGINT] = self._sigint
            _handle((signal.SIGINT,), self._sigint)
            self._phase = None

    def _say(self, text: str) -> None:  # from a signal handler: print() may be inside a write to the same stream
        if self._rank_zero:
            os.write(2, f"\n{text}\n".encode())

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker (it inherited the handler): the training process decides
            return
        name = signal.Signals(signum).name
        if self._phase != "training":  # nothing to wait for
            self._say(f"{name}: stopped" + (" (the final checkpoint is saved)" if self._phase == "done" else ""))
            raise SystemExit(128 + signum)
        _handle(SIGNALS, signal.SIG_DFL)  # a second signal kills at once
        self.signum = signum
        self._say(f"{name}: stopping at the end of this step, with a checkpoint (again: stop at once)")

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        self.requeue = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step:  # a micro-batch inside an accumulation window
            return
        self._step = trainer.global_step
        if self._requeue and trainer.strategy.reduce_boolean_decision(self.requeue, all=False):
            self.requeue = False
            self._requeue[1](self._requeue[0], None)  # Lightning's: hpc_ckpt_<n>.ckpt, then `scontrol requeue`
        if trainer.strategy.reduce_boolean_decision(self.signum > 0, all=False):
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._phase == "training":  # once, whichever on_train_end calls it first
            save_step(trainer)
            if trainer.strategy.reduce_boolean_decision(self.signum > 0, all=False):  # in the last validation
                self._stop(trainer)
            self._phase = "done"

    def _stop(self, trainer: L.Trainer) -> None:
        path, signum = save_step(trainer), self.signum or signal.SIGTERM  # a rank the signal missed stops as well
        if trainer.is_global_zero:
            args = sys.argv[1:]
            if "--ckpt_path" in args:
                del args[args.index("--ckpt_path") : args.index("--ckpt_path") + 2]
            args = [arg for arg in args if not arg.startswith("--ckpt_path=")] + ["--ckpt_path", "last"]
            resume = f"nanochat-pl {shlex.join(args)}" if args[0] == "fit" else f"ckpt_path={path}"
            saved = f"saved {path}; to resume: {resume}" if path else "no ModelCheckpoint, nothing saved"
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
