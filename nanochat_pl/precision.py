"""Which dtype a model computes in (bf16 or fp32), and the device's peak FLOP/s for MFU.

Evaluations run in nanochat's fixed dtype per device (`eval_precision`: bf16 on CUDA where the card has it, else
fp32), so a checkpoint scores alike on every machine. `chat` and `serve` go for speed (`choose_precision`): on a CPU
no flag tells whether oneDNN runs bf16 natively or emulates it, so the model's kind of matmul is timed in both.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops
from torch.utils.benchmark import Timer

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Dense bf16 tensor-core peaks in FLOP/s, from NVIDIA's data sheets (which print twice these, with sparsity), most
# specific name first: the basis of MFU, as nanochat's 989e12 for an H100. Lightning's table gives the H200 and
# the H100 NVL their sparse figures and does not know the name "NVIDIA H200". "h100": the SXM ("NVIDIA H100 80GB
# HBM3"); "h200" ("NVIDIA H200", "NVIDIA GH200 ..."): the H100's tensor cores, more and faster memory.
DENSE_BF16_PEAKS = {"h100 nvl": 835e12, "h100 pcie": 756e12, "h100": 989.4e12, "h200 nvl": 835e12, "h200": 989.4e12}


def eval_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision evaluations run in on `device`, "bf16" or "fp32": `precision` unless "auto", else nanochat's,
    fixed per device: bf16 on CUDA where the card has it, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def choose_precision(device: torch.device, width: int, precision: str = "auto") -> tuple[str, str]:
    """`chat`'s and `serve`'s precision for a model of hidden size `width`, and why: `eval_precision`'s, except
    that "auto" on a CPU takes the faster of bf16 and fp32, measured."""
    if precision != "auto" or device.type != "cpu":
        why = "asked for" if precision != "auto" else f"the default on {device.type}"
        return eval_precision(device, precision), why
    fp32, bf16 = measured_cpu_seconds(width)
    why = f"faster on this CPU at width {width}: bf16 {bf16 * 1e3:.2f} ms vs fp32 {fp32 * 1e3:.2f} ms"
    return "bf16" if bf16 < fp32 else "fp32", why


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
    dense = next((flops for key, flops in DENSE_BF16_PEAKS.items() if key in name), None)
    return dense or get_available_flops(device, dtype)
