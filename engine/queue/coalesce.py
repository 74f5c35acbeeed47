"""Commands that many turns send at about the same moment, sent to Redis together: each caller
adds its commands to a batch, and the batch goes as one pipeline (one write, one round trip) once
the event loop has run the other callbacks that were ready. At 64 turns in flight the reply
deltas, acks and leases of many turns share a round trip; with one turn in flight a batch holds
one caller's commands and costs one loop iteration more than sending them alone.

Scripts go as EVALSHA of scripts loaded already (redis-py's pipelines would ask Redis for them
before every batch): a caller that gets NOSCRIPT (Redis restarted) runs its script alone, which
loads it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

Build = Callable[[Pipeline], object]  # adds its commands to the pipeline


class Coalescer:
    """Batches of commands for ``redis``, each a pipeline without MULTI (the callers' commands
    are independent; Redis runs each caller's in order, and no other caller's between them
    matters to it)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._queued: list[tuple[Build, asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, build: Build) -> list[Any]:
        """Add ``build``'s commands to the next batch; their results, in order. A command that
        Redis refused raises its error here (for this caller only); an unreachable Redis raises
        for every caller of the batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((build, future))
        if len(self._queued) == 1:
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.create_task(self._execute(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _execute(self, batch: list[tuple[Build, asyncio.Future[list[Any]]]]) -> None:
        counts: list[int] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for build, _future in batch:
                    before = len(pipe.command_stack)
                    build(pipe)
                    counts.append(len(pipe.command_stack) - before)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # every caller hears of it
            for _build, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for (_build, future), count in zip(batch, counts, strict=True):
            mine = results[start : start + count]
            start += count
            if future.done():  # its caller was cancelled
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)
