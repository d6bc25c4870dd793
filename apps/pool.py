"""The model replicas that answer the web app's requests, lent to one reply at a time.

nanochat's chat_web.py (@dfc8833, multi-GPU pool 01fb290) keeps one replica per GPU and hands each request
the next free one through an asyncio queue; here too. Generation runs in a thread per request, so the event
loop keeps serving other requests (and the page) while a replica works; the thread passes each piece of the
reply to the event loop through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from nanochat_pl.engine import Engine
from nanochat_pl.reply import Piece, Reply

_FINISHED = object()  # what the worker thread sends after the last piece


class ReplicaPool:
    """Engines (one per replica, all of the same checkpoint) lent to one reply at a time."""

    def __init__(self, engines: list[Engine]):
        self.engines = engines
        self.tokenizer = engines[0].tokenizer
        self.context_len = engines[0].model.config.sequence_len
        self._free: asyncio.Queue[Engine] | None = None  # made in the server's event loop, on first use

    def free_replicas(self) -> int:
        return len(self.engines) if self._free is None else self._free.qsize()

    async def stream(self, reply: Reply) -> AsyncIterator[Piece]:
        """Wait for a free replica, then stream `reply`'s pieces as its thread produces them. Leaving early
        (a client gone, a stop button) tells the thread to stop; the replica returns to the pool when the
        thread has finished with it, never before."""
        if self._free is None:
            self._free = asyncio.Queue()
            for engine in self.engines:
                self._free.put_nowait(engine)
        free = self._free
        engine = await free.get()
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
                loop.call_soon_threadsafe(free.put_nowait, engine)

        threading.Thread(target=work, name="nanochat-pl-reply", daemon=True).start()
        try:
            while (item := await pieces.get()) is not _FINISHED:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()
