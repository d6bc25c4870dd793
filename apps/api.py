"""The OpenAI-compatible API: `POST /v1/chat/completions` (streaming or not), `GET /v1/models`, `GET /health`.

Requests and responses follow OpenAI's chat-completions format, so the `openai` client and tools built on it
work unchanged; `top_k` is an extra field (the client passes it through `extra_body`). Calculator calls run
on the server and appear in the content as `<<expression=result>>`. The limits are `nanochat_pl.limits`'s
(nanochat chat_web.py's): at most 500 messages, 8,000 characters per message and 32,000 in all; temperature
0-2; top-k 0-200 (0: no cut); max_tokens 1-4096. Every bad request gets a 400 with OpenAI's error body and one
line that names the field.
"""

from __future__ import annotations

import json
import random
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
from nanochat_pl.limits import LimitError, check_conversation
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

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The request's fields and their types; their bounds are checked when the reply is made (limits)."""

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

    def new_tokens(self) -> int:
        """At most this many new tokens: max_completion_tokens, else max_tokens, else the default."""
        given = [n for n in (self.max_completion_tokens, self.max_tokens) if n is not None]
        return given[0] if given else DEFAULT_MAX_TOKENS


def error_response(message: str, status: int = 400, param: str | None = None) -> JSONResponse:
    """OpenAI's error body, which its client turns into an exception carrying `message`."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """The first problem in one line, "field: what is wrong" where a field is at fault."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    if first["type"] == "model_attributes_type":
        return "the request body must be a JSON object sent with Content-Type: application/json", None
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    message = first["msg"]
    return (f"{where}: {message}" if where else message), where or None


def add_api(app: FastAPI, pool: ReplicaPool, model_name: str) -> None:
    """Add the API's routes and its error handlers to `app`."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return error_response(message, param=param)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "replicas": len(pool.engines),
            "free": pool.free_replicas(),
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(model_name)]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            check_conversation(messages)
            reply = Reply(
                pool.tokenizer,
                pool.context_len,
                messages,
                temperature=request.temperature,
                top_k=request.top_k,
                max_tokens=request.new_tokens(),
                top_p=request.top_p,
                seed=request.seed if request.seed is not None else random.randrange(2**31),
            )
        except UserError as error:  # a bound passed (LimitError names the field), roles out of order, ...
            return error_response(str(error), param=error.field if isinstance(error, LimitError) else "messages")
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            events = _stream_events(pool, reply, completion_id, created, model_name, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        async for _ in pool.stream(reply):  # the whole reply, then its text
            pass
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(reply),
        }


async def _stream_events(
    pool: ReplicaPool, reply: Reply, completion_id: str, created: int, model_name: str, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: a chunk with the role, one per piece of text, one with the
    finish reason, one with the usage if asked for, then `[DONE]`."""

    def event(choices: list[dict], **extra: dict) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
        }
        body |= {"choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return event([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}])

    yield chunk({"role": "assistant", "content": ""})
    inline = InlineToolCalls()
    async for piece in pool.stream(reply):
        text = inline.feed(piece)
        if text:
            yield chunk({"content": text})
    if inline.close():
        yield chunk({"content": inline.close()})
    yield chunk({}, reply.finish_reason)
    if include_usage:
        yield event([], usage=_usage(reply))
    yield "data: [DONE]\n\n"


def _usage(reply: Reply) -> dict:
    tokens = dict(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
    return tokens | {"total_tokens": reply.prompt_tokens + reply.completion_tokens}


def _model_card(model_name: str) -> dict:
    return {"id": model_name, "object": "model", "created": 0, "owned_by": "nanochat-pl"}
