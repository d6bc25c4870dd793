"""`nanochat-pl chat` (a terminal chat) and `nanochat-pl serve` (the web app), and what they share: loading a
checkpoint into engines and turning the engine's token stream into readable pieces of a reply.

The terminal chat follows nanochat's chat_cli.py (@92d63d4): temperature 0.6, top-k 50, 256 new tokens per
reply, `clear` starts over, `quit` leaves, `-p` answers one prompt and exits. Calculator calls are shown
inline as `<<expression=result>>`, the notation of GSM8K's calculator annotations the tool format comes from.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nanochat_pl.checkpoint import load_model
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine

PieceKind = Literal["text", "python", "output"]
# the tokenizer's name for each kind of assistant part (tokenizer.ASSISTANT_PART_TYPES)
PART_TYPES = {"text": "text", "python": "python", "output": "python_output"}


# ----------------------------------------------------------------------------------------------------------
# loading


def resolve_device(device: str) -> torch.device:
    """ "auto" -> the first CUDA device if there is one, else the CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def load_engine(
    checkpoint: str, device: torch.device, tokenizer_dir: str | None = None
) -> tuple[Engine, dict[str, Any]]:
    """An Engine for `checkpoint` on `device` and the checkpoint's metadata. The engine picks the precision:
    bf16 autocast where bf16 matmuls are native (CUDA, CPUs with AVX512-BF16 or AMX), else fp32."""
    model, tokenizer, meta = load_model(checkpoint, device=device, tokenizer_dir=tokenizer_dir)
    return Engine(model, tokenizer), meta


# ----------------------------------------------------------------------------------------------------------
# the reply: tokens -> pieces of text


@dataclass
class Piece:
    """A stretch of the reply: plain text, a calculator expression, or the calculator's output. Each python or
    output block opens with an empty piece, so even an empty expression is seen."""

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


class Reply:
    """One assistant reply to `messages` (OpenAI-style {"role", "content"} dicts, a system message allowed
    first). The prompt is rendered and checked when the Reply is made, so bad input fails before anything
    streams; `run(engine)` then streams Pieces. Afterwards: `finish_reason` ("stop" at <|assistant_end|> or
    <|bos|>, "length" at max_tokens or the context's end), `prompt_tokens`, `completion_tokens` (every token
    the engine produced, the tool's forced ones and the terminal one included) and `parts` (the assistant
    turn in the tokenizer's format, to put back into the conversation)."""

    def __init__(
        self,
        tokenizer,
        context_len: int,
        messages: list[dict[str, Any]],
        temperature: float,
        top_k: int | None,
        max_tokens: int,
        seed: int = 42,
        top_p: float | None = None,
    ):
        self.prompt = tokenizer.render_for_completion({"messages": messages})
        if len(self.prompt) >= context_len:
            raise UserError(
                f"the conversation is {len(self.prompt):,} tokens; the model's context is {context_len:,} "
                "tokens: shorten it or clear the history"
            )
        self.tokenizer = tokenizer
        self.sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        self.prompt_tokens = len(self.prompt)
        self.completion_tokens = 0
        self.finish_reason: Literal["stop", "length"] | None = None
        self.parts: list[dict[str, str]] = []

    def run(self, engine: Engine, cancelled: threading.Event | None = None) -> Iterator[Piece]:
        """Generate and stream the reply's pieces; stops early (no finish_reason) once `cancelled` is set."""
        special = self.tokenizer.encode_special
        opens: dict[int, PieceKind] = {
            special("<|python_start|>"): "python",
            special("<|output_start|>"): "output",
        }
        closes = {special("<|python_end|>"), special("<|output_end|>")}
        specials = set(self.tokenizer.special_tokens.values())
        kind: PieceKind = "text"
        segment = _SegmentText(self.tokenizer)
        for column, _ in engine.generate(self.prompt, num_samples=1, **self.sampling):
            if cancelled is not None and cancelled.is_set():
                return
            token = column[0]
            self.completion_tokens += 1
            if token in engine.terminal_tokens:
                self.finish_reason = "stop"
                break
            if token in opens or token in closes:
                yield from self._close(kind, segment)
                kind, segment = opens.get(token, "text"), _SegmentText(self.tokenizer)
                if kind != "text":
                    yield Piece(kind, "")
            elif token not in specials:  # the other special tokens carry no text
                delta = segment.push(token)
                if delta:
                    yield Piece(kind, delta)
        yield from self._close(kind, segment)
        self.finish_reason = self.finish_reason or "length"

    def _close(self, kind: PieceKind, segment: _SegmentText) -> Iterator[Piece]:
        rest = segment.flush()
        if rest:
            yield Piece(kind, rest)
        text = segment.text()
        if kind == "text" and not text:
            return
        if kind == "text" and self.parts and self.parts[-1]["type"] == "text":
            self.parts[-1]["text"] += text
        else:
            self.parts.append({"type": PART_TYPES[kind], "text": text})


class InlineToolCalls:
    """Pieces -> plain text, each calculator call written `<<expression=result>>` (GSM8K's notation):
    `feed` every piece in order, then `close` (a call the reply stopped in the middle of is closed too)."""

    def __init__(self) -> None:
        self.kind: PieceKind = "text"

    def feed(self, piece: Piece) -> str:
        marker = "" if piece.kind == self.kind else _marker(self.kind, piece.kind)
        self.kind = piece.kind
        return marker + piece.text

    def close(self) -> str:
        return "" if self.kind == "text" else ">>"


def _marker(previous: PieceKind, kind: PieceKind) -> str:
    if (previous, kind) == ("python", "output"):
        return "="
    close = "" if previous == "text" else ">>"
    return close + {"text": "", "python": "<<", "output": "<<="}[kind]


# ----------------------------------------------------------------------------------------------------------
# the terminal chat


def chat(
    checkpoint: str,
    prompt: str | None = None,
    temperature: float = 0.6,
    top_k: int = 50,
    max_tokens: int = 256,
    device: str = "auto",
    seed: int = 42,
    tokenizer_dir: str | None = None,
) -> None:
    """Talk to a model in the terminal; replies stream as they are generated.

    Type `clear` to start a new conversation and `quit` (or Ctrl-D) to leave; Ctrl-C stops a reply.

    Args:
        checkpoint: Any stage's checkpoint (.ckpt), usually the SFT or RL one.
        prompt: Answer this one prompt, print the answer and exit (no interactive loop).
        temperature: Sampling temperature; 0 always picks the most likely token.
        top_k: Sample among the k most likely tokens only; 0 turns the cut off.
        max_tokens: At most this many new tokens per reply.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        seed: Seed of the sampler; each reply of a conversation uses the next one.
        tokenizer_dir: The tokenizer's directory, if not where the checkpoint says (a checkpoint copied
            from another machine).
    """
    if temperature < 0 or top_k < 0 or max_tokens < 1:
        raise UserError(f"need temperature >= 0, top_k >= 0, max_tokens >= 1; got {temperature}, {top_k}, {max_tokens}")
    engine, _ = load_engine(checkpoint, resolve_device(device), tokenizer_dir)
    context_len = engine.model.config.sequence_len

    def answer(messages: list[dict[str, Any]], reply_seed: int) -> Reply:
        reply = Reply(engine.tokenizer, context_len, messages, temperature, top_k or None, max_tokens, reply_seed)
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


# ----------------------------------------------------------------------------------------------------------
# the web app


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int | None = None,
    device: str = "auto",
    tokenizer_dir: str | None = None,
) -> None:
    """Serve a model: the Gradio chat page at `/` and an OpenAI-compatible API at `/v1/chat/completions`
    (also `/v1/models` and `/health`), one FastAPI app run by uvicorn.

    Args:
        checkpoint: Any stage's checkpoint (.ckpt), usually the SFT or RL one.
        host: Address to listen on; 0.0.0.0 to accept connections from other machines.
        port: Port to listen on.
        replicas: Copies of the model answering requests side by side; default one per CUDA device, or one
            on the CPU. Replicas take the CUDA devices in turn.
        device: "auto" (every CUDA device if there is one, else the CPU), "cpu", "cuda" or "cuda:N".
        tokenizer_dir: The tokenizer's directory, if not where the checkpoint says.
    """
    import uvicorn

    from apps.chat import create_app

    if replicas is not None and replicas < 1:
        raise UserError(f"replicas must be at least 1, got {replicas}")
    if device == "auto" and torch.cuda.is_available():
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    else:
        devices = [resolve_device(device)]
    replica_devices = [devices[i % len(devices)] for i in range(replicas or len(devices))]
    loaded = [load_engine(checkpoint, replica_device, tokenizer_dir) for replica_device in replica_devices]
    stage = loaded[0][1].get("stage", "model")
    print(f"serving {checkpoint} with {len(loaded)} replica(s) on {', '.join(map(str, replica_devices))}")
    app = create_app([engine for engine, _ in loaded], model_name=f"nanochat-pl-{stage}")
    uvicorn.run(app, host=host, port=port)
