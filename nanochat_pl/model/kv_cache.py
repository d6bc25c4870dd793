"""The KV cache for decoding: every layer's keys and values so far, preallocated, plus the smear state."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values (layer, batch, kv_head, time, head_dim): a layer's slice is in SDPA's (B, H, T, D) layout.

    `pos` is how many positions are filled: one Python int (reading it never synchronises with the device), as all
    rows sit at the same position (the engine prefills one prompt, replicates it to N rows, then feeds one token per
    row per step). The model writes each layer's new keys/values with `append` and calls `advance` once after its
    last layer. `prev_embedding` is the last token's normed embedding (B, 1, C) before smear: the next token mixes
    it in, as training mixes in x[t-1].
    """

    def __init__(self, batch_size, num_layers, num_kv_heads, head_dim, max_len, device=None, dtype=torch.float32):
        self.batch_size, self.max_len = batch_size, max_len
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.prev_embedding: Tensor | None = None

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write `layer`'s new keys/values (B, H_kv, T, D) at `pos`; return everything cached so far,
        the new ones included, as views (B, H_kv, pos + T, D)."""
        end = self.pos + k.size(2)
        assert k.size(0) == self.batch_size and end <= self.max_len, "wrong batch, or the cache overflows"
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens

    @torch.no_grad()
    def replicate(self, batch_size: int) -> KVCache:
        """A `batch_size`-row copy of this batch-1 cache."""
        assert self.batch_size == 1
        layers, _, num_kv_heads, _, head_dim = self.k.shape
        copy = KVCache(batch_size, layers, num_kv_heads, head_dim, self.max_len, self.k.device, self.k.dtype)
        copy.k[:, :, :, : self.pos] = self.k[:, :, :, : self.pos]
        copy.v[:, :, :, : self.pos] = self.v[:, :, :, : self.pos]
        copy.pos = self.pos
        if self.prev_embedding is not None:
            copy.prev_embedding = self.prev_embedding.expand(batch_size, -1, -1).clone()
        return copy
