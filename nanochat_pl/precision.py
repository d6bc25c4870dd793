"""Which dtype makes matmuls fast on a device: the CPU paths measure bf16 against fp32 and use the faster."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    # oneDNN runs bf16 matmuls natively on AVX512-BF16 / AMX CPUs; elsewhere bf16 is emulated and slow
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fast_compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its matmuls run natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32
