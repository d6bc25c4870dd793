"""nanochat's training precision as a Lightning precision plugin, beside Lightning's bf16-mixed.

bf16-mixed autocasts matmuls over fp32 weights and keeps everything else in fp32: the residual stream, the
embeddings and the value embeddings are fp32 activations and fp32 tensors. nanochat HEAD (gpt.py@92d63d4,
common.py COMPUTE_DTYPE) computes in bf16 without autocast: the token and value embeddings are stored in bf16, so
the residual stream is bf16 from the first lookup; every Linear casts its fp32 master weight to the activations'
dtype (model/gpt.py `Linear`); RMSNorm, rotary and attention run in bf16; only the logits go to fp32 for the
softcap and the loss. Gradients reach the fp32 master weights in fp32, and MuonAdamW updates the bf16 embeddings
with fp32 arithmetic. Less activation memory and traffic than autocast, the same optimizer state.

    trainer:
      plugins: [{class_path: nanochat_pl.stages.precision.NanochatBf16}]   # and no trainer.precision

On a CPU without native bf16 this is slow: it is meant for GPUs (CUDA capability 8.0 on, as nanochat).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision


class NanochatBf16(Precision):
    """bf16 compute over fp32 master weights with bf16 embeddings (see the module's docstring)."""

    precision = "bf16-mixed"  # trainer.precision: what our MFU (TokenThroughputMonitor, bench train) reads as bf16

    def convert_module(self, module: L.LightningModule) -> L.LightningModule:
        """Store the GPT's embeddings (tokens, values) and its rotary tables in bf16; everything else stays fp32."""
        gpt = module.model
        gpt.transformer.wte.to(torch.bfloat16)
        gpt.value_embeds.to(torch.bfloat16)
        gpt.cos, gpt.sin = gpt.cos.to(torch.bfloat16), gpt.sin.to(torch.bfloat16)
        return module
