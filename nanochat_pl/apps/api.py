"""The OpenAI-compatible API: `POST /v1/chat/completions` (streaming or not), `GET /v1/models`, `GET /health`.

OpenAI's chat-completions format, so the `openai` client works unchanged. The fields it takes: `messages` (system,
user and assistant turns of text), `model` and `user` (any), `temperature`, `top_k` (an extra field: `extra_body`),
`top_p`, `max_tokens` or `max_completion_tokens`, `seed`, `stream`, `stream_options`, `stop` (up to 4 strings: the
reply ends before the first, not returned) and `n` (1 only); any other is refused, never ignored. Calculator calls
appear as `<<expression=result>>`. A bad request gets a 400 with one line naming the field(s) at fault.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from nanochat_pl.apps.pool import ReplicaPool
from nanochat_pl.common import UserError
from nanochat_pl.limits import check_sampling
from nanochat_pl.reply import InlineToolCalls, Reply

# nanochat chat_web.py's defaults for a request that names none
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 50
DEFAULT_MAX_TOKENS = 512


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field the server does not honour is a 400, not ignored


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    """The request's fields and their types; their bounds are checked by `limits`."""

    model: str | None = None  # any name is accepted: the server has one model
    user: str | None = None
    messages: list[Message]
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1  # one choice per request


def error_response(message: str, param: str | None) -> JSONResponse:
    """OpenAI's error body, which its client turns into an exception carrying `message`."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return JSONResponse(body, status_code=400)


def add_api(app: FastAPI, pool: ReplicaPool, model_name: str) -> None:
    """Add the API's routes and its error handlers to `app`."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """The first problem in one line, "field: what is wrong" where a field is at fault; else every field the
        server does not honour."""
        errors = error.errors()
        unknown = [".".join(map(str, e["loc"][1:])) for e in errors if e["type"] == "extra_forbidden"]
        first = next((e for e in errors if e["type"] != "extra_forbidden"), None)
        if first is None:
            return error_response(f"{', '.join(unknown)}: not supported by this server", unknown[0])
        if first["type"] == "json_invalid":
            return error_response(f"the request body is not valid JSON: {first['ctx']['error']}", None)
        if first["type"] == "model_attributes_type":
            return error_response("the request body must be a JSON object (Content-Type: application/json)", None)
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return error_response(f"{where}: {first['msg']}" if where else first["msg"], where or None)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "replicas": len(pool.engines), "free": pool.free.qsize()}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "nanochat-pl"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        given = (request.max_completion_tokens, request.max_tokens)
        max_tokens = next((n for n in given if n is not None), DEFAULT_MAX_TOKENS)
        sampling = dict(
            temperature=request.temperature, top_k=request.top_k, max_tokens=max_tokens, top_p=request.top_p
        )
        messages = [
            {"role": m.role, "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in request.messages
        ]
        stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
        if len(stops) > 4 or "" in stops:
            return error_response("stop: at most 4 strings, none of them empty", "stop")
        try:
            check_sampling(**sampling, seed=request.seed or 0)
            reply, pieces = pool.reply(messages, seed=request.seed, **sampling)
        except UserError as error:  # LimitError names the field; the tokenizer refuses roles out of order
            return error_response(str(error), getattr(error, "field", "messages"))
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        text = StopText(pieces, stops)
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            events = _stream_events(reply, text, completion, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        message = {"role": "assistant", "content": "".join([delta async for delta in text.read()])}
        finish_reason = "stop" if text.stopped else reply.finish_reason
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        return {**completion, "object": "chat.completion", "choices": [choice], "usage": _usage(reply)}


class StopText:
    """The reply's text as the API returns it (calculator calls inline), up to the first of `stops`: the end that
    could begin a stop string is held back until it cannot; at one, the generation ends (`stopped`)."""

    def __init__(self, pieces: AsyncIterator, stops: list[str]):
        self.pieces, self.stops, self.stopped = pieces, stops, False

    async def read(self) -> AsyncIterator[str]:
        inline, held, hold = InlineToolCalls(), "", max(map(len, self.stops), default=1) - 1
        try:
            async for piece in self.pieces:
                held = self._cut(held + inline.feed(piece))
                if self.stopped:
                    break
                sent = max(len(held) - hold, 0)
                yield held[:sent]
                held = held[sent:]
            else:
                held = self._cut(held + inline.close())
            yield held
        finally:
            await self.pieces.aclose()  # at a stop string, the replica stops generating

    def _cut(self, text: str) -> str:
        found = [i for i in map(text.find, self.stops) if i >= 0]
        self.stopped = bool(found)
        return text[: min(found, default=None)]


async def _stream_events(reply: Reply, text: StopText, completion: dict, usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: the role, the text, the finish reason, the usage if asked for."""

    def event(choices: list[dict], **extra: dict) -> str:
        body = {**completion, "object": "chat.completion.chunk", "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return event([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}])

    yield chunk({"role": "assistant", "content": ""})
    async for delta in text.read():
        if delta:
            yield chunk({"content": delta})
    yield chunk({}, "stop" if text.stopped else reply.finish_reason)
    if usage:
        yield event([], usage=_usage(reply))
    yield "data: [DONE]\n\n"


def _usage(reply: Reply) -> dict:
    total = reply.prompt_tokens + reply.completion_tokens
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens, "total_tokens": total}
