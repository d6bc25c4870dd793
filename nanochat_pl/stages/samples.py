"""Greedy answers to a few fixed prompts, logged during training: a quick look at what the model knows.

A base model continues text; a chat model answers questions in the chat format, calculator calls included.
"""

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
# Questions a chat model should answer after SFT: who it is, arithmetic (with its calculator), spelling.
CHAT_PROMPTS = (
    "Who are you?",
    "What is 23 times 17?",
    "A book costs $12 and a pen costs $3. How much do 2 books and 4 pens cost?",
    "How many r are in strawberry?",
)
CHAT_SAMPLE_TOKENS = 64


@rank_zero_only
def log_samples(module: L.LightningModule, chat: bool = False) -> None:
    """Print the greedy answer to every prompt and add them to TensorBoard as text."""
    tokenizer = module.tokenizer
    engine = Engine(module.model, tokenizer)
    was_training = module.model.training
    module.model.eval()
    lines = []
    for prompt in CHAT_PROMPTS if chat else PROMPTS:
        if chat:
            ids = tokenizer.render_for_completion([{"role": "user", "content": prompt}])
            sequences, _ = engine.generate_batch(ids, max_tokens=CHAT_SAMPLE_TOKENS, temperature=0.0)
            lines.append(f"{prompt} -> {tokenizer.decode(sequences[0][len(ids) :])}")
        else:
            ids = tokenizer.encode(prompt, prepend=tokenizer.bos_token_id)
            sequences, _ = engine.generate_batch(ids, max_tokens=SAMPLE_TOKENS, temperature=0.0)
            lines.append(tokenizer.decode(sequences[0][1:]))
    module.model.train(was_training)
    text = "\n".join(lines)
    print(f"\nsamples at step {module.global_step}:\n{text}\n")
    if isinstance(module.logger, TensorBoardLogger):
        module.logger.experiment.add_text("samples", text.replace("\n", "  \n"), module.global_step)
