"""The attention kernels (model/attention.py) against the band-mask reference, and the dtypes that reach them.

flex_attention is CUDA's sliding-window kernel; on CPU it runs too (eager: the same mask_mod over dense scores;
compiled: the block-sparse kernel, forward only). CPU flex refuses inputs that require grad only because CPU has no
compiled backward: its eager autograd (the reference math) is what CUDA's compiled backward is checked against
upstream, so the gradient tests lift that check to compare our BlockMask's gradients with SDPA's.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
import torch.nn.functional as F

from nanochat_pl.common import UserError
from nanochat_pl.model import gpt
from nanochat_pl.model.attention import (
    _compiled_flex_attention,
    attention,
    causal_window_mask,
    sliding_window_block_mask,
    window_kernel,
)
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.model.kv_cache import KVCache

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def reference(q, k, v, window):
    """The band-mask reference: one SDPA call with `causal_window_mask` (queries the last Tq of Tk positions)."""
    mask = causal_window_mask(q.size(2), k.size(2), window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.size(1) != k.size(1))


def qkv(Tq, Tk, heads, kv_heads, seed, D=16, B=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, heads, Tq, D, generator=g)
    k, v = torch.randn(B, kv_heads, Tk, D, generator=g), torch.randn(B, kv_heads, Tk, D, generator=g)
    return q, k, v


# (Tq, Tk, window): training shapes (several windows, a ragged last one), prefills after cached tokens (some keys
# before the first query's window), single-token decodes (keys both outside and inside the window)
SHAPES = {
    "train-8-windows": (64, 64, 8),
    "train-ragged": (67, 67, 8),
    "train-odd-window": (40, 40, 5),
    "prefill-after-cache": (7, 40, 8),
    "prefill-longer-than-window": (20, 30, 8),
    "decode-far": (1, 40, 8),
    "decode-near": (1, 5, 8),
}


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("Tq,Tk,window", SHAPES.values(), ids=SHAPES.keys())
def test_flex_matches_band_mask_reference_in_outputs_and_gradients(monkeypatch, Tq, Tk, window, kv_heads):
    monkeypatch.setattr(flex_module, "_validate_device", lambda *tensors: None)  # CPU flex: eager autograd
    inputs = qkv(Tq, Tk, 4, kv_heads, seed=Tq * 100 + Tk)
    grad_out = torch.randn(2, 4, Tq, 16, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (lambda q, k, v: attention(q, k, v, window, kernel="flex"), lambda q, k, v: reference(q, k, v, window)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(grad_out)
        results.append([out.detach()] + [t.grad for t in leaves])
    for name, got, expected in zip(("out", "dq", "dk", "dv"), *results, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_flex_path_is_taken_when_forced_and_not_on_cpu_by_default(monkeypatch):
    from nanochat_pl.model import attention as attention_module

    calls = []
    real = attention_module.flex_window_attention
    monkeypatch.setattr(attention_module, "flex_window_attention", lambda *a: calls.append(a[3]) or real(*a))
    q, k, v = qkv(64, 64, 4, 2, seed=0)
    with torch.no_grad():
        attention(q, k, v, 8)  # auto on CPU: the measured SDPA paths
        attention(q, k, v, 8, kernel="sdpa")
        attention(q, k, v, None, kernel="flex")  # full layers stay causal SDPA
        attention(q, k, v, 63, kernel="flex")  # so does a window that covers the sequence
        assert calls == []
        attention(q, k, v, 8, kernel="flex")
    assert calls == [8]


@pytest.mark.parametrize(
    ("cuda", "whole_sequence", "flash", "differentiable", "expected"),
    [
        (True, True, True, True, "flash"),  # training with flash-attn installed
        (True, True, True, False, "flash"),  # a prefill with it: no compilation to wait for
        (True, True, False, True, "flex"),  # training, or validation inside the compiled graph
        (True, True, False, False, "sdpa"),  # an engine's eager prefill: no flex compile per prompt length
        (True, False, True, True, "sdpa"),  # a decoded token, a prefill after cached tokens
        (False, True, True, True, "sdpa"),  # the CPU
    ],
)
def test_the_auto_kernel_of_a_sliding_window(cuda, whole_sequence, flash, differentiable, expected):
    assert window_kernel("auto", cuda, whole_sequence, flash, differentiable) == expected
    assert window_kernel("flex", cuda, whole_sequence, flash, differentiable) == "flex"
    assert window_kernel("sdpa", cuda, whole_sequence, flash, differentiable) == "sdpa"


def test_block_masks_are_cached_per_shape_window_and_device():
    a = sliding_window_block_mask(64, 64, 8, "cpu")
    assert sliding_window_block_mask(64, 64, 8, torch.device("cpu")) is a
    assert sliding_window_block_mask(64, 64, 16, "cpu") is not a
    assert sliding_window_block_mask(7, 64, 8, "cpu") is not a


def test_a_block_mask_first_built_in_inference_mode_can_be_saved_for_training():
    """Validation before training, or an engine's prefill, may build a shape's mask first: under inference mode
    its tensors would be inference tensors, which autograd refuses to save for the backward of training."""
    with torch.inference_mode():
        mask = sliding_window_block_mask(96, 96, 24, "cpu")
    assert sliding_window_block_mask(96, 96, 24, "cpu") is mask
    tensors = [t for t in mask.as_tuple() if isinstance(t, torch.Tensor)]
    assert tensors and not any(t.is_inference() for t in tensors)
    x = torch.ones(1, requires_grad=True)
    saved = SaveForBackward.apply(x, tensors[0])  # what flex_attention's autograd does with them
    saved.sum().backward()
    assert x.grad is not None


class SaveForBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tensor):
        ctx.save_for_backward(tensor)
        return x * 1

    @staticmethod
    def backward(ctx, grad):
        (_tensor,) = ctx.saved_tensors  # reading them back is where an inference tensor fails
        return grad, None


def test_compiled_flex_block_sparse_kernel_matches_reference():
    """The compiled kernel reads the BlockMask's block structure (which key blocks each query block visits);
    eager flex only evaluates the mask_mod. Long enough for whole key blocks (128) to be skipped."""
    flex = _compiled_flex_attention()
    start = time.perf_counter()
    with torch.no_grad():
        for Tq, Tk, window, kv_heads in [(512, 512, 64, 2), (200, 512, 64, 4)]:
            q, k, v = qkv(Tq, Tk, 4, kv_heads, seed=Tq)
            block_mask = sliding_window_block_mask(Tq, Tk, window, "cpu")
            assert block_mask.sparsity() > 0  # some key blocks are skipped outright
            got = flex(q, k, v, block_mask=block_mask, enable_gqa=kv_heads != 4)
            torch.testing.assert_close(got, reference(q, k, v, window), atol=1e-5, rtol=1e-5)
    assert time.perf_counter() - start < 120


# ----------------------------------------------------------------------------------------------------------
# the whole model


def tiny_model(**overrides) -> GPT:
    fields = dict(sequence_len=64, vocab_size=96, n_layer=4, n_head=4, n_kv_head=2, n_embd=64, short_window=8)
    model = GPT(GPTConfig(**(fields | overrides)))
    torch.manual_seed(0)
    model.init_weights()
    with torch.no_grad():  # the zero-initialised projections made non-zero: every layer counts
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.05)
            block.mlp.c_proj.weight.normal_(0, 0.05)
        model.smear_lambda.fill_(0.7)
    return model.eval()


@pytest.mark.parametrize("overrides", [dict(), dict(n_kv_head=4, window_pattern="SL", short_window=5)])
def test_gpt_logits_with_flex_forced_equal_the_default_kernel(overrides):
    model = tiny_model(**overrides)
    idx = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(idx)
        model.set_attention_kernel("flex")
        assert {block.attn.kernel for block in model.transformer.h} == {"flex"}
        torch.testing.assert_close(model(idx), expected, atol=1e-5, rtol=1e-5)
        cache = model.new_kv_cache(batch_size=2, max_len=48)  # prefill, a second chunk, then token by token
        pieces = [model(idx[:, :12], kv_cache=cache), model(idx[:, 12:21], kv_cache=cache)]
        pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(21, 48)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError):
        model.set_attention_kernel("flash")


# ----------------------------------------------------------------------------------------------------------
# dtypes: q, k, v and the KV cache stay in the compute dtype under CUDA-like autocast


def cuda_like_norm(x):
    """CUDA autocast runs rms_norm in fp32 (CPU autocast does not): the norm of a bf16 input comes back fp32."""
    return F.rms_norm(x.float(), (x.size(-1),))


def test_qk_leave_the_norm_in_the_compute_dtype_and_the_cache_is_read_without_conversion(monkeypatch):
    model = tiny_model()
    idx = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fp32_logits = model(idx)
    monkeypatch.setattr(gpt, "norm", cuda_like_norm)
    seen, stored = [], []
    real_attention, real_append = gpt.attention, KVCache.append

    def recording_attention(q, k, v, window, kernel="auto"):
        seen.append((q.dtype, k.dtype, v.dtype, k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr()))
        return real_attention(q, k, v, window, kernel)

    def recording_append(self, layer, k, v):
        stored.append((k.dtype, v.dtype))
        return real_append(self, layer, k, v)

    monkeypatch.setattr(gpt, "attention", recording_attention)
    monkeypatch.setattr(KVCache, "append", recording_append)
    bf16 = torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=bf16):
        assert gpt.norm(torch.ones(2, 4, dtype=bf16)).dtype == torch.float32  # the simulation holds
        full = model(idx)
        assert {s[:3] for s in seen} == {(bf16, bf16, bf16)}  # training / full forward: bf16 q, k, v
        seen.clear()
        cache = model.new_kv_cache(batch_size=2, max_len=40, dtype=bf16)
        pieces = [model(idx[:, :30], kv_cache=cache)]
        pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(30, 40)]
    assert stored and set(stored) == {(bf16, bf16)}  # the cache is given bf16 keys and values
    assert {s[:3] for s in seen} == {(bf16, bf16, bf16)}
    # attention reads the cache's own storage: no per-step copy of the whole cache into another dtype
    cache_storages = (cache.k.untyped_storage().data_ptr(), cache.v.untyped_storage().data_ptr())
    assert all(s[3:] == cache_storages for s in seen)
    cached = torch.cat(pieces, dim=1)
    assert full.dtype == cached.dtype == torch.float32
    assert (cached - full).abs().max() < 0.1  # bf16 tolerance (logits are soft-capped at 15)
    assert (full - fp32_logits).abs().max() < 0.1


def test_compiled_gpt_forward_traces_the_flex_path_in_one_graph():
    """Training compiles the whole forward (stages/lm.py): the flex path must trace without a graph break (the
    BlockMask is then built inside the graph, flex_attention inlined) and give the eager logits."""
    model = tiny_model(sequence_len=256, n_layer=2, window_pattern="SL", short_window=32)
    idx = torch.randint(0, 96, (2, 256), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(idx)
        model.set_attention_kernel("flex")
        compiled = torch.compile(model.forward, dynamic=False, fullgraph=True)
        torch.testing.assert_close(compiled(idx), expected, atol=1e-5, rtol=1e-5)
