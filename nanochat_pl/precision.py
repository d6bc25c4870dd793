"""Which dtype a model computes in (bf16 or fp32), and the device's peak FLOP/s for MFU.

Evaluations run in a fixed dtype per device, as nanochat's (`eval_precision`): bf16 on CUDA wherever the card has it,
else fp32, so a checkpoint scores alike on every machine. `chat` and `serve` may go faster (`choose_precision`): on a
CPU no flag tells whether oneDNN runs bf16 natively or emulates it, and the gain depends on the shapes, so the model's
own kind of matmul (an MLP's input projection, at the row counts of decoding and of a short prefill) is timed in both
once per process and the faster kept. "bf16" or "fp32" forces either.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops
from torch.utils.benchmark import Timer

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
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


class PrecisionChoice(NamedTuple):
    """The compute dtype and why, in one line (the engine says it at start)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"


def eval_precision(device: torch.device, precision: str = "auto") -> PrecisionChoice:
    """The dtype evaluations run in on `device`: `precision` unless "auto", else bf16 on CUDA where the card has it,
    else fp32."""
    if precision != "auto":
        return PrecisionChoice(PRECISIONS[precision], f"{precision} (asked for)")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return PrecisionChoice(torch.bfloat16, "bf16 (the default on CUDA)")
    where = "this CUDA device, which has no bf16" if device.type == "cuda" else f"a {device.type.upper()}"
    return PrecisionChoice(torch.float32, f"fp32 (the default on {where})")


def choose_precision(device: torch.device, width: int, precision: str = "auto") -> PrecisionChoice:
    """`chat`'s and `serve`'s dtype for a model of hidden size `width`: `eval_precision`'s, except that "auto" on a
    CPU takes the faster of bf16 and fp32, measured."""
    if precision != "auto" or device.type != "cpu":
        return eval_precision(device, precision)
    fp32, bf16 = measured_cpu_seconds(width)
    faster = "bf16" if bf16 < fp32 else "fp32"
    reason = f"{faster} (faster on this CPU at width {width}: bf16 {bf16 * 1e3:.2f} ms vs fp32 {fp32 * 1e3:.2f} ms)"
    return PrecisionChoice(PRECISIONS[faster], reason)


def model_width(model: torch.nn.Module) -> int:
    """The hidden size the measurement uses: the input size of the model's first Linear (our GPT's c_q: n_embd)."""
    return next((m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)), 512)


@functools.cache
def measured_cpu_seconds(width: int) -> tuple[float, float]:
    """(fp32, bf16) seconds of one MLP input projection (4·width x width, model/gpt.py), summed over the row counts
    of decoding at batch 1 and 8 and of a short prefill: medians of torch's benchmark Timer, once per process."""
    torch.manual_seed(0)
    weight = torch.randn(4 * width, width) / width**0.5
    inputs = [torch.randn(rows, width) for rows in (1, 8, 64)]
    totals = []
    for dtype in (torch.float32, torch.bfloat16):
        tensors = [{"F": F, "x": x.to(dtype), "w": weight.to(dtype)} for x in inputs]
        timers = [Timer("F.linear(x, w)", globals=g, num_threads=torch.get_num_threads()) for g in tensors]
        totals.append(sum(timer.blocked_autorange(min_run_time=0.02).median for timer in timers))
    return totals[0], totals[1]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for matmuls in `dtype` (None where unknown, e.g. a CPU): DENSE_BF16_PEAKS for
    bf16 on the NVIDIA cards it names, else Lightning's table."""
    name = torch.cuda.get_device_name(device).lower() if device.type == "cuda" and dtype == torch.bfloat16 else ""
    return next((flops for key, flops in DENSE_BF16_PEAKS if key in name), None) or get_available_flops(device, dtype)
