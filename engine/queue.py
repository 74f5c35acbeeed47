"""The turn queue: gateways submit turns, workers take them, and reply deltas flow back.

Semantics (both implementations):

* **At least once.** A turn is delivered until a worker acks it. A worker that dies holding turns
  leaves them pending; after ``claim_idle_ms`` without a heartbeat another worker reclaims them. So a
  turn can be processed twice: the worker makes that harmless by checking storage for an existing
  reply (``Store.reply_to``) before generating, and storage refuses a second reply.
* **Heartbeats.** A worker ``touch``-es the turns it is still working on, so a long generation is
  not mistaken for a dead worker.
* **Dead letters.** ``Delivery.deliveries`` counts deliveries. The worker moves a turn delivered more
  than ``max_deliveries`` times to the dead-letter stream (``dead_letter``) instead of trying again.
* **Replies** go to the stream of the gateway that owns the turn (``Turn.gateway``), in order.
* **Cancels** (a user's /stop) are broadcast to every worker; the one generating the turn stops.
  A cancel for a turn no worker holds is simply ignored.

``RedisQueue`` does this with Redis Streams: one stream of turns read through the consumer group
``workers`` (XADD with ``MAXLEN ~``, XREADGROUP, XACK, XAUTOCLAIM, XCLAIM JUSTID as heartbeat, XPENDING
for delivery counts), a dead-letter stream, and a reply stream per gateway. ``LocalQueue`` does it in
memory for the embedded mode, where gateway and worker share one process. ``RedisQueue`` also serves
the admin CLI: ``status`` (what is queued, pending and dead) and ``retry_dead``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frontdesk.errors import QueueUnavailable
from frontdesk.wire import ReplyDelta, Turn, decode, encode

log = logging.getLogger(__name__)

GROUP = "workers"
REPLY_STREAM_MAXLEN = 10_000
REPLY_STREAM_TTL_S = 24 * 3600
POOL_SIZE = 32  # Redis connections per process
RETRY_BATCH = 100  # dead letters moved per round trip by ``retry_dead``
# What ``dead_letter`` adds to a turn's own fields; ``retry_dead`` strips it again.
_DEAD_LETTER_FIELDS = frozenset({"entry_id", "deliveries", "reason"})


@dataclass(slots=True)
class Delivery:
    """One delivery of a queue entry. ``turn`` is None when the entry could not be decoded: the
    worker dead-letters it at once."""

    entry_id: str
    turn: Turn | None
    deliveries: int
    fields: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """One consumer of the ``workers`` group. ``inactive_ms`` (time since its last successful
    read) needs Redis 7.2; None before."""

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """A snapshot of the turn queue for operators (``RedisQueue.status``).

    ``lag`` is how many entries the group has still to read, ``entries_read`` how many it has
    read; either is None when Redis cannot tell (e.g. ``entries_read`` before the first read).
    ``oldest_pending_*`` describe the pending entry with the lowest id, if any.
    ``group_exists`` is False until a worker has started: then nothing has been read yet."""

    stream: str
    length: int
    dead: int
    group_exists: bool
    pending: int = 0
    lag: int | None = None
    last_delivered_id: str | None = None
    entries_read: int | None = None
    consumers: tuple[ConsumerStatus, ...] = ()
    oldest_pending_id: str | None = None
    oldest_pending_idle_ms: int | None = None


class TurnQueue(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    # gateway side
    async def submit(self, turn: Turn) -> None: ...
    def replies(self, gateway: str) -> AsyncIterator[ReplyDelta]: ...
    async def cancel(self, turn_id: str) -> None: ...

    # worker side
    async def receive(self, count: int, block_ms: int) -> list[Delivery]: ...
    async def ack(self, delivery: Delivery) -> None: ...
    async def release(self, delivery: Delivery) -> None: ...
    async def touch(self, deliveries: Iterable[Delivery]) -> None: ...
    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
    async def publish(self, gateway: str, delta: ReplyDelta) -> None: ...
    def cancellations(self) -> AsyncIterator[str]: ...


class LocalQueue:
    """In-memory queue for the embedded mode. ``release`` puts a turn back after ``retry_delay_s``."""

    def __init__(self, retry_delay_s: float = 0.5) -> None:
        self._turns: asyncio.Queue[Delivery] = asyncio.Queue()
        self._replies: defaultdict[str, asyncio.Queue[ReplyDelta]] = defaultdict(asyncio.Queue)
        self._ids = itertools.count(1)
        self._retry_delay_s = retry_delay_s
        self._cancel_listeners: list[asyncio.Queue[str]] = []
        self.dead: list[tuple[Delivery, str]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(self, turn: Turn) -> None:
        self._turns.put_nowait(Delivery(str(next(self._ids)), turn, 1, encode(turn)))

    async def replies(self, gateway: str) -> AsyncIterator[ReplyDelta]:  # type: ignore[override]
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

    async def cancel(self, turn_id: str) -> None:
        for listener in self._cancel_listeners:
            listener.put_nowait(turn_id)

    async def cancellations(self) -> AsyncIterator[str]:  # type: ignore[override]
        listener: asyncio.Queue[str] = asyncio.Queue()
        self._cancel_listeners.append(listener)
        try:
            while True:
                yield await listener.get()
        finally:
            self._cancel_listeners.remove(listener)


class RedisQueue:
    """Redis Streams queue; see the module docstring for the semantics."""

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        prefix: str = "frontdesk",
        maxlen: int = 100_000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.url = url
        self.consumer = consumer
        self.turns_key = f"{prefix}:turns"
        self.dead_key = f"{prefix}:turns:dead"
        self.reply_prefix = f"{prefix}:replies:"
        self.cancel_channel = f"{prefix}:cancel"
        self.maxlen = maxlen
        self.claim_idle_ms = claim_idle_ms
        # A bounded pool, opened in full at start: a burst of commands then waits a moment for a
        # free connection instead of opening (and handshaking) new ones on its way to the user.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=20,
            decode_responses=True,
            health_check_interval=30,
            socket_connect_timeout=5,
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._claim_cursor = "0-0"
        self._next_claim_at = 0.0

    async def start(self, *, warm: bool = True) -> None:
        """Check Redis and create the consumer group. ``warm`` opens the whole pool now (for
        gateways and workers); a short-lived admin command passes False and opens one connection."""
        try:
            await asyncio.gather(*(self.redis.ping() for _ in range(POOL_SIZE if warm else 1)))
            await self._ensure_group()
        except ResponseError as exc:
            raise QueueUnavailable(f"Redis at {self.url} refused the setup: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.turns_key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def stop(self) -> None:
        await self.redis.aclose()

    # -- gateway side --------------------------------------------------------------------------

    async def submit(self, turn: Turn) -> None:
        try:
            await self.redis.xadd(
                self.turns_key, encode(turn), maxlen=self.maxlen, approximate=True
            )
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot queue the turn on Redis: {exc}") from exc

    async def replies(self, gateway: str) -> AsyncIterator[ReplyDelta]:  # type: ignore[override]
        """Every delta on this gateway's reply stream, in order, for as long as it is iterated.
        Reads from the start: gateway ids are unique per process, so the stream holds only its own
        turns. Survives Redis outages by retrying."""
        key = self.reply_prefix + gateway
        last_id = "0-0"
        backoff = 0.1
        while True:
            try:
                result = await self.redis.xread({key: last_id}, count=500, block=1000)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("reply stream %s: Redis unreachable (%s); retrying", key, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for _key, entries in result or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    try:
                        yield decode(ReplyDelta, fields)
                    except ValueError:
                        log.exception("undecodable reply delta %s on %s", entry_id, key)

    async def cancel(self, turn_id: str) -> None:
        try:
            await self.redis.publish(self.cancel_channel, turn_id)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot send the cancel on Redis: {exc}") from exc

    # -- worker side ---------------------------------------------------------------------------

    async def cancellations(self) -> AsyncIterator[str]:  # type: ignore[override]
        """Turn ids to stop, from Redis pub/sub; resubscribes after a Redis outage."""
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.cancel_channel)
                backoff = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        yield message["data"]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("cancel channel: Redis unreachable (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                await pubsub.aclose()

    async def receive(self, count: int, block_ms: int) -> list[Delivery]:
        """Reclaimed turns of dead workers first, then new ones (blocking up to ``block_ms``)."""
        try:
            return await self._receive(count, block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis restarted without persistence (or the stream was deleted): set up again.
            log.warning("consumer group missing on %s; creating it again", self.turns_key)
            await self._ensure_group()
            self._claim_cursor = "0-0"
            return []

    async def _receive(self, count: int, block_ms: int) -> list[Delivery]:
        deliveries = await self._reclaim(count)
        want = count - len(deliveries)
        if want <= 0:
            return deliveries
        result = await self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.turns_key: ">"},
            count=want,
            block=None if deliveries else block_ms,
        )
        for _key, entries in result or ():
            for entry_id, fields in entries:
                deliveries.append(_delivery(entry_id, fields, 1))
        return deliveries

    async def _reclaim(self, count: int) -> list[Delivery]:
        now = time.monotonic()
        if now < self._next_claim_at:
            return []
        cursor, entries, *_deleted = await self.redis.xautoclaim(
            self.turns_key,
            GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = cursor
        if cursor == "0-0":
            # A full pass over the pending list: look again after a fraction of the idle time.
            self._next_claim_at = now + self.claim_idle_ms / 4000
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]
        if not entries:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _fields in entries:
                pipe.xpending_range(self.turns_key, GROUP, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        out = []
        for (entry_id, fields), info in zip(entries, pending, strict=True):
            times = info[0]["times_delivered"] if info else 1
            log.warning("reclaimed turn entry %s (delivery %d)", entry_id, times)
            out.append(_delivery(entry_id, fields, times))
        return out

    async def ack(self, delivery: Delivery) -> None:
        await self.redis.xack(self.turns_key, GROUP, delivery.entry_id)

    async def release(self, delivery: Delivery) -> None:
        """Leave the entry pending: once it has been idle for ``claim_idle_ms`` (this worker no
        longer touches it), a worker reclaims it. That idle time is the retry backoff."""

    async def touch(self, deliveries: Iterable[Delivery]) -> None:
        ids = [d.entry_id for d in deliveries]
        if ids:
            await self.redis.xclaim(
                self.turns_key, GROUP, self.consumer, min_idle_time=0, message_ids=ids, justid=True
            )

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        record = {
            **delivery.fields,
            "entry_id": delivery.entry_id,
            "deliveries": str(delivery.deliveries),
            "reason": reason,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_key, record, maxlen=self.maxlen, approximate=True)
            pipe.xack(self.turns_key, GROUP, delivery.entry_id)
            await pipe.execute()
        log.error("turn entry %s dead-lettered: %s", delivery.entry_id, reason)

    async def publish(self, gateway: str, delta: ReplyDelta) -> None:
        key = self.reply_prefix + gateway
        fields = encode(delta)
        if delta.seq:
            await self.redis.xadd(key, fields, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
            # Once a turn: a gateway that is gone for good leaves no stream behind for long.
            pipe.expire(key, REPLY_STREAM_TTL_S)
            await pipe.execute()

    # -- admin ---------------------------------------------------------------------------------

    async def status(self) -> QueueStatus:
        """The queue's figures, read in one MULTI so that they agree with each other. Creates
        nothing: a stream or group that does not exist yet reads as an empty queue."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xlen(self.turns_key)
                pipe.xlen(self.dead_key)
                pipe.xinfo_groups(self.turns_key)
                pipe.xpending(self.turns_key, GROUP)
                pipe.xpending_range(self.turns_key, GROUP, min="-", max="+", count=1)
                pipe.xinfo_consumers(self.turns_key, GROUP)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(
                f"cannot read the queue status from Redis at {_redacted(self.url)}: {exc}"
            ) from exc
        length, dead, groups, pending, oldest, consumers = (
            self._unless_missing(result) for result in results
        )
        group = next((g for g in groups or () if g["name"] == GROUP), None)
        if group is None or pending is None:
            # No worker has started: a worker creates the group at id 0, so all of it is lag.
            return QueueStatus(self.turns_key, length, dead, False, lag=length, entries_read=0)
        return QueueStatus(
            stream=self.turns_key,
            length=length,
            dead=dead,
            group_exists=True,
            pending=pending["pending"],
            lag=group.get("lag"),
            last_delivered_id=group.get("last-delivered-id"),
            entries_read=group.get("entries-read"),
            consumers=tuple(
                ConsumerStatus(c["name"], c["pending"], c["idle"], c.get("inactive"))
                for c in consumers or ()
            ),
            oldest_pending_id=oldest[0]["message_id"] if oldest else None,
            oldest_pending_idle_ms=oldest[0]["time_since_delivered"] if oldest else None,
        )

    def _unless_missing(self, result: Any) -> Any:
        """A reply from a MULTI: None where the stream or group does not exist, else as it is."""
        if not isinstance(result, Exception):
            return result
        if isinstance(result, ResponseError) and (
            "NOGROUP" in str(result) or "no such key" in str(result)
        ):
            return None
        raise QueueUnavailable(
            f"Redis at {_redacted(self.url)} refused the status read: {result}"
        ) from result

    async def retry_dead(self, *, limit: int | None = None) -> int:
        """Move dead-lettered turns back onto the turns stream, oldest first, at most ``limit``;
        returns how many moved. Each goes back as a new entry (delivery count 1, a fresh
        ``enqueued_at``, the same ``turn_id``), and leaves the dead-letter stream only once it is
        queued: a crash in between leaves a duplicate, which the worker answers once, never a
        lost turn. Entries the worker cannot decode stay where they are. Turns dead-lettered
        while this runs are left for the next call, so a failing worker cannot keep it going."""
        try:
            return await self._retry_dead(limit)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(
                f"cannot re-queue dead-lettered turns on Redis at {_redacted(self.url)}: {exc}"
            ) from exc

    async def _retry_dead(self, limit: int | None) -> int:
        newest = await self.redis.xrevrange(self.dead_key, count=1)
        if not newest:
            return 0
        end, start, moved = newest[0][0], "-", 0
        while limit is None or moved < limit:
            want = RETRY_BATCH if limit is None else min(RETRY_BATCH, limit - moved)
            entries = await self.redis.xrange(self.dead_key, min=start, max=end, count=want)
            if not entries:
                break
            start = "(" + entries[-1][0]
            batch = [
                (entry_id, requeued)
                for entry_id, fields in entries
                if (requeued := _requeue_fields(entry_id, fields)) is not None
            ]
            if not batch:
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                for _entry_id, requeued in batch:
                    pipe.xadd(self.turns_key, requeued, maxlen=self.maxlen, approximate=True)
                await pipe.execute()
            await self.redis.xdel(self.dead_key, *(entry_id for entry_id, _ in batch))
            moved += len(batch)
        if moved:
            log.info("re-queued %d dead-lettered turns on %s", moved, self.turns_key)
        return moved


def _delivery(entry_id: str, fields: dict[str, Any], deliveries: int) -> Delivery:
    try:
        turn: Turn | None = decode(Turn, fields)
    except ValueError:
        log.exception("undecodable turn entry %s", entry_id)
        turn = None
    return Delivery(entry_id, turn, deliveries, dict(fields))


def _requeue_fields(entry_id: str, fields: dict[str, str]) -> dict[str, str] | None:
    """A dead-letter record as the fields of a fresh turn entry, or None when the worker could not
    decode it (it would only be dead-lettered again)."""
    try:
        data = json.loads(fields.get("d", "null"))
        if isinstance(data, dict):
            decode(Turn, fields)  # what the worker will make of it
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("dead-letter entry %s is not a turn; left in the dead-letter stream", entry_id)
        return None
    data["enqueued_at"] = time.time()  # so the reply's latency counts from the retry
    turn = {k: v for k, v in fields.items() if k not in _DEAD_LETTER_FIELDS}
    turn["d"] = json.dumps(data, ensure_ascii=False)
    return turn


def _redacted(url: str) -> str:
    """``url`` without its password, fit for a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + host).geturl()


def make_queue(redis_url: str | None, *, consumer: str, **redis_options: Any) -> TurnQueue:
    """A Redis queue when a URL is configured, else the embedded in-memory one."""
    if redis_url is None:
        return LocalQueue()
    return RedisQueue(redis_url, consumer=consumer, **redis_options)
