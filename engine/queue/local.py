"""``LocalQueue``: the turn queue in memory, for the embedded mode, where the gateway and the worker
share one process."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

from frontdesk.wire import ReplyDelta, Turn, encode

from .base import Delivery

log = logging.getLogger(__name__)


class LocalQueue:
    """In-memory queue for the embedded mode. ``release`` puts a turn back after ``retry_delay_s``."""

    def __init__(self, retry_delay_s: float = 0.5) -> None:
        self._turns: asyncio.Queue[Delivery] = asyncio.Queue()
        self._replies: defaultdict[str, asyncio.Queue[ReplyDelta]] = defaultdict(asyncio.Queue)
        self._ids = itertools.count(1)
        self._retry_delay_s = retry_delay_s
        self._cancel_listeners: list[asyncio.Queue[str]] = []
        self._gateways: dict[str, dict[str, float]] = {}  # platform -> gateway -> expiry
        self.dead: list[tuple[Delivery, str]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(self, turn: Turn) -> None:
        self._turns.put_nowait(Delivery(str(next(self._ids)), turn, 1, encode(turn)))

    async def replies(self, gateway: str) -> AsyncIterator[ReplyDelta]:
        queue = self._replies[gateway]
        while True:
            yield await queue.get()

    async def receive(self, count: int, block_ms: int) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._turns.get(), block_ms / 1000)
        except TimeoutError:
            return []
        batch = [first]
        while len(batch) < count and not self._turns.empty():
            batch.append(self._turns.get_nowait())
        return batch

    async def ack(self, delivery: Delivery) -> None:
        pass

    async def release(self, delivery: Delivery) -> None:
        again = Delivery(delivery.entry_id, delivery.turn, delivery.deliveries + 1, delivery.fields)
        asyncio.get_running_loop().call_later(self._retry_delay_s, self._turns.put_nowait, again)

    async def touch(self, deliveries: Iterable[Delivery]) -> None:
        pass

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.error("turn %s dead-lettered: %s", delivery.entry_id, reason)
        self.dead.append((delivery, reason))

    async def publish(self, gateway: str, delta: ReplyDelta) -> None:
        self._replies[gateway].put_nowait(delta)

    async def announce(self, gateway: str, platforms: Iterable[str], ttl_s: float) -> None:
        for platform in platforms:
            self._gateways.setdefault(platform, {})[gateway] = time.monotonic() + ttl_s

    async def withdraw(self, gateway: str, platforms: Iterable[str]) -> None:
        for platform in platforms:
            self._gateways.get(platform, {}).pop(gateway, None)

    async def gateway_for(self, platform: str) -> str | None:
        live = {g: t for g, t in self._gateways.get(platform, {}).items() if t > time.monotonic()}
        return max(live, key=live.__getitem__) if live else None

    async def cancel(self, turn_id: str) -> None:
        for listener in self._cancel_listeners:
            listener.put_nowait(turn_id)

    async def cancellations(self) -> AsyncIterator[str]:
        listener: asyncio.Queue[str] = asyncio.Queue()
        self._cancel_listeners.append(listener)
        try:
            while True:
                yield await listener.get()
        finally:
            self._cancel_listeners.remove(listener)
