"""`nanochat-pl bench train`: steady-state training speed of a config, measured through the real `fit` path.

The run is the config's own (its model, data stream, precision and strategy) for a few steps, with validation,
samples, logging and checkpoints turned off; the first `warmup` steps (compilation, allocator warm-up) are not
counted. Printed: tokens/s, step time, MFU where the device's peak is known, peak memory; the last line is JSON.

An RL config (stages/rl.py) samples inside its steps, so it is measured by what it samples instead: optimizer
steps/s, sampled tokens/s (the replies' tokens over the time spent in the engine), the engine's decode rate
during sampling (batch rows x decode steps / that time) and, for comparison, the engine's own decode speed on
the same model and batch as `bench infer` measures it (its median time per token), with the held-out
evaluation turned off.
"""

from __future__ import annotations

import json
import time

import lightning as L
import torch
from yaml import safe_load

from nanochat_pl.bench import peak_memory_mb
from nanochat_pl.bench.infer import NeverStopping, time_generation
from nanochat_pl.engine import Engine
from nanochat_pl.lightning_cli import run_lightning_cli
from nanochat_pl.precision import peak_flops
from nanochat_pl.stages.rl import RLTraining


class StepTimer(L.Callback):
    """Wall time of every optimizer step (all its micro-batches), synchronised with the device, and the module's
    sampling totals after it (RL)."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.sampling: list[dict[str, float]] = []
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
        self.sampling.append(dict(getattr(pl_module, "sampling", {})))
        self._last, self._last_step = now, trainer.global_step


class RunSwitches(L.Callback):
    """Run-time choices that are not settings of the config, applied once the model and optimizer exist: the
    attention kernel (model/attention.py) and whether MuonAdamW shares its work out across ranks."""

    def __init__(self, attention: str, shard_optimizer: bool) -> None:
        self.attention, self.shard_optimizer = attention, shard_optimizer

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.model.set_attention_kernel(self.attention)
        for optimizer in trainer.optimizers:
            optimizer.shard = self.shard_optimizer


def bench_train(
    yaml: str = "configs/cpu/base_tiny.yaml",
    depth: int | None = None,
    steps: int = 20,
    warmup: int = 5,
    overrides: list[str] | None = None,
    attention: str = "auto",
    shard_optimizer: bool = True,
) -> dict:
    """Measure training throughput of a config.

    Args:
        yaml: The config, as given to `nanochat-pl fit --config` (more: `--overrides+=--config=FILE`).
        depth: Override the model depth.
        steps: Optimizer steps to run, including the warm-up.
        warmup: Leading steps left out of the figures.
        overrides: More `fit` arguments, e.g. ["--data.init_args.device_batch_size=8",
            "--model.init_args.fp8=true", "--trainer.precision=null",
            '--trainer.plugins=[{class_path: nanochat_pl.stages.precision.NanochatBf16}]'].
        attention: The attention kernel: "auto" (flex_attention / flash for CUDA's sliding windows), "sdpa" (the
            band-masked SDPA paths everywhere, as before flex) or "flex" (CUDA: flex_attention has no CPU backward).
        shard_optimizer: Share MuonAdamW's state and work out across ranks (several GPUs); false: every rank
            computes every update.
    """
    timer = StepTimer()
    args = ["fit", "--config", yaml]
    if depth is not None:
        args.append(f"--model.init_args.depth={depth}")
    rl = _is_rl(yaml)
    if rl:
        args.append("--model.init_args.eval_every=0")  # the held-out pass@k is measurement, not training
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
    try:
        cli = run_lightning_cli(args, trainer_defaults={"callbacks": [timer, RunSwitches(attention, shard_optimizer)]})
    except torch.OutOfMemoryError as error:  # finding the largest device batch that fits is a use of this command
        reason = ". ".join(str(error).split(". ")[:2])  # "CUDA out of memory. Tried to allocate 2.00 GiB"
        hint = "(a smaller data.init_args.device_batch_size?)"
        raise SystemExit(f"error: out of device memory: {reason} {hint}") from None
    module, trainer = cli.model, cli.trainer
    measured = timer.step_times[warmup:]
    if not measured:
        raise SystemExit(f"error: ran {len(timer.step_times)} steps, none left after {warmup} warm-up steps")
    step_time = sum(measured) / len(measured)
    if rl:
        return _rl_result(module, trainer, timer, warmup, step_time)
    batch = trainer.datamodule.device_batch_size * module.gpt_config.sequence_len
    tokens_per_step = batch * trainer.accumulate_grad_batches * trainer.world_size
    flops_per_step = module.flops_per_batch * trainer.accumulate_grad_batches * trainer.world_size
    device = trainer.strategy.root_device
    peak = peak_flops(device, torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32)
    result = {
        "stage": module.stage_name,
        "depth": module.gpt_config.n_layer,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision_name(trainer),
        "attention": attention,
        "shard_optimizer": shard_optimizer and trainer.world_size > 1,
        "tokens_per_step": tokens_per_step,
        "step_time_s": round(step_time, 4),
        "tokens_per_s": round(tokens_per_step / step_time, 1),
        "mfu": round(flops_per_step / step_time / (peak * trainer.world_size), 4) if peak else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "steps_measured": len(measured),
    }
    return _report(result, trainer)


def precision_name(trainer: L.Trainer) -> str:
    """Lightning's precision setting, or the plugin's class where it is ours (NanochatBf16 says "bf16-mixed" to
    Lightning, so that MFU takes the bf16 peak)."""
    plugin = trainer.precision_plugin
    return type(plugin).__name__ if type(plugin).__module__.startswith("nanochat_pl.") else str(trainer.precision)


def _report(result: dict, trainer: L.Trainer) -> dict:
    """Print the result as a table and one JSON line, on global rank 0 only (every DDP rank gets here)."""
    if not trainer.is_global_zero:
        return result
    width = max(map(len, result)) + 2
    for key, value in result.items():
        print(f"{key:<{width}}{value}")
    print(json.dumps(result))
    return result


def _is_rl(yaml_path: str) -> bool:
    """Whether the config trains the RL stage."""
    with open(yaml_path) as file:
        class_path = (safe_load(file).get("model") or {}).get("class_path", "")
    return class_path.rpartition(".")[2] == RLTraining.__name__


def _rl_result(module: RLTraining, trainer: L.Trainer, timer: StepTimer, warmup: int, step_time: float) -> dict:
    """The RL figures of the measured steps: what they sampled, how fast, against the engine's own decode speed."""
    first, last = timer.sampling[warmup - 1] if warmup else dict.fromkeys(timer.sampling[-1], 0), timer.sampling[-1]
    done = {key: last[key] - first[key] for key in last}
    rows = module.hparams.device_batch_size
    prompt_len = round(done["prompt_tokens"] / done["chunks"])
    decode_len = max(2, round(done["decode_slots"] / (done["chunks"] * rows)))
    # the engine alone on the same model and batch: bench infer's measurement (median time per decoded token)
    engine = Engine(module.model, NeverStopping(module.gpt_config.vocab_size))
    prompt = torch.randint(module.gpt_config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0))
    module.model.eval()
    time_generation(engine, prompt.tolist()[:16], 1, 4, seed=0)  # warm-up
    time_per_token = min(time_generation(engine, prompt.tolist(), rows, decode_len, seed=0)[1] for _ in range(3))
    device = trainer.strategy.root_device
    data = trainer.datamodule
    result = {
        "stage": module.stage_name,
        "depth": module.gpt_config.n_layer,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision_name(trainer),
        "samples_per_step": data.examples_per_step * module.hparams.num_samples,
        "sample_batch": rows,
        "step_time_s": round(step_time, 4),
        "optimizer_steps_per_s": round(1 / step_time, 4),
        "sampling_share": round(done["seconds"] / (step_time * (len(timer.step_times) - warmup)), 3),
        "sampled_tokens_per_s": round(done["tokens"] / done["seconds"], 1),
        "decode_tokens_per_s": round(done["decode_slots"] / done["seconds"], 1),
        "engine_tokens_per_s": round(rows / time_per_token, 1),
        "mean_prompt_tokens": prompt_len,
        "mean_decode_steps": decode_len,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "steps_measured": len(timer.step_times) - warmup,
    }
    return _report(result, trainer)
