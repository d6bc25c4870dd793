"""The KV cache for decoding: every layer's keys and values so far, preallocated, plus the smear state.

All rows of a batch sit at the same position (the engine prefills one prompt, replicates it to N samples and
then feeds one token per row per step), so the position is one Python int, not a per-row tensor; reading it
never synchronises with the device. Tensors are laid out (layer, batch, kv_head, time, head_dim): a
`[:, :, :end]` slice of one layer is already in the (B, H, T, D) layout that scaled_dot_product_attention
takes. nanochat HEAD keeps a cache of the same contents (engine.py@92d63d4, FA3 layout (L, B, T, H, D)).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of `num_layers` layers for `batch_size` rows, up to `max_len` positions.

    `pos` is how many positions are filled. The model writes each layer's new keys/values with `append`
    and calls `advance` once after its last layer. `prev_embedding` is the last token's normed token
    embedding (B, 1, C) before smear: the next token mixes it in, as training mixes in x[t-1].
    """

    def __init__(
        self,
        batch_size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if min(batch_size, num_layers, num_kv_heads, head_dim, max_len) < 1:
            raise ValueError(
                f"KVCache sizes must be positive, got batch_size={batch_size} num_layers={num_layers} "
                f"num_kv_heads={num_kv_heads} head_dim={head_dim} max_len={max_len}"
            )
        self.batch_size, self.num_layers, self.max_len = batch_size, num_layers, max_len
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.prev_embedding: Tensor | None = None

    def reset(self) -> None:
        """Empty the cache (the tensors are kept and overwritten by the next prefill)."""
        self.pos = 0
        self.prev_embedding = None

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write `layer`'s new keys/values (B, H_kv, T, D) at `pos`; return everything cached so far,
        the new ones included, as views (B, H_kv, pos + T, D)."""
        end = self.pos + k.size(2)
        if k.size(0) != self.batch_size:
            raise ValueError(f"the cache has {self.batch_size} rows, the input has {k.size(0)}")
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; writing up to {end} overflows it")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Move the position past the tokens every layer has just appended."""
        self.pos += num_tokens

    @torch.no_grad()
    def prefill_from(self, other: KVCache) -> None:
        """Copy `other`'s filled positions and smear state into this empty cache. `other` has this cache's
        batch size or batch 1; a batch-1 cache is broadcast to every row (one prompt, N samples)."""
        if self.pos != 0:
            raise ValueError("prefill_from needs an empty cache; call reset() first")
        if other.batch_size not in (1, self.batch_size):
            raise ValueError(f"cannot replicate a {other.batch_size}-row cache into {self.batch_size} rows")
        layout = lambda cache: (cache.num_layers, cache.k.size(2), cache.k.size(4))
        if layout(other) != layout(self):
            raise ValueError("prefill_from needs a cache of the same model (layers, kv heads, head_dim)")
        if other.pos > self.max_len:
            raise ValueError(f"the source holds {other.pos} positions; this cache only {self.max_len}")
        self.k[:, :, :, : other.pos] = other.k[:, :, :, : other.pos]
        self.v[:, :, :, : other.pos] = other.v[:, :, :, : other.pos]
        self.pos = other.pos
        if other.prev_embedding is not None:
            self.prev_embedding = other.prev_embedding.expand(self.batch_size, -1, -1).clone()

    def replicate(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A new `batch_size`-row cache (of `max_len` positions, default this one's) holding copies of this
        batch-1 cache: the engine prefills a prompt once and samples N continuations from it."""
        _, _, num_kv_heads, _, head_dim = self.k.shape
        copy = KVCache(
            batch_size,
            self.num_layers,
            num_kv_heads,
            head_dim,
            max_len or self.max_len,
            device=self.k.device,
            dtype=self.k.dtype,
        )
        copy.prefill_from(self)
        return copy
