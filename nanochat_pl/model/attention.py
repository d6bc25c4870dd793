"""The attention kernel choice, kept apart from the architecture (nanochat's flash_attention.py plays this part).

`attention(q, k, v, window, kernel)` is causal, optionally sliding-window attention with FA3's
window_size=(window, 0) semantics: the query at position i sees the keys i-window..i (window + 1 tokens). q is
(B, H, Tq, D), the last Tq positions; k, v are (B, H_kv, Tk, D), all Tk positions (Tk > Tq when a KV cache holds
earlier tokens); H_kv divides H (grouped-query attention). Every path computes the same function; they differ in
cost only:

- full layers, and windows that cover the whole sequence: causal SDPA (flash / memory-efficient kernels);
- one decoded token: SDPA over the keys left in its window, no mask;
- sliding windows on CUDA: a kernel whose cost follows the window, FlashAttention's window_size where
  `flash_attn` (FA2) or `flash_attn_interface` (FA3) is installed and the inputs are bf16/fp16, otherwise
  `flex_attention` with a sliding-window BlockMask (compiled, as its documentation requires for speed) when
  training or compiled; an eager prefill without gradients takes the SDPA band (`window_kernel`);
- sliding windows on CPU: the measured SDPA paths (`sdpa_attention`: a band of W-query blocks against 2W keys,
  or one masked call).

`kernel="flex"` forces flex_attention for every windowed call (on CPU its eager reference implementation, which
has no backward there: a testing path), `kernel="sdpa"` the SDPA paths everywhere; "auto" picks as above.
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
# sequence one masked SDPA call was faster on CPU (measured, see `sdpa_attention`).
BANDED_MIN_WINDOWS = 4


def _load_flash_attn():
    """FlashAttention's `flash_attn_func` (FA3 first, then FA2) or None. Optional: neither is a dependency."""
    for module in ("flash_attn_interface", "flash_attn"):
        try:
            return importlib.import_module(module).flash_attn_func
        except Exception:  # not installed, or built for another torch/GPU: use flex_attention instead
            continue
    return None


_FLASH_ATTN_FUNC = _load_flash_attn()  # resolved once, at import: never inside a compiled graph


def attention(q: Tensor, k: Tensor, v: Tensor, window: int | None, kernel: str = "auto") -> Tensor:
    """Causal attention of q (B, H, Tq, D), the last Tq positions, over k, v (B, H_kv, Tk, D); a query at
    position i sees keys i-window..i (window None: all keys up to i). `kernel`: "auto", "sdpa" or "flex"
    (see the module's docstring). Returns (B, H, Tq, D)."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    num_queries, num_keys = q.size(2), k.size(2)
    if window is None or window >= num_keys - 1:  # the window covers every key: plain causal attention
        return sdpa_attention(q, k, v, None)
    differentiable = torch.is_grad_enabled() or torch.compiler.is_compiling()
    choice = window_kernel(kernel, q.is_cuda, num_queries == num_keys, _flash_usable(q, k, v), differentiable)
    if choice == "flash":
        return flash_window_attention(q, k, v, window)
    if choice == "flex":
        return flex_window_attention(q, k, v, window)
    return sdpa_attention(q, k, v, window)


def window_kernel(kernel: str, cuda: bool, whole_sequence: bool, flash: bool, differentiable: bool) -> str:
    """The kernel of a sliding-window call: "flash", "flex" or "sdpa". "auto": on CUDA a whole sequence (training,
    validation, a prefill) goes to FlashAttention's window where it is usable, else to compiled flex_attention
    when training or inside a compiled graph; an eager forward without gradients (an engine's prefill) takes
    the SDPA band instead, as compiling flex for every new prompt length would cost seconds of time to first
    token. The CPU, a decoded token and a prefill after cached tokens take SDPA. "flex"/"sdpa" force either."""
    if kernel != "auto":
        return kernel
    if cuda and whole_sequence and flash:
        return "flash"
    if cuda and whole_sequence and differentiable:
        return "flex"
    return "sdpa"


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
    """`attention` through F.scaled_dot_product_attention (the CPU paths; CUDA's full layers and decoding).

    Paths, cheapest first: a single decoded token attends to every key left in its window (no mask); a
    whole sequence whose window covers it takes is_causal (flash / memory-efficient kernels); a sequence of
    at least BANDED_MIN_WINDOWS windows takes `banded_attention`; anything else (a short sequence, a prefill
    after earlier cached tokens) one SDPA call with an explicit mask. Measured on CPU (2 busy cores, fwd+bwd,
    B=8, H=4, D=64, fp32, mask vs banded): T/W=2 99 vs 214 ms (W=128), 664 vs 957 (W=512); T/W=3 108 vs
    196 (W=128); T/W=4 234 vs 234 (W=128), 2266 vs 1292 (W=512, T=2048); T/W=8 567 vs 279 (W=128). bf16
    alike. From 4 windows on banded is as fast or faster, and its memory is O(T·2W) rather than O(T²).
    On CUDA the band still scores each W-query block against 2W keys (~2.3x a true window's FLOPs), which
    is why `attention` sends CUDA's sliding windows to flash_attn / flex_attention instead.
    """
    num_queries, num_keys = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window is not None and num_keys - num_queries > window:  # keys before the first query's window
        k, v = k[:, :, num_keys - num_queries - window :], v[:, :, num_keys - num_queries - window :]
        num_keys = k.size(2)
    if num_queries == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if num_queries == num_keys and (window is None or window >= num_queries - 1):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if num_queries == num_keys and num_queries >= BANDED_MIN_WINDOWS * window:
        return banded_attention(q, k, v, window)
    mask = causal_window_mask(num_queries, num_keys, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def causal_window_mask(num_queries: int, num_keys: int, window: int | None, device) -> Tensor:
    """(Tq, Tk) bool mask, True = attend, for queries that are the last Tq of Tk positions: query i sees
    key j iff j <= i and (window is None or i - j <= window)."""
    i = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]
    j = torch.arange(num_keys, device=device)[None, :]
    mask = j <= i
    return mask if window is None else mask & (i - j <= window)


def banded_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Sliding-window causal attention without a T×T mask: queries in blocks of `window`, each block
    against the keys [block_start - window, block_end) with a (window × 2·window) band mask. Memory
    and compute O(T·2·window) instead of O(T²). q (B, H, T, D); k, v (B, H_kv, T, D)."""
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


# ----------------------------------------------------------------------------------------------------------
# flex_attention: a block-sparse kernel that skips the key blocks outside every query block's window


def sliding_window_block_mask(num_queries: int, num_keys: int, window: int, device) -> BlockMask:
    """The BlockMask of `causal_window_mask` (queries the last Tq of Tk positions). Cached per shape, window
    and device outside compiled code; built in the graph when traced (torch.compile of the whole forward)."""
    if torch.compiler.is_compiling():
        return _make_block_mask(num_queries, num_keys, window, torch.device(device))
    return _cached_block_mask(num_queries, num_keys, window, torch.device(device))


def _make_block_mask(num_queries: int, num_keys: int, window: int, device: torch.device) -> BlockMask:
    offset = num_keys - num_queries  # query index q_idx is position q_idx + offset

    def sliding_window_causal(b, h, q_idx, kv_idx):
        position = q_idx + offset
        return (position >= kv_idx) & (position - kv_idx <= window)

    return create_block_mask(sliding_window_causal, None, None, num_queries, num_keys, device=device)


@functools.lru_cache(maxsize=64)
def _cached_block_mask(num_queries: int, num_keys: int, window: int, device: torch.device) -> BlockMask:
    # outside inference mode, whatever the first caller's: flex_attention saves the mask's tensors for backward,
    # and an inference tensor cached by a validation pass or a prefill could not be saved by training after it
    with torch.inference_mode(False), torch.no_grad():
        return _make_block_mask(num_queries, num_keys, window, device)


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


# ----------------------------------------------------------------------------------------------------------
# FlashAttention (optional): window_size=(window, 0) is this module's semantics exactly


def _flash_usable(q: Tensor, k: Tensor, v: Tensor) -> bool:
    half = (torch.bfloat16, torch.float16)
    return (
        _FLASH_ATTN_FUNC is not None
        and q.is_cuda
        and q.dtype in half
        and k.dtype == v.dtype == q.dtype
        and q.size(-1) % 8 == 0
        and q.size(-1) <= 256
    )


def flash_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """FlashAttention with window_size=(window, 0) in its (B, T, H, D) layout (a transposed view: the head
    dimension stays contiguous). With Tq < Tk, causal is aligned to the last key (flash_attn >= 2.1), as here."""
    out = _FLASH_ATTN_FUNC(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=(window, 0)
    )
    if isinstance(out, tuple):  # some FA3 builds return (out, softmax_lse)
        out = out[0]
    return out.transpose(1, 2)
