"""Commands that many turns send at about the same moment, sent to Redis together: each caller
adds its commands to a batch, and the batch goes as one pipeline (one write, one round trip) once
the event loop has run the other callbacks that were ready. At 64 turns in flight the reply
deltas, acks and leases of many turns share a round trip; with one turn in flight a batch holds
one caller's commands and goes two loop iterations later than sending them alone.

Scripts go as EVALSHA of scripts loaded already (redis-py's pipelines would ask Redis for them
before every batch): a caller that gets NOSCRIPT (Redis restarted) runs its script alone, which
loads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from frontdesk.batching import Batcher

Build = Callable[[Pipeline], object]  # adds its commands to the pipeline


class Coalescer:
    """Batches of commands for ``redis``, each a pipeline without MULTI (the callers' commands
    are independent; Redis runs each caller's in order, and no other caller's between them
    matters to it)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._batches: Batcher[Build, list[Any]] = Batcher(self._execute)

    async def run(self, build: Build) -> list[Any]:
        """Add ``build``'s commands to the next batch; their results, in order. A command that
        Redis refused raises its error here (for this caller only); an unreachable Redis raises
        for every caller of the batch."""
        return await self._batches(build)

    async def _execute(self, builds: list[Build]) -> list[list[Any] | Exception]:
        counts: list[int] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for build in builds:
                before = len(pipe.command_stack)
                build(pipe)
                counts.append(len(pipe.command_stack) - before)
            results = await pipe.execute(raise_on_error=False)
        each: list[list[Any] | Exception] = []
        start = 0
        for count in counts:
            mine = results[start : start + count]
            start += count
            error = next((r for r in mine if isinstance(r, Exception)), None)
            each.append(error if error is not None else mine)
        return each
