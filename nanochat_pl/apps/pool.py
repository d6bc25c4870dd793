"""The model replicas that answer the web app's requests, lent to one reply at a time (nanochat's chat_web.py:
one per GPU, handed out through an asyncio queue). Each reply runs in a thread, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from typing import Any

from nanochat_pl.engine import Engine
from nanochat_pl.limits import check_conversation
from nanochat_pl.reply import Piece, Reply

_FINISHED = object()  # what the worker thread sends after the last piece


class ReplicaPool:
    def __init__(self, engines: list[Engine]):
        self.engines = engines
        self.free: asyncio.Queue[Engine] = asyncio.Queue()  # bound to the server's event loop at its first wait
        for engine in engines:
            self.free.put_nowait(engine)

    def reply(self, messages: list[dict[str, Any]], seed: int | None = None, **sampling) -> tuple[Reply, AsyncIterator]:
        """A reply to `messages` (no seed: a random one) and the stream of its pieces; a conversation out of bounds
        is a LimitError here, before anything streams."""
        check_conversation(messages)
        seed = random.randrange(2**31) if seed is None else seed
        engine = self.engines[0]  # any replica: they hold the same model
        reply = Reply(engine.tokenizer, engine.model.config.sequence_len, messages, seed=seed, **sampling)
        return reply, self._stream(reply)

    async def _stream(self, reply: Reply) -> AsyncIterator[Piece]:
        """Wait for a free replica, then stream `reply`'s pieces. Leaving early (a client gone, a stop button) stops
        the thread; the replica returns to the pool when the thread has finished with it, never before."""
        engine = await self.free.get()
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                for piece in reply.run(engine, cancelled):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                loop.call_soon_threadsafe(pieces.put_nowait, _FINISHED)
            except Exception as error:  # raised again in the request, which reports it
                loop.call_soon_threadsafe(pieces.put_nowait, error)
            finally:
                loop.call_soon_threadsafe(self.free.put_nowait, engine)

        threading.Thread(target=work, name="nanochat-pl-reply", daemon=True).start()
        try:
            while (item := await pieces.get()) is not _FINISHED:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()
