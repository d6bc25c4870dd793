"""FP8 training of the large linears, tensorwise (nanochat's `--fp8`, fp8.py@92d63d4; torchao's Float8Linear).

In a training forward, a converted Linear quantises its input and weight to float8 e4m3 and the gradient to e5m2,
each with one dynamic scale (its absolute maximum onto the format's largest value), and runs the three matmuls as
`torch._scaled_mm` with fp32 accumulation. Anything else (validation, sampling, a row count `_scaled_mm` cannot
take) runs the plain Linear, as nanochat evaluates with fp8 off. Compile the model: eager fp8 is slower than bf16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nanochat_pl.model.gpt import Linear

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
ALIGNMENT = 16  # _scaled_mm needs every size a multiple of 16
MIN_SIZE = 128  # smaller linears gain nothing from fp8 (nanochat)


def quantize(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(x in `dtype`, the fp32 scale that undoes it): x · (fmax / amax(x)), saturated, then cast."""
    fmax = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float().clamp_min(1e-12)
    scale = fmax / amax
    return (x.float() * scale).clamp(-fmax, fmax).to(dtype), scale.reciprocal()


def column_major(x: Tensor) -> Tensor:
    """The same matrix laid out column-major, as `_scaled_mm`'s second operand must be."""
    return x.t().contiguous().t()


class _Float8Matmul(torch.autograd.Function):
    """x (N, in) @ w (out, in)ᵀ with float8 operands, fp32 accumulation, out in x's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, out_dtype: torch.dtype) -> Tensor:
        x8, x_scale = quantize(x, E4M3)
        w8, w_scale = quantize(weight, E4M3)
        ctx.save_for_backward(x8, x_scale, w8, w_scale)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return torch._scaled_mm(x8, column_major(w8.t()), scale_a=x_scale, scale_b=w_scale, out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x8, x_scale, w8, w_scale = ctx.saved_tensors
        g8, g_scale = quantize(grad.contiguous(), E5M2)  # _scaled_mm's first operand must be row-major
        grad_x = torch._scaled_mm(g8, column_major(w8), scale_a=g_scale, scale_b=w_scale, out_dtype=ctx.x_dtype)
        grad_w = torch._scaled_mm(
            g8.t().contiguous(), column_major(x8), scale_a=g_scale, scale_b=x_scale, out_dtype=ctx.w_dtype
        )
        return grad_x, grad_w, None


class Float8Linear(Linear):
    """A bias-free Linear whose training matmuls run in float8; same parameters and state-dict keys as Linear."""

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.size(-1)
        if not (self.training and torch.is_grad_enabled()) or rows % ALIGNMENT:
            return super().forward(x)
        # under autocast a Linear returns the autocast dtype (bf16) whatever its input's: so does this one, or
        # the fp32 residual stream of bf16-mixed would carry fp32 q, k, v and MLP activations from here on
        device = x.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        out = _Float8Matmul.apply(x.reshape(rows, x.size(-1)), self.weight, out_dtype)
        return out.view(*x.shape[:-1], self.out_features)


def convert_to_float8(model: nn.Module) -> int:
    """Make every bias-free Linear of `model` whose sizes fp8 serves a Float8Linear, in place (the class changes, not
    the tensors); returns how many."""
    converted = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is None and not isinstance(module, Float8Linear):
            sizes = (module.in_features, module.out_features)
            if all(size % ALIGNMENT == 0 for size in sizes) and min(sizes) >= MIN_SIZE:
                module.__class__ = Float8Linear
                converted += 1
    return converted
