"""What a model sees, for `nanochat-pl inspect` (several checkpoints in turn; colour where stdout is a tty and NO_COLOR
is unset) and the page's Inspect tab: the tokens as the tokenizer cut them, which a chat stage trains on (the loss
mask) and which the engine forces (calculator output), and per token the model's loss and its top 5 there.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from nanochat_pl.checkpoint import resolve_checkpoint
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine, load_engine, resolve_device


@dataclass
class Token:
    id: int
    text: str  # decoded alone; a special token by its name
    trained: bool | None  # in a chat stage's loss mask; None for a text (pretraining trains on every token)
    forced: bool  # written by the calculator, not the model
    loss: float | None  # -ln p(token | the tokens before); None for the first
    top: list[tuple[str, float]]  # the model's 5 likeliest tokens here, with their probabilities


@torch.inference_mode()
def inspect_tokens(engine: Engine, text: str, max_tokens: int = 0, chat: bool = True) -> list[Token]:
    """`text` as `engine`'s model sees it: a JSON conversation (a list of messages or {"messages": [...]}) rendered
    as the chat stages render it; any other text as a user's turn to a `chat` model, else after <|bos|>. With
    `max_tokens`, the model first answers (greedily; its calculator output forced) a text or a conversation
    ending with the user."""
    tokenizer, special = engine.tokenizer, engine.tokenizer.encode_special
    try:
        conversation = json.loads(text)
    except ValueError:
        conversation = None
    if not isinstance(conversation, list | dict):
        conversation = [{"role": "user", "content": text}] if chat else None
    if conversation is None:
        ids, mask, asks = tokenizer.encode(text, prepend="<|bos|>"), None, True
    else:
        try:
            ids, mask = tokenizer.render_conversation(conversation, max_tokens=None)
            asks = (conversation["messages"] if isinstance(conversation, dict) else conversation)[-1]["role"] == "user"
        except (KeyError, TypeError, IndexError) as error:
            raise UserError(f"not a conversation (a list of {{role, content}} messages): {error!r}") from error
    forced, inside = [], False  # the calculator's output: <|output_start|> ... <|output_end|>
    for token in ids:
        inside |= token == special("<|output_start|>")
        forced.append(inside)
        inside &= token != special("<|output_end|>")
    if len(ids) >= engine.model.config.sequence_len:
        raise UserError(f"{len(ids):,} tokens: the model's context is {engine.model.config.sequence_len:,}")
    if max_tokens > 0 and asks:
        if mask is not None:
            ids, mask, forced = [*ids, special("<|assistant_start|>")], [*mask, 0], [*forced, False]
        for column, masks in engine.generate(list(ids), max_tokens=max_tokens, temperature=0.0):
            ids.append(column[0])
            forced.append(not masks[0])
            mask = None if mask is None else [*mask, masks[0]]
            if column[0] in engine.terminal_tokens:
                break
    logits = engine.model(torch.tensor([ids[:-1]], device=engine.device))[0]  # fp32 (T, V)
    targets = torch.tensor(ids[1:], device=engine.device)
    losses = [None, *F.cross_entropy(logits, targets, reduction="none").tolist()]  # as GPT.forward computes it
    probs, top = logits.softmax(-1).topk(5, dim=-1)
    rows = zip(top.tolist(), probs.tolist(), strict=True)
    tops = [[], *([(tokenizer.decode([t]), p) for t, p in zip(*row, strict=True)] for row in rows)]
    trained = [None] * len(ids) if mask is None else map(bool, mask)
    return [
        Token(t, tokenizer.decode([t]), *fields) for t, *fields in zip(ids, trained, forced, losses, tops, strict=True)
    ]


def heat(loss: float | None) -> tuple[int, int, int]:
    """A token's background: white where the model was sure of it, redder up to a loss of 8 (p = 0.0003)."""
    return (255, *[255 - int(155 * min((loss or 0.0) / 8, 1.0))] * 2)


def describe(token: Token) -> str:
    """A token's id, loss and probability, mask, and the model's top 5 there (the page's hover, the terminal's row)."""
    line = f"id {token.id}" + ("" if token.loss is None else f", loss {token.loss:.2f}, p {math.exp(-token.loss):.3f}")
    flags = [name for name, on in (("trained", token.trained), ("forced (calculator)", token.forced)) if on]
    return "; ".join([line, *flags, *[f"{text!r} {p:.3f}" for text, p in token.top]])


def tokens_html(tokens: list[Token]) -> str:
    """The tokens as coloured spans (underlined: trained on; dashed box: forced), details on hover."""
    spans = [
        f'<span class="token" title="{html.escape(describe(t))}" style="background:rgb{heat(t.loss)};color:#000;'
        f'{"text-decoration:underline;" * bool(t.trained)}{"outline:1px dashed #06c;" * t.forced}">'
        f"{html.escape(t.text)}</span>"
        for t in tokens
    ]
    legend = "white: expected, red: surprising; underlined: trained on; dashed: forced (calculator); hover for more"
    return f'<div style="white-space:pre-wrap;font-family:monospace">{"".join(spans)}</div><small>{legend}</small>'


def inspect(
    checkpoint: str,
    prompt: str | None = None,
    file: str | None = None,
    max_tokens: int = 64,
    device: str = "auto",
    tokenizer_dir: str | None = None,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> None:
    """See what models see in a text or a conversation: tokens, loss mask, forced tokens, per token loss and top 5.

    Args:
        checkpoint: One or several, comma-separated ("base,sft,rl"): by name, a .ckpt, or a nanochat checkpoint.
        prompt: The text: a prompt (a chat model's user turn; a base model's text) or a JSON conversation.
        file: A file holding the text instead.
        max_tokens: Each model first answers the prompt (or a conversation ending with the user), greedily, with up
            to this many tokens; 0: the text as given.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        tokenizer_dir: A tokenizer to use instead of the one each checkpoint carries.
        precision: "auto" (bf16 on CUDA; on a CPU the faster of bf16 and fp32, measured), "bf16" or "fp32".
    """
    if (prompt is None) == (file is None) or not (file is None or Path(file).is_file()):
        raise UserError("give the text with -p TEXT or --file FILE (a file there: a text or a JSON conversation)")
    text = prompt if file is None else Path(file).read_text(encoding="utf-8")
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for name in checkpoint.split(","):
        engine, meta = load_engine(str(resolve_checkpoint(name)), resolve_device(device), tokenizer_dir, precision)
        tokens = inspect_tokens(engine, text, max_tokens, chat=meta["stage"] != "base")
        loss = [t.loss for t in tokens[1:] if t.trained is not False]  # a chat's trained tokens, or a text's all
        print(f"\n== {name}: {meta['stage']}, step {meta['step']:,}, mean loss {sum(loss) / max(len(loss), 1):.3f} ==")
        print(("".join(map(_coloured, tokens)) if colour else "|".join(t.text for t in tokens)) + "\n")
        for i, t in enumerate(tokens):
            print(f"{i:>4} {repr(t.text)[:18]:<18}  {describe(t)}")


def _coloured(token: Token) -> str:
    """ANSI: the surprise as a 24-bit background, trained tokens underlined, forced ones blue."""
    style = "48;2;{};{};{};{}".format(*heat(token.loss), 34 if token.forced else 30) + ";4" * bool(token.trained)
    return f"\x1b[{style}m{token.text}\x1b[0m"
