"""Greedy continuations of a few fixed prompts, logged during training: a quick look at what the model knows."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from nanochat_pl.engine import Engine

# The prompts nanochat's base_train samples from (facts a small model picks up early).
PROMPTS = (
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
)
SAMPLE_TOKENS = 16


@rank_zero_only
def log_samples(module: L.LightningModule) -> None:
    """Print the greedy continuation of every prompt and add them to TensorBoard as text."""
    engine = Engine(module.model, module.tokenizer)
    was_training = module.model.training
    module.model.eval()
    lines = []
    for prompt in PROMPTS:
        ids = module.tokenizer.encode(prompt, prepend=module.tokenizer.bos_token_id)
        sequences, _ = engine.generate_batch(ids, max_tokens=SAMPLE_TOKENS, temperature=0.0)
        lines.append(module.tokenizer.decode(sequences[0][1:]))
    module.model.train(was_training)
    text = "\n".join(lines)
    print(f"\nsamples at step {module.global_step}:\n{text}\n")
    if isinstance(module.logger, TensorBoardLogger):
        module.logger.experiment.add_text("samples", text.replace("\n", "  \n"), module.global_step)
