"""A reply of the model, read from the tokens it writes: its text, its calculator calls and the calculator's
results. The terminal chat, the web app and the evaluations all read replies here.

In the token stream a calculator call is `<|python_start|>expression<|python_end|>`, the engine forces the
result in after it as `<|output_start|>result<|output_end|>`, and the reply ends at `<|assistant_end|>` (or
`<|bos|>`). Read token by token, a reply is
- a stream of `Piece`s, each released once its characters are whole: what the terminal, the page and the API
  show while the reply is generated;
- `parts`: the assistant's turn in the tokenizer's format, {"type": "text" | "python" | "python_output",
  "text": ...} dicts (tokenizer.ASSISTANT_PART_TYPES), which render back to exactly the tokens the model saw and
  wrote: the next turn's history, and what a task's evaluation or reward reads;
- `text`: plain text with each calculator call inline as `<<expression=result>>`, the notation of GSM8K's
  calculator annotations the tool format comes from.

`Reply` generates a reply to a conversation with an engine, streaming its pieces; `read_reply` reads tokens
generated elsewhere (the samples of a batch, for evaluation and RL).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from nanochat_pl.limits import LimitError, check_sampling

if TYPE_CHECKING:
    from nanochat_pl.engine import Engine

PieceKind = Literal["text", "python", "python_output"]  # the tokenizer's ASSISTANT_PART_TYPES


@dataclass
class Piece:
    """A stretch of a reply: text, (part of) a calculator expression, or (part of) the calculator's result.
    Each python or python_output block opens with an empty piece, so an empty expression is seen too, and two
    calls in a row stay two."""

    kind: PieceKind
    text: str


class _SegmentText:
    """The text of one run of ordinary tokens, released only when it is whole: a character split across
    tokens decodes to U+FFFD until its last byte arrives, so text ending in U+FFFD waits (nanochat
    4c3590c)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already released

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self.emitted = text[self.emitted :], len(text)
        return delta

    def flush(self) -> str:
        """Whatever is left at the segment's end, broken bytes included: nothing more will complete them."""
        text = self.tokenizer.decode(self.ids)
        delta, self.emitted = text[self.emitted :], len(text)
        return delta

    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


class ReplyReader:
    """Reads the assistant's tokens one at a time: `read(token)` returns the pieces the token completes,
    `close()` the rest once no token will follow. The reply ends at a terminal token (`ended`); tokens after
    it are ignored. `parts` (and `text`) hold the reply read so far; after `close()`, all of it."""

    def __init__(self, tokenizer):
        special = tokenizer.encode_special
        self.tokenizer = tokenizer
        self.opens: dict[int, PieceKind] = {
            special("<|python_start|>"): "python",
            special("<|output_start|>"): "python_output",
        }
        self.closes = {special("<|python_end|>"), special("<|output_end|>")}
        self.terminal = {special("<|assistant_end|>"), tokenizer.bos_token_id}
        self.specials = set(tokenizer.special_tokens.values())
        self.kind: PieceKind = "text"
        self.segment = _SegmentText(tokenizer)
        self.parts: list[dict[str, str]] = []
        self.ended = False

    def read(self, token: int) -> list[Piece]:
        if self.ended:
            return []
        if token in self.terminal:
            self.ended = True
            return []
        if token in self.opens or token in self.closes:
            pieces = self.close()
            self.kind = self.opens.get(token, "text")
            if self.kind != "text":
                pieces.append(Piece(self.kind, ""))
            return pieces
        if token in self.specials:  # the other special tokens carry no text
            return []
        delta = self.segment.push(token)
        return [Piece(self.kind, delta)] if delta else []

    def close(self) -> list[Piece]:
        """End the open block: release what is left of its text and add it to `parts`."""
        kind, rest, text = self.kind, self.segment.flush(), self.segment.text()
        if kind != "text":
            self.parts.append({"type": kind, "text": text})
        elif text and self.parts and self.parts[-1]["type"] == "text":
            self.parts[-1]["text"] += text
        elif text:
            self.parts.append({"type": "text", "text": text})
        self.kind, self.segment = "text", _SegmentText(self.tokenizer)
        return [Piece(kind, rest)] if rest else []

    @property
    def text(self) -> str:
        return text_of(self.parts)


def read_reply(tokenizer, tokens: Iterable[int]) -> ReplyReader:
    """The reply in `tokens`, the assistant's tokens as generated (the prompt not included): its `parts`,
    `text`, and whether it `ended` with a terminal token rather than being cut off."""
    reader = ReplyReader(tokenizer)
    for token in tokens:
        reader.read(token)
    reader.close()
    return reader


class InlineToolCalls:
    """Pieces -> plain text, each calculator call written `<<expression=result>>`: `feed` every piece in order,
    then `close` (a call the reply stopped in the middle of is closed too)."""

    def __init__(self) -> None:
        self.kind: PieceKind = "text"

    def feed(self, piece: Piece) -> str:
        opens_block = piece.kind != "text" and not piece.text
        marker = _marker(self.kind, piece.kind) if opens_block or piece.kind != self.kind else ""
        self.kind = piece.kind
        return marker + piece.text

    def close(self) -> str:
        return "" if self.kind == "text" else ">>"


def _marker(previous: PieceKind, kind: PieceKind) -> str:
    if (previous, kind) == ("python", "python_output"):
        return "="
    close = "" if previous == "text" else ">>"
    return close + {"text": "", "python": "<<", "python_output": "<<="}[kind]


def text_of(parts: Sequence[Mapping[str, str]]) -> str:
    """An assistant turn's parts as plain text, each calculator call inline: `<<expression=result>>`."""
    inline = InlineToolCalls()
    text = []
    for part in parts:  # as the reply streamed them: a tool block opens with an empty piece
        if part["type"] != "text":
            text.append(inline.feed(Piece(part["type"], "")))
        if part["text"]:
            text.append(inline.feed(Piece(part["type"], part["text"])))
    return "".join(text) + inline.close()


class Reply:
    """One assistant reply to `messages` (OpenAI-style {"role", "content"} dicts, a system message allowed
    first). The sampling settings are checked (limits.check_sampling) and the prompt rendered and checked when
    the Reply is made, so bad input fails before anything streams; `run(engine)` then streams Pieces.
    Afterwards: `finish_reason` ("stop" at <|assistant_end|> or <|bos|>, "length" at max_tokens or the
    context's end), `prompt_tokens`, `completion_tokens` (every token the engine produced, the tool's forced
    ones and the terminal one included), `parts` (the assistant's turn to put back into the conversation) and
    `text`. A top_k of 0 or None samples among all tokens."""

    def __init__(
        self,
        tokenizer,
        context_len: int,
        messages: list[dict[str, Any]],
        *,
        temperature: float,
        top_k: int | None,
        max_tokens: int,
        top_p: float | None = None,
        seed: int = 42,
    ):
        check_sampling(temperature, top_k, max_tokens, top_p, seed)
        self.prompt = tokenizer.render_for_completion({"messages": messages})
        if len(self.prompt) >= context_len:
            raise LimitError(
                "messages",
                f"the conversation is {len(self.prompt):,} tokens; the model's context is {context_len:,} "
                "tokens: shorten it or clear the history",
            )
        self.sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        self.reader = ReplyReader(tokenizer)
        self.prompt_tokens = len(self.prompt)
        self.completion_tokens = 0
        self.finish_reason: Literal["stop", "length"] | None = None

    def run(self, engine: Engine, cancelled: threading.Event | None = None) -> Iterator[Piece]:
        """Generate and stream the reply's pieces; stops early (no finish_reason) once `cancelled` is set."""
        for column, _ in engine.generate(self.prompt, num_samples=1, **self.sampling):
            if cancelled is not None and cancelled.is_set():
                return
            self.completion_tokens += 1
            yield from self.reader.read(column[0])
            if self.reader.ended:
                break
        yield from self.reader.close()
        self.finish_reason = "stop" if self.reader.ended else "length"

    @property
    def parts(self) -> list[dict[str, str]]:
        return self.reader.parts

    @property
    def text(self) -> str:
        return self.reader.text
