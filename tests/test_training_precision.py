"""nanochat's training precision (stages/precision.py): bf16 embeddings and residual stream over fp32 master
weights, no autocast; it trains as fp32 does within bf16's tolerance, and its checkpoints load as any other."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from nanochat_pl.checkpoint import AtomicCheckpointIO, load_model
from nanochat_pl.stages.precision import NanochatBf16
from tests.stage_helpers import StepLosses, tiny_data, tiny_module, tiny_trainer

STEPS = 4


class Dtypes(L.Callback):
    """The dtypes of the residual stream (each block's output) and of a matrix's gradient at the first step."""

    def on_train_start(self, trainer, module) -> None:
        self.blocks: list[torch.dtype] = []
        self.hooks = [b.register_forward_hook(self._record) for b in module.model.transformer.h]

    def _record(self, block, inputs, output) -> None:
        self.blocks.append(output.dtype)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not hasattr(self, "grad"):
            self.grad = module.model.transformer.h[0].attn.c_q.weight.grad.dtype
            self.wte_grad = module.model.transformer.wte.weight.grad.dtype


def train(corpus, root, precision: str):
    shards, tokenizer = corpus
    L.seed_everything(0)
    losses, dtypes = StepLosses(), Dtypes()
    settings = dict(callbacks=[losses, dtypes], enable_checkpointing=False)
    if precision == "nanochat":
        settings.update(precision=None, plugins=[AtomicCheckpointIO(), NanochatBf16()])
    trainer = tiny_trainer(root, **settings)
    module = tiny_module(tokenizer, num_iterations=STEPS, lr_scale=1.0)
    trainer.fit(module, tiny_data(shards, tokenizer))
    trainer.save_checkpoint(root / "final.ckpt")
    return module, [loss for *_, loss in losses.train], dtypes


def test_nanochat_precision_trains_as_fp32_does_within_bf16_tolerance(corpus, tmp_path):
    ours, losses, dtypes = train(corpus, tmp_path / "nanochat", "nanochat")
    _, reference, reference_dtypes = train(corpus, tmp_path / "fp32", "fp32")
    gpt = ours.model
    # bf16 where nanochat keeps bf16, fp32 master weights everywhere else
    assert gpt.transformer.wte.weight.dtype == torch.bfloat16 and gpt.cos.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in gpt.value_embeds.parameters())
    assert gpt.lm_head.weight.dtype == torch.float32 and gpt.transformer.h[0].mlp.c_fc.weight.dtype == torch.float32
    assert set(dtypes.blocks) == {torch.bfloat16} and set(reference_dtypes.blocks) == {torch.float32}
    assert dtypes.grad == torch.float32 and dtypes.wte_grad == torch.bfloat16
    # the same training within bf16's resolution (~0.4% a rounding, a few of them compounding over 4 steps)
    assert losses == pytest.approx(reference, rel=2e-2)
    # the checkpoint loads as any other: an fp32 model whose logits are the trained one's
    model, tokenizer, _ = load_model(tmp_path / "nanochat" / "final.ckpt")
    assert model.transformer.wte.weight.dtype == torch.float32
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat.", prepend="<|bos|>")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), gpt.eval()(ids).float(), rtol=0.05, atol=0.05)
