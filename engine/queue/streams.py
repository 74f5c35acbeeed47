"""``RedisQueue``: the turn queue on Redis Streams, for gateways and workers in processes of their
own. The semantics are in the package's docstring."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frontdesk.backoff import Backoff
from frontdesk.errors import QueueUnavailable
from frontdesk.secrets import hide_password
from frontdesk.wire import ReplyDelta, Turn, decode, encode

from .admin import QueueAdmin
from .base import GROUP, Delivery, Fields, Streams, delivery_of

log = logging.getLogger(__name__)

REPLY_STREAM_MAXLEN = 10_000
REPLY_STREAM_TTL_S = 24 * 3600
POOL_SIZE = 32  # Redis connections per process


class RedisQueue(QueueAdmin):
    """Redis Streams queue; see the package docstring for the semantics."""

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
        self.gateways_prefix = f"{prefix}:gateways:"  # a sorted set a platform: gateway -> expiry
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
            raise QueueUnavailable(
                f"Redis at {hide_password(self.url)} refused the setup: {exc}"
            ) from exc
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(
                f"cannot reach Redis at {hide_password(self.url)}: {exc}"
            ) from exc

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
            fields = cast(Fields, encode(turn))
            await self.redis.xadd(self.turns_key, fields, maxlen=self.maxlen, approximate=True)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot queue the turn on Redis: {exc}") from exc

    async def replies(self, gateway: str) -> AsyncIterator[ReplyDelta]:
        """Every delta on this gateway's reply stream, in order, for as long as it is iterated.
        Reads from the start: gateway ids are unique per process, so the stream holds only its own
        turns. Survives Redis outages by retrying."""
        key = self.reply_prefix + gateway
        last_id = "0-0"
        backoff = Backoff()
        while True:
            try:
                read = await self.redis.xread({key: last_id}, count=500, block=1000)
                result = cast(Streams, read)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("reply stream %s: Redis unreachable (%s); retrying", key, exc)
                await backoff.wait()
                continue
            backoff.reset()
            for _key, entries in result or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    try:
                        yield decode(ReplyDelta, fields)
                    except ValueError:
                        log.exception("undecodable reply delta %s on %s", entry_id, key)

    async def announce(self, gateway: str, platforms: Iterable[str], ttl_s: float) -> None:
        """Say that ``gateway`` runs these channels, until ``ttl_s`` from now."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for platform in platforms:
                key = self.gateways_prefix + platform
                pipe.zadd(key, {gateway: now + ttl_s})
                pipe.zremrangebyscore(key, "-inf", now)  # gateways that went silent
            await pipe.execute()

    async def withdraw(self, gateway: str, platforms: Iterable[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for platform in platforms:
                pipe.zrem(self.gateways_prefix + platform, gateway)
            await pipe.execute()

    async def gateway_for(self, platform: str) -> str | None:
        """The live gateway running ``platform`` heard from last, if any."""
        key = self.gateways_prefix + platform
        found = await self.redis.zrevrangebyscore(key, "+inf", time.time(), start=0, num=1)
        return str(found[0]) if found else None

    async def cancel(self, turn_id: str) -> None:
        try:
            await self.redis.publish(self.cancel_channel, turn_id)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot send the cancel on Redis: {exc}") from exc

    # -- worker side ---------------------------------------------------------------------------

    async def cancellations(self) -> AsyncIterator[str]:
        """Turn ids to stop, from Redis pub/sub; resubscribes after a Redis outage."""
        backoff = Backoff()
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.cancel_channel)
                backoff.reset()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        yield message["data"]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("cancel channel: Redis unreachable (%s); retrying", exc)
                await backoff.wait()
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
        for _key, entries in cast(Streams, result) or ():
            for entry_id, fields in entries:
                deliveries.append(delivery_of(entry_id, fields, 1))
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
            out.append(delivery_of(entry_id, fields, times))
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
                self.turns_key,
                GROUP,
                self.consumer,
                min_idle_time=0,
                message_ids=cast(list[Any], ids),
                justid=True,
            )

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        record = {
            **delivery.fields,
            "entry_id": delivery.entry_id,
            "deliveries": str(delivery.deliveries),
            "reason": reason,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_key, cast(Fields, record), maxlen=self.maxlen, approximate=True)
            pipe.xack(self.turns_key, GROUP, delivery.entry_id)
            await pipe.execute()
        log.error("turn entry %s dead-lettered: %s", delivery.entry_id, reason)

    async def publish(self, gateway: str, delta: ReplyDelta) -> None:
        key = self.reply_prefix + gateway
        fields = cast(Fields, encode(delta))
        if delta.seq:
            await self.redis.xadd(key, fields, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
            # Once a turn: a gateway that is gone for good leaves no stream behind for long.
            pipe.expire(key, REPLY_STREAM_TTL_S)
            await pipe.execute()
