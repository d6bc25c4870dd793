"""`nanochat-pl bench train` and `bench variants`: steady-state training speed of a config, through the real `fit`.

`bench train` runs the config for a few steps with validation, sampling, logging and checkpoints off, the first
`warmup` steps (compilation) not counted; an RL config is measured by what it samples, against the engine's own decode
speed on the same model and batch. `bench variants` runs `bench train` once per variant, each in its own process (a
crash or an out-of-memory takes no other with it, and each peak memory is its own), and tabulates them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import lightning as L
import torch
from yaml import safe_load

from nanochat_pl.bench import device_name, peak_memory_mb
from nanochat_pl.bench.infer_bench import NeverStopping, time_generation
from nanochat_pl.common import UserError, config_path, error_line, format_duration, last_json, nanochat_command
from nanochat_pl.engine import Engine
from nanochat_pl.lightning_cli import run_lightning_cli
from nanochat_pl.precision import peak_flops
from nanochat_pl.stages.rl import RLTraining


class StepTimer(L.Callback):
    """Wall time of every optimizer step (all its micro-batches), synchronised with the device, and the module's
    sampling totals after it (RL). It applies the two choices that are not config settings: attention and sharding."""

    def __init__(self, attention: str, shard_optimizer: bool) -> None:
        self.attention, self.shard_optimizer = attention, shard_optimizer
        self.step_times: list[float] = []
        self.sampling: list[dict[str, float]] = []
        self._last, self._last_step = 0.0, 0

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.model.set_attention_kernel(self.attention)
        for optimizer in trainer.optimizers:
            optimizer.shard = self.shard_optimizer

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
        overrides: More `fit` arguments, e.g. ["--data.init_args.device_batch_size=8", "--model.init_args.fp8=true",
            "--trainer.precision=null", '--trainer.plugins=[{class_path: nanochat_pl.stages.precision.NanochatBf16}]'].
        attention: The attention kernel: "auto" (flex_attention / flash for CUDA's sliding windows), "sdpa"
            (band-masked SDPA everywhere) or "flex" (CUDA: flex_attention has no CPU backward).
        shard_optimizer: Share MuonAdamW's state and work out across ranks (false: every rank does every update).
    """
    timer, yaml = StepTimer(attention, shard_optimizer), str(config_path(yaml))
    args = ["fit", "--config", yaml]
    if depth is not None:
        args.append(f"--model.init_args.depth={depth}")
    with open(yaml) as file:
        rl = (safe_load(file).get("model") or {}).get("class_path", "").endswith(f".{RLTraining.__name__}")
    if rl:
        args.append("--model.init_args.eval_every=0")  # the held-out pass@k is measurement, not training
    # no validation, logging, samples or progress bar; no callbacks: the config's checkpoints are not measured
    args += [f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.logger=false"]
    args += ["--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"]
    args += ["--model.init_args.sample_every=0", *(overrides or [])]
    cli = run_lightning_cli(args, trainer_defaults={"callbacks": [timer]})  # out of memory: one line, naming the flag
    module, trainer = cli.model, cli.trainer
    measured = timer.step_times[warmup:]
    if not measured:
        raise UserError(f"ran {len(timer.step_times)} steps, none left after {warmup} warm-up steps")
    step_time = sum(measured) / len(measured)
    device = trainer.strategy.root_device
    plugin = trainer.precision_plugin  # ours by its class (NanochatBf16 says "bf16-mixed", for MFU's bf16 peak)
    ours = type(plugin).__module__.startswith("nanochat_pl.")
    result = {"stage": module.stage_name, "depth": module.gpt_config.n_layer, "device": device_name(device)}
    result["precision"] = type(plugin).__name__ if ours else str(trainer.precision)
    if rl:
        result |= _rl_figures(module, timer, warmup, step_time)
    else:
        accumulated = trainer.accumulate_grad_batches * trainer.world_size
        tokens_per_step = trainer.datamodule.device_batch_size * module.gpt_config.sequence_len * accumulated
        peak = peak_flops(device, torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32)
        mfu = module.flops_per_batch * accumulated / step_time / (peak * trainer.world_size) if peak else None
        result |= {"attention": attention, "shard_optimizer": shard_optimizer and trainer.world_size > 1}
        result |= {"tokens_per_step": tokens_per_step, "tokens_per_s": round(tokens_per_step / step_time, 1)}
        result["mfu"] = None if mfu is None else round(mfu, 4)
    result |= {"step_time_s": round(step_time, 4), "peak_memory_mb": round(peak_memory_mb(device), 1)}
    result["steps_measured"] = len(measured)
    if trainer.is_global_zero:  # every DDP rank gets here
        width = max(map(len, result)) + 2
        for key, value in result.items():
            print(f"{key:<{width}}{value}")
        print(json.dumps(result))
    return result


def _rl_figures(module: RLTraining, timer: StepTimer, warmup: int, step_time: float) -> dict:
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
    figures = {"samples_per_step": module.trainer.datamodule.examples_per_step * module.hparams.num_samples}
    figures |= {"sample_batch": rows, "optimizer_steps_per_s": round(1 / step_time, 4)}
    figures["sampling_share"] = round(done["seconds"] / (step_time * (len(timer.step_times) - warmup)), 3)
    figures["sampled_tokens_per_s"] = round(done["tokens"] / done["seconds"], 1)
    figures["decode_tokens_per_s"] = round(done["decode_slots"] / done["seconds"], 1)
    figures |= {"engine_tokens_per_s": round(rows / time_per_token, 1), "mean_prompt_tokens": prompt_len}
    return figures | {"mean_decode_steps": decode_len}


NANOCHAT_BF16 = ["--trainer.precision=null"]
NANOCHAT_BF16 += ["--trainer.plugins=[{class_path: nanochat_pl.stages.precision.NanochatBf16}]"]
FP8 = ["--model.init_args.fp8=true"]
DEFAULT_VARIANTS: dict[str, dict] = {
    "baseline (band-masked SDPA)": {"attention": "sdpa"},
    "window attention": {"attention": "auto"},
    "NanochatBf16": {"attention": "sdpa", "overrides": NANOCHAT_BF16},
    "fp8": {"attention": "sdpa", "overrides": FP8},
    "all three": {"attention": "auto", "overrides": NANOCHAT_BF16 + FP8},
}
VARIANT_KEYS = ("attention", "shard_optimizer", "overrides")


def bench_variants(
    yaml: str = "configs/base_d12.yaml",
    variants: dict[str, dict] | None = None,
    overrides: list[str] | None = None,
    steps: int = 20,
    warmup: int = 5,
    timeout: float = 1800,
) -> dict:
    """Measure training throughput of a config in several variants, each in its own process.

    Args:
        yaml: The config, as given to `nanochat-pl fit --config`.
        variants: Name -> `bench train` arguments: `attention`, `shard_optimizer`, `overrides` (`fit` arguments, after
            the common ones). Default: the GPU switches, each alone and all together. E.g. the largest device batch
            that fits: '{"16": {"overrides": ["--data.init_args.device_batch_size=16"]}, "32": {...}}'.
        overrides: `fit` arguments every variant takes first, e.g. ["--config=configs/trainer/gpu1.yaml"].
        steps: Optimizer steps of each run, including the warm-up.
        warmup: Leading steps left out of each run's figures.
        timeout: Seconds a variant may take (compilation included) before it is stopped and its row says so.
    """
    variants = variants or DEFAULT_VARIANTS
    for name, arguments in variants.items():
        if unknown := ", ".join(sorted(set(arguments) - set(VARIANT_KEYS))):
            raise UserError(f"variant {name!r}: unknown {unknown} (a variant takes {', '.join(VARIANT_KEYS)})")
    rows = []
    for number, (name, arguments) in enumerate(variants.items(), 1):
        argv = [
            *("bench", "train", "--yaml", yaml, "--steps", str(steps), "--warmup", str(warmup)),
            *("--attention", str(arguments.get("attention", "auto"))),
            *("--shard_optimizer", json.dumps(bool(arguments.get("shard_optimizer", True)))),
            *("--overrides", json.dumps([*(overrides or []), *arguments.get("overrides", [])])),
        ]
        started = time.perf_counter()
        try:
            done = subprocess.run(nanochat_command(argv), capture_output=True, text=True, timeout=timeout)
            error = error_line(done.stderr.splitlines()) or f"bench train exited with code {done.returncode}"
            result = (last_json(done.stdout.strip().splitlines()) if done.returncode == 0 else None) or {"error": error}
        except subprocess.TimeoutExpired:
            result = {"error": f"error: no result after {format_duration(timeout)} (the run was stopped)"}
        rows.append({"variant": name, **arguments, **result})
        outcome = result.get("error") or f"{result['tokens_per_s']:,.0f} tokens/s"
        elapsed = format_duration(time.perf_counter() - started)
        print(f"[{number}/{len(variants)}] {name}: {outcome} ({elapsed})", file=sys.stderr, flush=True)
    print(_table(rows))
    result = {"yaml": yaml, "overrides": overrides or [], "steps": steps, "warmup": warmup, "variants": rows}
    print(json.dumps(result))
    return result


def _table(rows: list[dict]) -> str:
    """Precision, tokens/s, speed against the first variant, MFU, peak memory, step time; a failed run its error."""
    first = rows[0].get("tokens_per_s")
    width = max(len("variant"), *(len(row["variant"]) for row in rows))
    lines = [f"{'variant':<{width}}  {'precision':<12}      tokens/s  vs first     MFU  peak GiB    step s"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:<{width}}  {row['error']}")
            continue
        speed = f"{row['tokens_per_s'] / first:.2f}x" if first else "—"
        mfu = "—" if row.get("mfu") is None else f"{row['mfu']:.1%}"
        lines.append(
            f"{row['variant']:<{width}}  {row['precision']:<12}  {row['tokens_per_s']:>12,.0f}  {speed:>8}  "
            f"{mfu:>6}  {row['peak_memory_mb'] / 1024:>8.2f}  {row['step_time_s']:>8.3f}"
        )
    return "\n".join(lines)
