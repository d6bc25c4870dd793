"""The attention kernels, kept apart from the architecture (nanochat's flash_attention.py plays this part).

`attention(q, k, v, window, kernel)` is causal, optionally sliding-window attention with FA3's window_size=(window,
0) semantics: the query at position i sees the keys i-window..i. Every path computes the same function; they differ
in cost only. Full layers, decoding and CPU take SDPA; sliding windows on CUDA take FlashAttention (FA2 or FA3, if
installed, for bf16/fp16) or else `flex_attention`, whose cost follows the window. `kernel="flex"` forces
flex_attention for every windowed call (on CPU eager, without backward: a testing path), "sdpa" the SDPA paths.
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

KERNELS = ("auto", "sdpa", "flex")
# The banded sliding-window path pays for padding and key-block copies; below this many windows per
# sequence one masked SDPA call is faster on CPU, from this many on it is as fast or faster.
BANDED_MIN_WINDOWS = 4


def _load_flash_attn():
    """FlashAttention's `flash_attn_func` (FA3 first, then FA2) or None. Optional: neither is a dependency."""
    for module in ("flash_attn_interface", "flash_attn"):
        try:
            return importlib.import_module(module).flash_attn_func
        except Exception:  # not installed, or built for another torch/GPU: use flex_attention instead
            continue


_FLASH_ATTN_FUNC = _load_flash_attn()  # resolved once, at import: never inside a compiled graph


def attention(q: Tensor, k: Tensor, v: Tensor, window: int | None, kernel: str = "auto") -> Tensor:
    """q (B, H, Tq, D), the last Tq positions, over k, v (B, H_kv, Tk, D) -> (B, H, Tq, D). H_kv divides H (GQA);
    Tk > Tq when a KV cache holds earlier tokens; window None is full causal attention."""
    num_queries, num_keys = q.size(2), k.size(2)
    if window is None or window >= num_keys - 1:  # the window covers every key: plain causal attention
        return sdpa_attention(q, k, v, None)
    differentiable = torch.is_grad_enabled() or torch.compiler.is_compiling()
    # FlashAttention takes CUDA tensors of one half-precision dtype, with head_dim a multiple of 8 up to 256
    half = q.dtype in (torch.bfloat16, torch.float16) and k.dtype == v.dtype == q.dtype
    flash = _FLASH_ATTN_FUNC is not None and q.is_cuda and half and q.size(-1) % 8 == 0 and q.size(-1) <= 256
    choice = window_kernel(kernel, q.is_cuda, num_queries == num_keys, flash, differentiable)
    kernels = {"flash": flash_window_attention, "flex": flex_window_attention, "sdpa": sdpa_attention}
    return kernels[choice](q, k, v, window)


def window_kernel(kernel: str, cuda: bool, whole_sequence: bool, flash: bool, differentiable: bool) -> str:
    """The kernel of a sliding-window call: "flash", "flex" or "sdpa". An eager forward without gradients (an
    engine's prefill) avoids flex: compiling it for every new prompt length would cost seconds to first token."""
    if kernel != "auto":
        return kernel
    if cuda and whole_sequence and (flash or differentiable):
        return "flash" if flash else "flex"
    return "sdpa"


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
    """`attention` through F.scaled_dot_product_attention, cheapest path first. The band scores each W-query block
    against 2W keys, which is why CUDA's sliding windows go to flash_attn / flex_attention instead."""
    num_queries, num_keys = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window is not None and num_keys - num_queries > window:  # keys before the first query's window
        k, v = k[:, :, num_keys - num_queries - window :], v[:, :, num_keys - num_queries - window :]
        num_keys = k.size(2)
    if num_queries == 1:  # a decoded token: every key left is in its window
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if num_queries == num_keys and (window is None or window >= num_queries - 1):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if num_queries == num_keys and num_queries >= BANDED_MIN_WINDOWS * window:  # memory O(T·2W), not O(T²)
        return banded_attention(q, k, v, window)
    mask = causal_window_mask(num_queries, num_keys, window, q.device)  # a short sequence, a prefill after a cache
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def causal_window_mask(num_queries: int, num_keys: int, window: int | None, device) -> Tensor:
    """(Tq, Tk) bool mask, True = attend, for queries that are the last Tq of Tk positions: query i sees
    key j iff j <= i and (window is None or i - j <= window)."""
    i = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]
    j = torch.arange(num_keys, device=device)[None, :]
    mask = j <= i
    return mask if window is None else mask & (i - j <= window)


def banded_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Sliding-window causal attention without a T×T mask: queries in blocks of W = `window`, each block against the
    keys [block_start - W, block_end) with a (W × 2W) band mask. q (B, H, T, D); k, v (B, H_kv, T, D)."""
    B, H, T, D = q.shape
    H_kv, W = k.size(1), window
    num_blocks = math.ceil(T / W)
    pad = num_blocks * W - T
    q_blocks = F.pad(q, (0, 0, 0, pad)).view(B, H, num_blocks, W, D).transpose(1, 2)
    q_blocks = q_blocks.reshape(B * num_blocks, H, W, D)

    def key_blocks(t: Tensor) -> Tensor:  # block b: positions [b·W - W, b·W + W), zero-padded at both ends
        t = F.pad(t, (0, 0, W, pad)).unfold(2, 2 * W, W)  # (B, H_kv, blocks, D, 2W)
        return t.permute(0, 2, 1, 4, 3).reshape(B * num_blocks, H_kv, 2 * W, D)

    # query b·W + a sees key b·W - W + c iff 0 <= (a + W) - c <= W, and the key is not left padding
    a = torch.arange(W, device=q.device)[:, None]
    c = torch.arange(2 * W, device=q.device)[None, :]
    b = torch.arange(num_blocks, device=q.device)[:, None, None]
    mask = (c >= a) & (c <= a + W) & (b * W - W + c >= 0)  # (blocks, W, 2W), same for every batch row
    mask = mask.unsqueeze(1).repeat(B, 1, 1, 1)
    y = F.scaled_dot_product_attention(q_blocks, key_blocks(k), key_blocks(v), attn_mask=mask, enable_gqa=H_kv != H)
    return y.view(B, num_blocks, H, W, D).transpose(1, 2).reshape(B, H, num_blocks * W, D)[:, :, :T]


# flex_attention: a block-sparse kernel that skips the key blocks outside every query block's window
def sliding_window_block_mask(num_queries: int, num_keys: int, window: int, device) -> BlockMask:
    """The BlockMask of `causal_window_mask` (queries the last Tq of Tk positions). Cached per shape, window
    and device outside compiled code; built in the graph when traced (torch.compile of the whole forward)."""
    if torch.compiler.is_compiling():  # the uncached function, traced into the graph
        return _block_mask.__wrapped__(num_queries, num_keys, window, torch.device(device))
    # outside inference mode, whatever the first caller's: flex_attention saves the mask's tensors for backward,
    # and an inference tensor cached by a validation pass or a prefill could not be saved by training after it
    with torch.inference_mode(False), torch.no_grad():
        return _block_mask(num_queries, num_keys, window, torch.device(device))


@functools.lru_cache(maxsize=64)
def _block_mask(num_queries: int, num_keys: int, window: int, device: torch.device) -> BlockMask:
    offset = num_keys - num_queries  # query index q_idx is position q_idx + offset

    def sliding_window_causal(b, h, q_idx, kv_idx):
        position = q_idx + offset
        return (position >= kv_idx) & (position - kv_idx <= window)

    return create_block_mask(sliding_window_causal, None, None, num_queries, num_keys, device=device)


@functools.cache
def _compiled_flex_attention():
    """flex_attention compiled once (its documentation: eager flex materialises the scores; compiled it is a
    fused block-sparse kernel). Shapes that change recompile, then go dynamic (torch.compile's default)."""
    return torch.compile(flex_attention)


def flex_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Sliding-window causal attention through flex_attention: compiled off CPU (inlined when the caller is
    itself being compiled), eager on CPU, where flex has no compiled backward and this is a testing path."""
    block_mask = sliding_window_block_mask(q.size(2), k.size(2), window, q.device)
    eager = torch.compiler.is_compiling() or q.device.type == "cpu"
    flex = flex_attention if eager else _compiled_flex_attention()
    return flex(q, k, v, block_mask=block_mask, enable_gqa=q.size(1) != k.size(1))


def flash_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """FlashAttention with window_size=(window, 0) in its (B, T, H, D) layout (a transposed view: the head
    dimension stays contiguous). With Tq < Tk, causal is aligned to the last key (flash_attn >= 2.1), as here."""
    out = _FLASH_ATTN_FUNC(*(t.transpose(1, 2) for t in (q, k, v)), causal=True, window_size=(window, 0))
    if isinstance(out, tuple):  # some FA3 builds return (out, softmax_lse)
        out = out[0]
    return out.transpose(1, 2)
