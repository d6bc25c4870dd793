"""FP8 linears (model/fp8.py) on the CPU, where torch._scaled_mm runs too: each of the three matmuls equals the
same product of the dequantised float8 operands, the whole stays within float8's error of full precision, only
nanochat's large linears are converted, and a pretraining run with fp8 on trains like one without."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from nanochat_pl.model.fp8 import E4M3, E5M2, Float8Linear, convert_to_float8, quantize
from nanochat_pl.model.gpt import GPT, GPTConfig, Linear
from tests.stage_helpers import StepLosses, tiny_data, tiny_module, tiny_trainer


def dequantized(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    x8, scale = quantize(x, dtype)
    return x8.float() * scale


def test_the_three_matmuls_are_the_dequantized_products():
    torch.manual_seed(0)
    layer = Linear(256, 128, bias=False)
    layer.__class__ = Float8Linear
    x = torch.randn(2, 16, 256, requires_grad=True)
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)

    x2d, g2d = x.detach().reshape(32, 256), grad.reshape(32, 128)
    x_q, w_q, g_q = dequantized(x2d, E4M3), dequantized(layer.weight.detach(), E4M3), dequantized(g2d, E5M2)
    torch.testing.assert_close(out.detach().reshape(32, 128), F.linear(x_q, w_q), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.reshape(32, 256), g_q @ w_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, g_q.t() @ x_q, rtol=1e-5, atol=1e-5)
    # and within float8's resolution (3 mantissa bits for e4m3, 2 for e5m2) of the exact products
    exact = F.linear(x2d, layer.weight.detach())
    assert (out.detach().reshape(32, 128) - exact).norm() / exact.norm() < 0.05
    exact_grad_w = g2d.t() @ x2d
    assert (layer.weight.grad - exact_grad_w).norm() / exact_grad_w.norm() < 0.1


def test_under_autocast_it_returns_what_a_linear_returns():
    """bf16-mixed: the residual stream is fp32 and a Linear under autocast returns bf16, so q, k, v and the MLP run
    in bf16; a converted linear must not hand fp32 on. Its gradients still reach x and the weight in theirs."""
    torch.manual_seed(0)
    layer = Linear(256, 128, bias=False)
    x = torch.randn(32, 256, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = layer(x)
        layer.__class__ = Float8Linear
        converted = layer(x)
    assert plain.dtype == converted.dtype == torch.bfloat16
    converted.float().sum().backward()
    assert x.grad.dtype == layer.weight.grad.dtype == torch.float32
    assert (converted.float() - plain.float()).norm() / plain.float().norm() < 0.05


def test_outside_a_training_forward_the_plain_linear_runs():
    torch.manual_seed(0)
    layer = Linear(128, 128, bias=False)
    x, short = torch.randn(16, 128), torch.randn(3, 128)
    reference, short_reference = F.linear(x, layer.weight), F.linear(short, layer.weight)
    layer.__class__ = Float8Linear
    with torch.no_grad():  # validation, sampling
        assert torch.equal(layer(x), reference)
    assert torch.equal(layer(short), short_reference)  # 3 rows: _scaled_mm takes multiples of 16
    layer.eval()
    assert torch.equal(layer(x), reference)


def test_only_nanochats_large_linears_are_converted_and_the_state_dict_is_unchanged():
    config = GPTConfig.from_depth(2, vocab_size=300, sequence_len=64, head_dim=32)  # width 128, vocab padded to 320
    model = GPT(config)
    keys = list(model.state_dict())
    converted = convert_to_float8(model)
    fp8 = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    # per block c_q, c_k, c_v, c_proj (128x128), c_fc, mlp c_proj (128x512), and lm_head (128x320); not the
    # value-embedding gates (12 -> 1) or the smear gate (24 -> 1)
    assert converted == len(fp8) == 2 * 6 + 1 and "lm_head" in fp8
    assert not any("ve_gate" in name or "smear" in name for name in fp8)
    assert list(model.state_dict()) == keys


def test_pretraining_with_fp8_trains_like_without(corpus):
    shards, tokenizer = corpus
    runs = {}
    for fp8 in (False, True):
        L.seed_everything(0)
        losses = StepLosses()
        module = tiny_module(tokenizer, depth=2, num_iterations=4, lr_scale=1.0, fp8=fp8)  # width 128
        tiny_trainer(None, callbacks=[losses]).fit(module, tiny_data(shards, tokenizer))
        runs[fp8] = [loss for *_, loss in losses.train]
        assert sum(isinstance(m, Float8Linear) for m in module.model.modules()) == (13 if fp8 else 0)
    assert all(torch.isfinite(torch.tensor(runs[True])))
    assert runs[True] == pytest.approx(runs[False], rel=0.05)
