"""`nanochat-pl chat`: talk to a model in the terminal, as nanochat's chat_cli.py does."""

from __future__ import annotations

import sys
from typing import Any, Literal

from nanochat_pl.common import UserError
from nanochat_pl.engine import load_engine, resolve_device
from nanochat_pl.limits import check_sampling
from nanochat_pl.reply import InlineToolCalls, Reply


def chat(
    checkpoint: str,
    prompt: str | None = None,
    temperature: float = 0.6,
    top_k: int = 50,
    max_tokens: int = 256,
    device: str = "auto",
    seed: int = 42,
    tokenizer_dir: str | None = None,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> None:
    """Talk to a model in the terminal: `clear` starts over, `quit` (or Ctrl-D) leaves, Ctrl-C stops a reply.

    Args:
        checkpoint: A checkpoint by name ("sft", "rl", "sft@step=100"), a .ckpt, or a nanochat checkpoint folder.
        prompt: Answer this one prompt, print the answer and exit (no interactive loop).
        temperature: Sampling temperature; 0 always picks the most likely token.
        top_k: Sample among the k most likely tokens only; 0 turns the cut off.
        max_tokens: At most this many new tokens per reply.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        seed: Seed of the sampler; each reply of a conversation uses the next one.
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries (or nanochat's tokenizer.pkl).
        precision: "auto" (bf16 on CUDA; on a CPU the faster of bf16 and fp32, measured), "bf16" or "fp32".
    """
    check_sampling(temperature, top_k, max_tokens, seed=seed)  # before the model loads, which takes a while
    engine, _ = load_engine(checkpoint, resolve_device(device), tokenizer_dir, precision)
    sampling = dict(temperature=temperature, top_k=top_k, max_tokens=max_tokens)

    def answer(messages: list[dict[str, Any]], reply_seed: int) -> Reply:
        reply = Reply(engine.tokenizer, engine.model.config.sequence_len, messages, seed=reply_seed, **sampling)
        inline = InlineToolCalls()
        print("Assistant: ", end="", flush=True)
        for piece in reply.run(engine):
            print(inline.feed(piece), end="", flush=True)
        print(inline.close())
        return reply

    if prompt is not None:
        answer([{"role": "user", "content": prompt}], seed)
        return

    print("nanochat-pl chat. Type 'clear' to start over, 'quit' to leave.")
    messages: list[dict[str, Any]] = []
    while True:
        try:
            line = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: leave quietly
            print()
            return
        if line.lower() in ("quit", "exit"):
            return
        if line.lower() == "clear":
            messages = []
            print("(conversation cleared)")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = answer(messages, seed + len(messages) // 2)
        except UserError as error:  # e.g. the history outgrew the context: say so and keep the session
            messages.pop()
            print(f"error: {error}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C during a reply stops it; the turn is dropped
            messages.pop()
            print("\n(stopped)")
            continue
        messages.append({"role": "assistant", "content": reply.parts})
