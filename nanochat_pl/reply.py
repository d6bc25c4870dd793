"""A reply of the model, read from the tokens it writes, for the terminal chat, the web app and the evaluations.

Read token by token, a reply is a stream of `Piece`s, each released once its characters are whole; `parts`, the
assistant's turn in the tokenizer's format (rendering back to exactly the tokens the model saw and wrote); and
`text`, each calculator call inline as `<<expression=result>>` (GSM8K's calculator annotations).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from nanochat_pl.limits import LimitError

PieceKind = Literal["text", "python", "python_output"]  # the kinds of part an assistant message holds


@dataclass
class Piece:
    """A stretch of text, calculator expression or result. Each python or python_output block opens with an empty
    piece, so an empty expression is seen too, and two calls in a row stay two."""

    kind: PieceKind
    text: str


class ReplyReader:
    """`read(token)` returns the pieces the token completes, `close()` the rest once no token will follow. The
    reply ends at a terminal token (`ended`); tokens after it are ignored."""

    def __init__(self, tokenizer):
        special = tokenizer.encode_special
        self.tokenizer = tokenizer
        self.opens = {special("<|python_start|>"): "python", special("<|output_start|>"): "python_output"}
        self.closes = {special("<|python_end|>"), special("<|output_end|>")}
        self.terminal = {special("<|assistant_end|>"), tokenizer.bos_token_id}
        self.specials = set(tokenizer.special_tokens.values())
        self.kind: PieceKind = "text"
        self.ids: list[int] = []  # the open block's tokens
        self.released = 0  # characters of their text already released
        self.parts: list[dict[str, str]] = []
        self.ended = False

    def read(self, token: int) -> list[Piece]:
        if self.ended or token in self.terminal:
            self.ended = True
            return []
        if token in self.opens or token in self.closes:
            pieces = self.close()
            self.kind = self.opens.get(token, "text")
            return pieces if self.kind == "text" else [*pieces, Piece(self.kind, "")]
        if token in self.specials:  # the other special tokens carry no text
            return []
        self.ids.append(token)
        return self._release(whole=False)

    def _release(self, whole: bool) -> list[Piece]:
        """The block's text not yet released. A character split across tokens decodes to U+FFFD until its last
        byte arrives, so text ending in U+FFFD waits, unless the block is `whole` (nothing will complete it)."""
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") and not whole:
            return []
        delta, self.released = text[self.released :], len(text)
        return [Piece(self.kind, delta)] if delta else []

    def close(self) -> list[Piece]:
        """End the open block: release what is left of its text and add it to `parts`."""
        pieces, text = self._release(whole=True), self.tokenizer.decode(self.ids)
        if self.kind != "text":
            self.parts.append({"type": self.kind, "text": text})
        elif text and self.parts and self.parts[-1]["type"] == "text":
            self.parts[-1]["text"] += text
        elif text:
            self.parts.append({"type": "text", "text": text})
        self.kind, self.ids, self.released = "text", [], 0
        return pieces

    @property
    def text(self) -> str:
        """The parts as plain text, each calculator call inline: `<<expression=result>>`."""
        inline = InlineToolCalls()
        text = []
        for part in self.parts:  # as the reply streamed them: a tool block opens with an empty piece
            if part["type"] != "text":
                text.append(inline.feed(Piece(part["type"], "")))
            if part["text"]:
                text.append(inline.feed(Piece(part["type"], part["text"])))
        return "".join(text) + inline.close()


def read_reply(tokenizer, tokens: Iterable[int]) -> ReplyReader:
    """The reply in `tokens` (generated, no prompt): its `parts`, `text`, and whether it `ended`."""
    reader = ReplyReader(tokenizer)
    for token in tokens:
        reader.read(token)
    reader.close()
    return reader


class InlineToolCalls:
    """Pieces -> plain text, each calculator call `<<expression=result>>`: `feed` every piece, then `close`."""

    def __init__(self) -> None:
        self.kind: PieceKind = "text"

    def feed(self, piece: Piece) -> str:
        previous, self.kind = self.kind, piece.kind
        if piece.kind == previous and (piece.kind == "text" or piece.text):  # more of the same block
            return piece.text
        if (previous, piece.kind) == ("python", "python_output"):
            return "=" + piece.text
        opening = {"text": "", "python": "<<", "python_output": "<<="}[piece.kind]
        return ("" if previous == "text" else ">>") + opening + piece.text

    def close(self) -> str:
        return "" if self.kind == "text" else ">>"


class Reply(ReplyReader):
    """One assistant reply to `messages` (OpenAI-style, a system message allowed first) with `sampling`
    (`Engine.generate`'s settings). The prompt is rendered and checked here, before anything streams; `run(engine)`
    then streams Pieces, and sets `finish_reason` ("stop" or "length") and `completion_tokens` (forced included)."""

    def __init__(self, tokenizer, context_len: int, messages: list[dict[str, Any]], **sampling: Any):
        super().__init__(tokenizer)
        self.prompt = tokenizer.render_for_completion({"messages": messages})
        self.prompt_tokens = len(self.prompt)
        if self.prompt_tokens >= context_len:
            size = f"the conversation is {self.prompt_tokens:,} tokens; the model's context is {context_len:,} tokens"
            raise LimitError("messages", size + ": shorten it or clear the history")
        self.sampling = sampling
        self.completion_tokens = 0
        self.finish_reason: Literal["stop", "length"] | None = None

    def run(self, engine, cancelled: threading.Event | None = None) -> Iterator[Piece]:
        """Generate and stream the reply's pieces; stops early (no finish_reason) once `cancelled` is set."""
        for column, _ in engine.generate(self.prompt, **self.sampling):
            if cancelled is not None and cancelled.is_set():
                return
            self.completion_tokens += 1
            yield from self.read(column[0])
            if self.ended:
                break
        yield from self.close()
        self.finish_reason = "stop" if self.ended else "length"
