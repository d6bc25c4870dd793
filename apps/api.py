"""The OpenAI-compatible API: `POST /v1/chat/completions` (streaming or not), `GET /v1/models`, `GET /health`.

OpenAI's chat-completions format, so the `openai` client works unchanged; `top_k` is an extra field (`extra_body`).
Calculator calls appear as `<<expression=result>>`. A bad request gets a 400 with one line that names the field.
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
from pydantic import BaseModel

from apps.pool import ReplicaPool
from nanochat_pl.common import UserError
from nanochat_pl.limits import check_sampling
from nanochat_pl.reply import InlineToolCalls, Reply

# nanochat chat_web.py's defaults for a request that names none
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 50
DEFAULT_MAX_TOKENS = 512


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The request's fields and their types; their bounds are checked by `limits`."""

    model: str | None = None  # any name is accepted: the server has one model
    messages: list[Message]
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None


def error_response(message: str, param: str | None) -> JSONResponse:
    """OpenAI's error body, which its client turns into an exception carrying `message`."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return JSONResponse(body, status_code=400)


def add_api(app: FastAPI, pool: ReplicaPool, model_name: str) -> None:
    """Add the API's routes and its error handlers to `app`."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """The first problem in one line, "field: what is wrong" where a field is at fault."""
        first = error.errors()[0]
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
        given = [n for n in (request.max_completion_tokens, request.max_tokens) if n is not None]
        max_tokens = given[0] if given else DEFAULT_MAX_TOKENS
        sampling = dict(
            temperature=request.temperature, top_k=request.top_k, max_tokens=max_tokens, top_p=request.top_p
        )
        messages = [
            {"role": m.role, "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in request.messages
        ]
        try:
            check_sampling(**sampling, seed=request.seed or 0)
            reply, pieces = pool.reply(messages, seed=request.seed, **sampling)
        except UserError as error:  # LimitError names the field; the tokenizer refuses roles out of order
            return error_response(str(error), getattr(error, "field", "messages"))
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            events = _stream_events(reply, pieces, completion, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        async for _ in pieces:  # the whole reply, then its text
            pass
        message = {"role": "assistant", "content": reply.text}
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        return {**completion, "object": "chat.completion", "choices": [choice], "usage": _usage(reply)}


async def _stream_events(reply: Reply, pieces: AsyncIterator, completion: dict, usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: the role, the text, the finish reason, the usage if asked for."""

    def event(choices: list[dict], **extra: dict) -> str:
        body = {**completion, "object": "chat.completion.chunk", "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return event([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}])

    yield chunk({"role": "assistant", "content": ""})
    inline = InlineToolCalls()
    async for piece in pieces:
        if text := inline.feed(piece):
            yield chunk({"content": text})
    if inline.close():
        yield chunk({"content": inline.close()})
    yield chunk({}, reply.finish_reason)
    if usage:
        yield event([], usage=_usage(reply))
    yield "data: [DONE]\n\n"


def _usage(reply: Reply) -> dict:
    total = reply.prompt_tokens + reply.completion_tokens
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens, "total_tokens": total}
