"""``LocalQueue``: the turn queue in memory, for the embedded mode, where the gateway and the worker
share one process."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, timedelta
from typing import Any

from frontdesk.wire import ReplyDelta, Turn, encode

from .base import Delivery

log = logging.getLogger(__name__)
BUCKETS_KEPT = 100_000  # users whose message rate is counted (FRONTDESK_USER_RATE)


class LocalQueue:
    """In-memory queue for the embedded mode. ``release`` puts a turn back after ``retry_delay_s``."""

    shared_by_workers = False  # one worker: its own order per conversation is the order

    def __init__(self, retry_delay_s: float = 0.5) -> None:
        self._turns: asyncio.Queue[Delivery] = asyncio.Queue()
        self._replies: defaultdict[str, asyncio.Queue[tuple[str, ReplyDelta]]] = defaultdict(
            asyncio.Queue
        )
        self._ids = itertools.count(1)
        self._retry_delay_s = retry_delay_s
        self._cancel_listeners: list[asyncio.Queue[str]] = []
        self._gateways: dict[str, dict[str, float]] = {}  # platform -> gateway -> expiry
        self._live: dict[int, str] = {}  # message id -> entry id of its turn, until acked
        self._records: defaultdict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self._cursors: dict[str, str] = {}
        self._held_ids: set[str] = set()  # gateway ids served in this process
        self.dead: list[tuple[Delivery, str]] = []
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._spent: dict[date, dict[str, int]] = {}  # UTC day -> user -> tokens spent

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(
        self,
        turn: Turn,
        *,
        sweep: bool = False,
        tracked: tuple[str, dict[str, Any]] | None = None,
    ) -> bool:
        if tracked is not None:
            self._records[tracked[0]][turn.turn_id] = tracked[1]
        if turn.message_id in self._live:
            return False
        entry_id = f"{next(self._ids)}-0"
        self._live[turn.message_id] = entry_id
        self._turns.put_nowait(Delivery(entry_id, turn, 1, encode(turn)))
        return True

    async def replies(self, gateway: str, after: str) -> AsyncIterator[tuple[str, ReplyDelta]]:
        queue = self._replies[gateway]
        while True:
            yield await queue.get()

    async def reply_head(self, gateway: str) -> str:
        return "0-0"  # replies wait in memory: none is skipped

    async def track(self, gateway: str, turn_id: str, record: dict[str, Any]) -> None:
        self._records[gateway][turn_id] = record

    async def untrack(self, gateway: str, turn_id: str, *, cursor: str | None = None) -> None:
        self._records[gateway].pop(turn_id, None)
        if cursor is not None:
            self._cursors[gateway] = cursor

    async def tracked(self, gateway: str) -> dict[str, dict[str, Any]]:
        return dict(self._records[gateway])

    async def save_cursor(self, gateway: str, entry_id: str) -> None:
        self._cursors[gateway] = entry_id

    async def cursor(self, gateway: str) -> str | None:
        return self._cursors.get(gateway)

    async def hold_gateway(self, gateway: str, owner: str, ttl_ms: int) -> bool:
        self._held_ids.add(gateway)
        return True  # one process: nobody to share with

    async def let_gateway_go(self, gateway: str, owner: str) -> None:
        self._held_ids.discard(gateway)

    async def hold_role(self, role: str, owner: str, ttl_ms: int) -> int:
        return 1  # one process: it plays every role

    async def let_role_go(self, role: str, owner: str) -> None:
        pass

    async def gateway_ids(self, platform: str) -> set[str]:
        return set(self._gateways.get(platform, {}))

    async def forget_gateway(self, gateway: str, platforms: Iterable[str]) -> bool:
        if gateway in self._held_ids or self._records.get(gateway):
            return False
        for platform in platforms:
            self._gateways.get(platform, {}).pop(gateway, None)
        return True

    async def receive(self, count: int, block_ms: int) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._turns.get(), block_ms / 1000)
        except TimeoutError:
            return []
        batch = [first]
        while len(batch) < count and not self._turns.empty():
            batch.append(self._turns.get_nowait())
        return batch

    async def ack(
        self,
        delivery: Delivery,
        *,
        unlease: int | None = None,
        final: tuple[str, ReplyDelta] | None = None,
    ) -> bool:
        if final is not None:  # the turn's last reply delta goes first
            await self.publish(*final)
        if (
            delivery.turn is not None
            and self._live.get(delivery.turn.message_id) == delivery.entry_id
        ):
            del self._live[delivery.turn.message_id]
        return True

    async def release(self, delivery: Delivery) -> None:
        again = Delivery(delivery.entry_id, delivery.turn, delivery.deliveries + 1, delivery.fields)
        asyncio.get_running_loop().call_later(self._retry_delay_s, self._turns.put_nowait, again)

    async def postpone(self, delivery: Delivery) -> None:
        again = Delivery(delivery.entry_id, delivery.turn, delivery.deliveries, delivery.fields)
        asyncio.get_running_loop().call_later(self._retry_delay_s, self._turns.put_nowait, again)

    async def gateway_alive(self, gateway: str) -> bool:
        return gateway in self._held_ids

    async def hand_back(self, delivery: Delivery) -> None:
        again = Delivery(delivery.entry_id, delivery.turn, delivery.deliveries + 1, delivery.fields)
        self._turns.put_nowait(again)

    async def touch(self, deliveries: Iterable[Delivery]) -> set[str]:
        return set()

    async def take(self, key: str, count: int, per_s: float) -> float:
        """A token from bucket ``key`` (``count`` tokens, refilled over ``per_s`` seconds): 0
        when taken, else the seconds until one is there."""
        now = time.monotonic()
        tokens, at = self._buckets.pop(key, (float(count), now))  # back in as the newest
        tokens = min(float(count), tokens + (now - at) * count / per_s)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) * per_s / count
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > BUCKETS_KEPT:  # the least recent user's: full again, or nearly
            del self._buckets[next(iter(self._buckets))]
        return wait

    async def slot(self, places: Sequence[tuple[str, float, float]], owner: str) -> float:
        return 0.0  # one gateway: its channels pace their own calls

    async def budget(
        self, place: str, limit: int, window_s: float, owner: str, owed: int, *, kind: str
    ) -> float | None:
        return 0.0  # one gateway: its channels keep their own budgets

    async def hold_budget(self, place: str, seconds: float, window_s: float) -> None:
        pass

    async def note_refusal(self, reason: str) -> None:
        pass  # one process: the gateway's own counts (Admission.refused) are all of them

    async def spend_tokens(self, user: str, day: date, tokens: int) -> None:
        spent = self._spent.setdefault(day, {})
        spent[user] = spent.get(user, 0) + tokens
        for over in [d for d in self._spent if d < day - timedelta(days=1)]:
            del self._spent[over]

    async def tokens_spent(self, user: str, day: date) -> int:
        return self._spent.get(day, {}).get(user, 0)

    async def backlog(self) -> int:
        """Turns queued that the worker has not taken yet."""
        return self._turns.qsize()

    async def lease(self, conversation_id: int, ttl_ms: int) -> bool:
        return True  # one worker: its own per-conversation order is enough

    async def renew(self, conversation_ids: Iterable[int], ttl_ms: int) -> set[int]:
        return set()

    async def unlease(self, conversation_id: int) -> None:
        pass

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.error("turn %s dead-lettered: %s", delivery.entry_id, reason)
        if delivery.turn is not None:
            self._live.pop(delivery.turn.message_id, None)
        self.dead.append((delivery, reason))

    async def publish(self, gateway: str, delta: ReplyDelta) -> None:
        self._replies[gateway].put_nowait((f"{next(self._ids)}-0", delta))

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
