"""Rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864), the GPT's only position signal."""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_tables(seq_len: int, head_dim: int, base: float, device: torch.device | None = None):
    """cos and sin of the angles t·base^(-2i/head_dim) of channel pair i at position t, each (seq_len, head_dim/2)."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the channel pairs (i, i + D/2) of x (B, H, T, D) by -angle, nanochat's convention (gpt.py@92d63d4):
    for training the same as +angle (only q·k's relative rotation matters), and nanochat's checkpoints load. The
    tables are cast to x's dtype, so under bf16 autocast q and k stay bf16 as the matmuls produced them."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)
