"""`nanochat-pl bench train`: steady-state training speed of a config, measured through the real `fit` path.

The run is the config's own (its model, data stream, precision and strategy) for a few steps, with validation,
samples, logging and checkpoints turned off; the first `warmup` steps (compilation, allocator warm-up) are not
counted. Printed: tokens/s, step time, MFU where the device's peak is known, peak memory; the last line is JSON.
"""

from __future__ import annotations

import json
import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from nanochat_pl.bench import peak_rss_mb
from nanochat_pl.lightning_cli import run_lightning_cli


class StepTimer(L.Callback):
    """Wall time of every optimizer step (all its micro-batches), synchronised with the device."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self._last: float | None = None
        self._last_step = 0

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self._last_step:
            return  # a micro-batch inside an accumulation window
        self._sync(trainer)
        now = time.perf_counter()
        self.step_times.append(now - self._last)
        self._last, self._last_step = now, trainer.global_step


def bench_train(
    yaml: str = "configs/cpu/base_tiny.yaml",
    depth: int | None = None,
    steps: int = 20,
    warmup: int = 5,
    overrides: list[str] | None = None,
) -> dict:
    """Measure training throughput of a config.

    Args:
        yaml: The config, as given to `nanochat-pl fit --config` (more: `--overrides+=--config=FILE`).
        depth: Override the model depth.
        steps: Optimizer steps to run, including the warm-up.
        warmup: Leading steps left out of the figures.
        overrides: More `fit` arguments, e.g. ["--data.init_args.device_batch_size=8"].
    """
    timer = StepTimer()
    args = ["fit", "--config", yaml]
    if depth is not None:
        args.append(f"--model.init_args.depth={depth}")
    args += [
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",  # the config's checkpoints are not part of the measurement
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.sample_every=0",
        *(overrides or []),
    ]
    cli = run_lightning_cli(args, trainer_defaults={"callbacks": [timer]})
    module, trainer = cli.model, cli.trainer
    measured = timer.step_times[warmup:]
    if not measured:
        raise SystemExit(f"error: ran {len(timer.step_times)} steps, none left after {warmup} warm-up steps")
    step_time = sum(measured) / len(measured)
    batch = trainer.datamodule.device_batch_size * module.gpt_config.sequence_len
    tokens_per_step = batch * trainer.accumulate_grad_batches * trainer.world_size
    flops_per_step = module.flops_per_batch * trainer.accumulate_grad_batches * trainer.world_size
    device = trainer.strategy.root_device
    peak = get_available_flops(device, torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32)
    result = {
        "stage": module.stage_name,
        "depth": module.gpt_config.n_layer,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(trainer.precision),
        "tokens_per_step": tokens_per_step,
        "step_time_s": round(step_time, 4),
        "tokens_per_s": round(tokens_per_step / step_time, 1),
        "mfu": round(flops_per_step / step_time / (peak * trainer.world_size), 4) if peak else None,
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "steps_measured": len(measured),
    }
    for key, value in result.items():
        print(f"{key:<16}{value}")
    print(json.dumps(result))
    return result


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()
