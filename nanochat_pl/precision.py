"""Which dtype makes a model's matmuls fast on a device: bf16 or fp32.

On CUDA bf16 (nanochat's choice) wherever the card has it. On a CPU no flag tells: oneDNN runs bf16 matmuls
natively with AVX512-BF16 or AMX and emulates them elsewhere, and how much of the gain survives depends on the
shapes (on an AMD EPYC without native bf16, batch-1 decoding of d4 over bf16 weights beat fp32, its prefill took 3x
longer). So the CPU choice is measured: at first use, the model's own kind of matmul (an MLP's input projection at
its width, at the row counts of decoding and of a short prefill) is timed in both, weights and inputs in the dtype,
as the engine computes (engine.py: a loaded checkpoint's weights are stored in bf16, a training model's cast once
per generation), and the faster is kept for the process. "bf16" or "fp32" forces either.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops

from nanochat_pl.common import UserError

PRECISIONS = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}
# Dense bf16 tensor-core peaks in FLOP/s, from NVIDIA's data sheets (which print twice these, with sparsity), most
# specific name first: the basis of MFU, as nanochat's 989e12 for an H100. Lightning's table gives the H200 and
# the H100 NVL their sparse figures and does not know the name "NVIDIA H200".
DENSE_BF16_PEAKS = (
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989.4e12),  # SXM: "NVIDIA H100 80GB HBM3"
    ("h200 nvl", 835e12),
    ("h200", 989.4e12),  # "NVIDIA H200", "NVIDIA GH200 ...": the H100's tensor cores, more and faster memory
)
MEASURED_ROWS = (1, 8, 64)  # decoding at batch 1 and 8, and a short prefill
MEASURE_SECONDS = 0.02  # per dtype and row count: ~0.15 s in all at first use
MLP_EXPANSION = 4  # the MLP's input projection is width x 4·width (model/gpt.py)


@dataclass(frozen=True)
class PrecisionChoice:
    """The compute dtype and why, in one line (the engine says it at start)."""

    dtype: torch.dtype
    reason: str


def choose_precision(device: torch.device, width: int, precision: str = "auto") -> PrecisionChoice:
    """The compute dtype for a model of hidden size `width` on `device`: `precision` "bf16" or "fp32" as given,
    "auto" bf16 on CUDA where supported and on a CPU whichever the measurement finds faster."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if PRECISIONS[precision] is not None:
        return PrecisionChoice(PRECISIONS[precision], f"{precision} (asked for)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, "bf16 (CUDA)")
        return PrecisionChoice(torch.float32, "fp32 (this CUDA device has no bf16)")
    if device.type != "cpu":
        return PrecisionChoice(torch.float32, f"fp32 ({device.type})")
    fp32, bf16 = measured_cpu_seconds(width)
    faster = "bf16" if bf16 < fp32 else "fp32"
    reason = f"{faster} (measured on this CPU at width {width}: bf16 {bf16 * 1e3:.2f} ms vs fp32 {fp32 * 1e3:.2f} ms)"
    return PrecisionChoice(PRECISIONS[faster], reason)


def fast_compute_dtype(device: torch.device, width: int) -> torch.dtype:
    """`choose_precision(device, width)`'s dtype: what the evals and the engine run in by default."""
    return choose_precision(device, width).dtype


def model_width(model: torch.nn.Module) -> int:
    """The hidden size the measurement uses: our GPT's n_embd, else the input size of the model's first Linear."""
    config = getattr(model, "config", None)
    if isinstance(getattr(config, "n_embd", None), int):
        return config.n_embd
    linear = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
    return linear.in_features if linear is not None else 512


@functools.cache
def measured_cpu_seconds(width: int) -> tuple[float, float]:
    """(fp32, bf16) seconds of one MLP input projection, weights and input in the dtype, at each of MEASURED_ROWS,
    summed: the median of timed calls after a warm-up. Cached: measured once per process and width."""
    torch.manual_seed(0)
    weight = torch.randn(MLP_EXPANSION * width, width) / width**0.5
    inputs = [torch.randn(rows, width) for rows in MEASURED_ROWS]
    totals = []
    for dtype in (torch.float32, torch.bfloat16):
        stored = weight.to(dtype)
        total = 0.0
        with torch.inference_mode():
            for x in inputs:
                x = x.to(dtype)
                F.linear(x, stored)  # warm-up: oneDNN picks and caches its kernel
                times, started = [], time.perf_counter()
                while time.perf_counter() - started < MEASURE_SECONDS or len(times) < 3:
                    tick = time.perf_counter()
                    F.linear(x, stored)
                    times.append(time.perf_counter() - tick)
                total += statistics.median(times)
        totals.append(total)
    return totals[0], totals[1]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for matmuls in `dtype` (None where unknown, e.g. a CPU): DENSE_BF16_PEAKS for
    bf16 on the NVIDIA cards it names, else Lightning's table."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device).lower()
        peak = next((flops for key, flops in DENSE_BF16_PEAKS if key in name), None)
        if peak is not None:
            return peak
    return get_available_flops(device, dtype)
