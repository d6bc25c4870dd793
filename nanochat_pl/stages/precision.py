"""nanochat's training precision as a Lightning precision plugin, beside Lightning's bf16-mixed (which autocasts
matmuls and keeps the residual stream and embeddings in fp32). nanochat HEAD (gpt.py@92d63d4) stores the token and
value embeddings in bf16, so the residual stream is bf16 from the first lookup; every Linear casts its fp32 master
weight to the activations' dtype (model/gpt.py `Linear`); only the logits go to fp32. Less activation memory and
traffic, the same optimizer state. For GPUs:

    trainer:
      plugins: [{class_path: nanochat_pl.stages.precision.NanochatBf16}]   # and no trainer.precision
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
