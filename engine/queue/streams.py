"""``RedisQueue``: the turn queue on Redis Streams, for gateways and workers in processes of their
own. The semantics are in the package's docstring."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import date
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import parse_url
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frontdesk.backoff import Backoff
from frontdesk.errors import QueueUnavailable
from frontdesk.secrets import hide_password
from frontdesk.wire import ReplyDelta, Turn, decode, dumps, encode

from .admin import QueueAdmin
from .base import GROUP, Delivery, Fields, Streams, delivery_of
from .coalesce import Coalescer
from .packing import packed_by_hiredis

log = logging.getLogger(__name__)
T = TypeVar("T")

REPLY_STREAM_MAXLEN = 10_000
REPLY_STREAM_TTL_S = 24 * 3600
EXPIRY_REFRESH_S = 60.0
POOL_SIZE = 32  # Redis connections per process
PUBLISH_FOR_S = 30.0  # how long a reply delta is retried while Redis is unreachable

# Queue a message's turn unless one is live: its entry (named in the live hash) is still in the
# stream, or, for a sweep (ARGV[3] = "1"), a worker holds its conversation's lease. A trimmed or
# flushed entry is not live. With KEYS[4] (a gateway's delivery records), first write the
# gateway's record ARGV[5] of turn ARGV[4], and when ARGV[6] is not 0 set the records' expiry
# to ARGV[6] seconds, whether or not the turn is queued. The entry's fields follow from ARGV[7].
# Returns the new entry id, or nil.
_SUBMIT = """
if KEYS[4] then
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
  if ARGV[6] ~= '0' then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
end
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and #redis.call('XRANGE', KEYS[1], current, current) > 0 then return false end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 7))
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
"""
# Ack an entry only while this consumer holds it (a reclaimed entry is another's to ack), and
# forget the live turn of its message. With KEYS[3] (a conversation's lease), also release the
# lease if this consumer holds it, whatever the ack found. With KEYS[4] (a gateway's reply
# stream), first append the turn's last reply delta to it (its fields from ARGV[7]; the stream
# trimmed to about ARGV[5] entries, and its expiry set to ARGV[6] seconds when that is not 0):
# what fails there fails the whole command, unacked. Returns 1 when acked.
_ACK = """
if KEYS[4] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 7))
  if ARGV[6] ~= '0' then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
end
local acked = 0
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #held == 1 and held[1][2] == ARGV[2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  if redis.call('HGET', KEYS[2], ARGV[4]) == ARGV[3] then redis.call('HDEL', KEYS[2], ARGV[4]) end
  acked = 1
end
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
return acked
"""
# The heartbeat: reset the idle time of the entries this consumer still holds, and name the
# ones it lost (reclaimed by another consumer, or gone with a flushed stream).
_TOUCH = """
local lost = {}
for i = 3, #ARGV do
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #held == 1 and held[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
# Leases (SET NX PX, renewed by the owner, released only by it): a conversation's, so that one
# worker at a time answers it, and a gateway id's, so that one process at a time serves it.
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif owner or not redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    table.insert(lost, key)
  end
end
return lost
"""
# A gateway's reply shown: forget its delivery record (KEYS[1], ARGV[1]) and, with KEYS[2], save
# how far the gateway has read its reply stream (ARGV[2], kept ARGV[3] seconds).
_UNTRACK = """
redis.call('HDEL', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the gateway's lease, its delivery records, then the ":ids" set of each platform.
# A gateway that is gone (no lease) and left no reply in progress leaves the sets.
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 3, #KEYS do redis.call('SREM', KEYS[i], ARGV[1]) end
return 1
"""

# A role only one process plays at a time (KEYS[1], a hash: owner and fencing token), taken or
# renewed by owner ARGV[1] for ARGV[2] ms. A new holder gets the next number of KEYS[2], so a
# later holder's token is always the larger. Returns the holder's token, or 0 when another holds
# the role.
_HOLD_ROLE = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'token')
if held[1] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(held[2])
end
if held[1] then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token
"""
_LET_ROLE_GO = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A token bucket (KEYS[1], a hash) holding at most ARGV[1] tokens, refilled at ARGV[2] a
# millisecond, on Redis's clock: takes a token and returns 0, or returns how many milliseconds
# until one is there (taking none). One round trip, whichever process asks.
_TAKE = """
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local burst, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
"""

# The next free moment of a call to several places (each KEYS[i] a hash: a Telegram chat, then
# the whole bot; a Slack channel's posts), shared by every gateway, reserved for caller ARGV[1]. At
# place i the next is ARGV[2i] ms later, ARGV[2i+1] ms more when another caller takes it (one
# gateway's call may travel faster than another's). Places are taken in order; when one that is
# not the last is free only later, it alone and those before it are reserved, and the caller asks
# for the rest at that moment: the bot's one pointer reserved seconds ahead (a group chat's turn)
# would hold up every other chat until then. Returns {ms to wait, places reserved}. Redis's clock.
_SLOT = """
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local at, taken = now, #KEYS
for i, key in ipairs(KEYS) do
  local held = redis.call('HMGET', key, 'next', 'by')
  local free = tonumber(held[1]) or 0
  if held[2] and held[2] ~= ARGV[1] then free = free + tonumber(ARGV[2 * i + 1]) end
  at = math.max(at, free)
  if at > now and i < #KEYS then
    taken = i
    break
  end
end
for i = 1, taken do
  local gap = tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 'next', at + gap, 'by', ARGV[1])
  redis.call('PEXPIRE', KEYS[i], at + gap - now + 1000)
end
return {at - now, taken}
"""


# A budget of ARGV[1] calls in any ARGV[2] ms (Slack's Tier 3 chat.update), shared by every
# gateway: KEYS[1] a sorted set of the calls granted in the window (score: ms), KEYS[2] a hash of
# each owner's calls still owed ("<count>:<ms it holds until>") and 'held', the ms every call
# waits for after a 429. Owner ARGV[3] owes ARGV[4] final calls; ARGV[5] is 'final' for a final
# call, granted while there is room; 'interim' for one granted only while the room left covers
# what every owner owes; 'owed' to only say what it owes. Returns 0 (granted, counted as
# ARGV[6]), the ms to wait (a final call), or -1 (an interim call refused).
_BUDGET = """
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4] .. ':' .. (now + window))
local result
local held = tonumber(redis.call('HGET', KEYS[2], 'held') or '0')
local room = limit - redis.call('ZCARD', KEYS[1])
if ARGV[5] == 'owed' then
  result = 1
elseif ARGV[5] == 'final' then
  if held > now then
    result = held - now
  elseif room > 0 then
    result = 0
  else
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    result = math.max(1, tonumber(oldest[2]) + window - now)
  end
else
  local owed = 0
  local owners = redis.call('HGETALL', KEYS[2])
  for i = 1, #owners, 2 do
    if owners[i] ~= 'held' then
      local count, fresh = string.match(owners[i + 1], '(%d+):(%d+)')
      if tonumber(fresh) < now then
        redis.call('HDEL', KEYS[2], owners[i])
      else
        owed = owed + tonumber(count)
      end
    end
  end
  result = -1
  if held <= now and room > owed then result = 0 end
end
if result == 0 then redis.call('ZADD', KEYS[1], now, ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], 2 * window)
return result
"""
_BUDGET_HOLD = """
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
if now + tonumber(ARGV[1]) > held then redis.call('HSET', KEYS[1], 'held', now + ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), tonumber(ARGV[1])))
return 0
"""


@contextlib.asynccontextmanager
async def _unavailable(doing: str) -> AsyncIterator[None]:
    """Redis errors as QueueUnavailable, which every caller handles."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot {doing} on Redis: {exc}") from exc


class RedisQueue(QueueAdmin):
    """Redis Streams queue; see the package docstring for the semantics."""

    shared_by_workers = True  # workers in other processes take turns of the same conversations

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
        self.live_key = f"{prefix}:turns:live"  # a hash: stored message id -> its turn's entry
        self.lease_prefix = f"{prefix}:lease:"  # conversation id (or gateway:<id>) -> owner
        self.deliveries_prefix = f"{prefix}:deliveries:"  # a hash a gateway: turn id -> record
        self.cursor_prefix = f"{prefix}:replies-read:"  # how far a gateway read its replies
        self.limit_prefix = f"{prefix}:limit:"  # token buckets: admission's per-user rates
        self.admission_key = f"{prefix}:admission"  # a hash: refusal reason -> messages refused
        self.budget_prefix = f"{prefix}:tokens:"  # <UTC day>:<platform:user> -> tokens spent
        self.maxlen = maxlen
        self.claim_idle_ms = claim_idle_ms
        # A bounded pool, opened in full at start: a burst of commands then waits a moment for a
        # free connection instead of opening (and handshaking) new ones on its way to the user.
        # (a connection class of the URL's kind: TCP, TLS or a Unix socket)
        connection_class = parse_url(url).get("connection_class", aioredis.Connection)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            connection_class=packed_by_hiredis(connection_class),
            max_connections=POOL_SIZE,
            timeout=20,
            decode_responses=True,
            health_check_interval=30,
            socket_connect_timeout=5,
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._submit = self.redis.register_script(_SUBMIT)
        self._ack = self.redis.register_script(_ACK)
        self._touch = self.redis.register_script(_TOUCH)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._untrack = self.redis.register_script(_UNTRACK)
        self._forget = self.redis.register_script(_FORGET)
        self._take = self.redis.register_script(_TAKE)
        self._slot = self.redis.register_script(_SLOT)
        self._hold_role = self.redis.register_script(_HOLD_ROLE)
        self._budget = self.redis.register_script(_BUDGET)
        self._budget_hold = self.redis.register_script(_BUDGET_HOLD)
        self._budget_calls = itertools.count()
        self._let_role_go = self.redis.register_script(_LET_ROLE_GO)
        # the hot-path commands of every turn in flight (deltas, acks, leases, records), batched
        self._together = Coalescer(self.redis)
        self._expiring: dict[str, float] = {}  # key -> when its expiry is next set again
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

    async def submit(
        self,
        turn: Turn,
        *,
        sweep: bool = False,
        tracked: tuple[str, dict[str, Any]] | None = None,
    ) -> bool:
        """Queue ``turn`` unless its message has a live turn already (then False). A ``sweep``
        also leaves alone a message whose conversation a worker is answering. ``tracked``
        (gateway, record): the gateway's delivery record of the turn, written first, by the
        same command (so it is there before any worker can take the turn)."""
        fields = [part for pair in encode(turn).items() for part in pair]
        keys = [self.turns_key, self.live_key, self.lease_prefix + str(turn.conversation_id)]
        args: list[str | int] = [turn.message_id, self.maxlen, "1" if sweep else "0"]
        if tracked is None:
            args += ["", "", 0]
        else:
            gateway, record = tracked
            keys.append(self.deliveries_prefix + gateway)
            expire = REPLY_STREAM_TTL_S if self._expiry_due(keys[-1]) else 0
            args += [turn.turn_id, dumps(record), expire]
        args += fields
        try:
            result = await self._script_together(self._submit, keys, args)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot queue the turn on Redis: {exc}") from exc
        return result is not None

    async def replies(self, gateway: str, after: str) -> AsyncIterator[tuple[str, ReplyDelta]]:
        """Every delta on the gateway's reply stream after entry ``after``, in order, with its
        entry id, for as long as it is iterated. Survives Redis outages by retrying."""
        key = self.reply_prefix + gateway
        backoff = Backoff()
        last_id = after
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
                        delta = decode(ReplyDelta, fields)
                    except ValueError:
                        log.exception("undecodable reply delta %s on %s", entry_id, key)
                        continue
                    yield entry_id, delta

    async def reply_head(self, gateway: str) -> str:
        """The id of the newest entry on the gateway's reply stream ("0-0" when it has none)."""
        try:
            newest = await self.redis.xrevrange(self.reply_prefix + gateway, count=1)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot read the reply stream on Redis: {exc}") from exc
        return str(newest[0][0]) if newest else "0-0"

    # A gateway's replies in progress, so that a restart of it, or another gateway running the
    # same channel, finishes them: a record per turn (where the reply goes, the platform messages
    # posted for it), and how far the gateway has read its reply stream.

    async def track(self, gateway: str, turn_id: str, record: dict[str, Any]) -> None:
        """Write the gateway's delivery record of a turn (and now and then its hash's expiry)."""
        key = self.deliveries_prefix + gateway
        value = dumps(record)
        expire = self._expiry_due(key)

        def recorded(pipe: Pipeline) -> None:
            pipe.hset(key, turn_id, value)
            if expire:
                pipe.expire(key, REPLY_STREAM_TTL_S)

        try:
            await self._together.run(recorded)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot record the delivery on Redis: {exc}") from exc

    async def untrack(self, gateway: str, turn_id: str, *, cursor: str | None = None) -> None:
        """Forget the gateway's delivery record of a turn; ``cursor``: also save how far the
        gateway has read its reply stream (``save_cursor``), in the same command."""
        keys = [self.deliveries_prefix + gateway]
        args: list[str | int] = [turn_id]
        if cursor is not None:
            keys.append(self.cursor_prefix + gateway)
            args += [cursor, REPLY_STREAM_TTL_S]
        async with _unavailable("forget the delivery"):
            await self._script_together(self._untrack, keys, args)

    async def tracked(self, gateway: str) -> dict[str, dict[str, Any]]:
        async with _unavailable("read the deliveries"):
            raw = await self.redis.hgetall(self.deliveries_prefix + gateway)
        records: dict[str, dict[str, Any]] = {}
        for turn_id, value in raw.items():
            try:
                records[str(turn_id)] = json.loads(value)
            except ValueError:
                log.warning("unreadable delivery record of turn %s on %s", turn_id, gateway)
        return records

    async def save_cursor(self, gateway: str, entry_id: str) -> None:
        key = self.cursor_prefix + gateway
        async with _unavailable("save the reply cursor"):
            await self._together.run(lambda pipe: pipe.set(key, entry_id, ex=REPLY_STREAM_TTL_S))

    async def cursor(self, gateway: str) -> str | None:
        async with _unavailable("read the reply cursor"):
            found = await self.redis.get(self.cursor_prefix + gateway)
        return str(found) if found else None

    async def hold_gateway(self, gateway: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the lease on serving gateway id ``gateway`` (its reply stream and
        records); False while another process holds it."""
        key = self.lease_prefix + "gateway:" + gateway
        async with _unavailable("hold the gateway id"):
            return not await self._renew(keys=[key], args=[owner, ttl_ms])

    async def let_gateway_go(self, gateway: str, owner: str) -> None:
        async with _unavailable("release the gateway id"):
            await self._release(keys=[self.lease_prefix + "gateway:" + gateway], args=[owner])

    async def hold_role(self, role: str, owner: str, ttl_ms: int) -> int:
        """Take or renew ``role`` (e.g. the one Telegram poller of a bot) for ``owner``: its
        fencing token, larger than any earlier holder's, or 0 while another process holds it.
        Held ``ttl_ms`` past the last call."""
        key = self.lease_prefix + "role:" + role
        async with _unavailable("hold a role"):
            token = await self._hold_role(keys=[key, key + ":fence"], args=[owner, ttl_ms])
        return int(token)

    async def let_role_go(self, role: str, owner: str) -> None:
        async with _unavailable("let a role go"):
            await self._let_role_go(keys=[self.lease_prefix + "role:" + role], args=[owner])

    async def gateway_alive(self, gateway: str) -> bool:
        """Whether a process serves gateway id ``gateway`` now (its lease is held)."""
        async with _unavailable("look up the gateway"):
            return bool(await self.redis.exists(self.lease_prefix + "gateway:" + gateway))

    async def gateway_ids(self, platform: str) -> set[str]:
        """Every gateway id that has run ``platform`` (for taking over the replies of one that
        is gone)."""
        async with _unavailable("list the gateways"):
            found = await self.redis.smembers(self.gateways_prefix + platform + ":ids")
        return {str(g) for g in found}

    async def forget_gateway(self, gateway: str, platforms: Iterable[str]) -> bool:
        """Drop ``gateway`` from the gateways that ran ``platforms``, if it is gone and left no
        reply in progress (in one step: one that starts meanwhile keeps its place)."""
        keys = [self.lease_prefix + "gateway:" + gateway, self.deliveries_prefix + gateway]
        keys += [self.gateways_prefix + platform + ":ids" for platform in platforms]
        async with _unavailable("forget a gateway"):
            return bool(await self._forget(keys=keys, args=[gateway]))

    async def announce(self, gateway: str, platforms: Iterable[str], ttl_s: float) -> None:
        """Say that ``gateway`` runs these channels, until ``ttl_s`` from now."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for platform in platforms:
                key = self.gateways_prefix + platform
                pipe.zadd(key, {gateway: now + ttl_s})
                pipe.zremrangebyscore(key, "-inf", now)  # gateways that went silent
                pipe.sadd(key + ":ids", gateway)
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

    async def ack(
        self,
        delivery: Delivery,
        *,
        unlease: int | None = None,
        final: tuple[str, ReplyDelta] | None = None,
    ) -> bool:
        """Ack the entry if this consumer still holds it; False when another one took it over.
        ``unlease``: also release this consumer's lease of that conversation, in the same
        command (the two are independent: the script releases it whatever the ack found).
        ``final`` (gateway, delta): the turn's last reply delta, published first by the same
        command (with ``unlease``), so that a turn's end is one round trip to Redis, not two;
        the entry stays unacked when the delta cannot be appended, and while Redis is
        unreachable the command is tried again as ``publish`` tries a delta."""
        if final is not None and unlease is None:
            await self.publish(*final)
            final = None
        message = delivery.turn.message_id if delivery.turn is not None else ""
        keys = [self.turns_key, self.live_key]
        if unlease is not None:
            keys.append(self.lease_prefix + str(unlease))
        args: list[str | int] = [GROUP, self.consumer, delivery.entry_id, message]
        if final is None:
            return bool(await self._script_together(self._ack, keys, args))
        gateway, delta = final
        stream = self.reply_prefix + gateway
        expire = REPLY_STREAM_TTL_S if not delta.seq and self._expiry_due(stream) else 0
        args += [REPLY_STREAM_MAXLEN, expire]
        args += [part for pair in encode(delta).items() for part in pair]
        keys.append(stream)
        return bool(
            await self._until_sent(stream, lambda: self._script_together(self._ack, keys, args))
        )

    async def _script_together(
        self, script: AsyncScript, keys: list[str], args: list[str | int]
    ) -> Any:
        """Run ``script`` in the next batch of commands; alone when Redis does not have it
        loaded (it was restarted), which loads it."""
        try:
            [result] = await self._together.run(
                lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args)
            )
        except NoScriptError:
            result = await script(keys=keys, args=args)
        return result

    async def release(self, delivery: Delivery) -> None:
        """Leave the entry pending: once it has been idle for ``claim_idle_ms`` (this worker no
        longer touches it), a worker reclaims it. That idle time is the retry backoff."""

    async def postpone(self, delivery: Delivery) -> None:
        """Like ``release``, but this delivery does not count toward the dead letters: the turn
        waits for something outside it (the database)."""
        await self._keep_pending(delivery, retrycount=max(delivery.deliveries - 1, 0))

    async def hand_back(self, delivery: Delivery) -> None:
        """Give an entry back for another worker to take now (a worker shutting down): it is
        marked idle for the whole claim timeout, so the next reclaim takes it."""
        await self._keep_pending(delivery, idle=self.claim_idle_ms)

    async def _keep_pending(
        self, delivery: Delivery, *, idle: int | None = None, retrycount: int | None = None
    ) -> None:
        """XCLAIM the entry to this consumer again, setting its idle time or delivery count."""
        await self.redis.xclaim(
            self.turns_key,
            GROUP,
            self.consumer,
            min_idle_time=0,
            message_ids=[delivery.entry_id],
            idle=idle,
            retrycount=retrycount,
            justid=True,
        )

    async def touch(self, deliveries: Iterable[Delivery]) -> set[str]:
        """Keep the entries this consumer holds from being reclaimed; returns those it lost."""
        ids = [d.entry_id for d in deliveries]
        if not ids:
            return set()
        lost = await self._touch(keys=[self.turns_key], args=[GROUP, self.consumer, *ids])
        return set(lost)

    async def take(self, key: str, count: int, per_s: float) -> float:
        """A token from bucket ``key`` (``count`` tokens, refilled over ``per_s`` seconds), shared
        by every process: 0 when taken, else the seconds until one is there."""
        async with _unavailable("count a rate"):
            wait_ms = await self._take(keys=[self.limit_prefix + key],
                                       args=[count, count / (per_s * 1000)])  # fmt: skip
        return int(wait_ms) / 1000

    async def slot(self, places: Sequence[tuple[str, float, float]], owner: str) -> float:
        """Reserve for ``owner`` (a gateway) the first moment free at every place of ``places``
        ((place, gap, margin): the next call there may come ``gap`` seconds after this one,
        ``margin`` more when another owner reserved the one before): the seconds to wait for
        it. One round trip, unless an earlier place is free only later: then this waits for
        that moment and reserves the rest then (see ``_SLOT``)."""
        left = list(places)
        while True:
            args: list[str | int] = [owner]
            for _place, gap_s, margin_s in left:
                args += [math.ceil(gap_s * 1000), math.ceil(margin_s * 1000)]
            keys = [self.limit_prefix + place for place, _gap, _margin in left]
            async with _unavailable("reserve a slot"):
                wait_ms, taken = await self._slot(keys=keys, args=args)
            left = left[int(taken) :]
            if not left:
                return int(wait_ms) / 1000
            await asyncio.sleep(int(wait_ms) / 1000)

    async def budget(
        self, place: str, limit: int, window_s: float, owner: str, owed: int, *, kind: str
    ) -> float | None:
        """A call of ``place``'s budget (``limit`` in any ``window_s``), shared by every
        gateway, whose ``owner`` owes ``owed`` final calls. ``kind`` "final": 0 when granted,
        else the seconds until there is room; "interim": 0, or None when refused (the room is
        kept for the finals every owner owes); "owed": only says what ``owner`` owes."""
        keys = [self.limit_prefix + place, self.limit_prefix + place + ":owed"]
        call = f"{owner}:{next(self._budget_calls)}"
        args: list[str | int] = [limit, math.ceil(window_s * 1000), owner, owed, kind, call]
        async with _unavailable("take from a budget"):
            wait_ms = int(await self._budget(keys=keys, args=args))
        return None if wait_ms < 0 else wait_ms / 1000

    async def hold_budget(self, place: str, seconds: float, window_s: float) -> None:
        """Every call of ``place``'s budget waits ``seconds`` (the platform answered a 429)."""
        args = [math.ceil(seconds * 1000), math.ceil(2 * window_s * 1000)]
        async with _unavailable("hold a budget"):
            await self._budget_hold(keys=[self.limit_prefix + place + ":owed"], args=args)

    async def note_refusal(self, reason: str) -> None:
        """Count a message admission control refused (``queue status`` shows the counts)."""
        async with _unavailable("count a refusal"):
            await self.redis.hincrby(self.admission_key, reason, 1)

    async def spend_tokens(self, user: str, day: date, tokens: int) -> None:
        """Count ``tokens`` against ``user``'s budget of ``day`` (UTC), kept two days."""
        key = f"{self.budget_prefix}{day.isoformat()}:{user}"
        async with _unavailable("count tokens"), self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, tokens)
            pipe.expire(key, 2 * 86_400)
            await pipe.execute()

    async def tokens_spent(self, user: str, day: date) -> int:
        async with _unavailable("read a token budget"):
            spent = await self.redis.get(f"{self.budget_prefix}{day.isoformat()}:{user}")
        return int(spent or 0)

    async def backlog(self) -> int:
        """Turns queued that no worker has taken yet (the group's lag)."""
        async with _unavailable("read the backlog"):
            try:
                groups = await self.redis.xinfo_groups(self.turns_key)
            except ResponseError:  # no stream yet
                return 0
            group = next((g for g in groups if g["name"] == GROUP), None)
            if group is None:  # no worker has started: all of it waits
                return int(await self.redis.xlen(self.turns_key))
        lag = group.get("lag")
        return int(lag) if lag is not None else 0

    async def lease(self, conversation_id: int, ttl_ms: int) -> bool:
        """Take the conversation's lease (one worker answers it at a time) unless another holds
        it. Held until ``unlease``, or ``ttl_ms`` past the last ``renew``."""
        key = self.lease_prefix + str(conversation_id)
        [taken] = await self._together.run(
            lambda pipe: pipe.set(key, self.consumer, nx=True, px=ttl_ms)
        )
        return bool(taken)

    async def renew(self, conversation_ids: Iterable[int], ttl_ms: int) -> set[int]:
        """Extend this consumer's leases; returns the conversations whose lease another took."""
        keys = [self.lease_prefix + str(c) for c in conversation_ids]
        if not keys:
            return set()
        lost = await self._renew(keys=keys, args=[self.consumer, ttl_ms])
        return {int(key.removeprefix(self.lease_prefix)) for key in lost}

    async def unlease(self, conversation_id: int) -> None:
        keys = [self.lease_prefix + str(conversation_id)]
        await self._script_together(self._release, keys, [self.consumer])

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
            if delivery.turn is not None:
                pipe.hdel(self.live_key, str(delivery.turn.message_id))
            await pipe.execute()
        log.error("turn entry %s dead-lettered: %s", delivery.entry_id, reason)

    def _expiry_due(self, key: str) -> bool:
        """Whether to set ``key``'s day-long expiry again now: at most once a minute for each
        key (a gateway that is gone for good leaves its stream and records for a day at most,
        give or take that minute), rather than with every turn."""
        now = time.monotonic()
        if self._expiring.get(key, float("-inf")) > now:
            return False
        self._expiring[key] = now + EXPIRY_REFRESH_S
        return True

    def _append(self, pipe: Pipeline, key: str, fields: Fields, seq: int) -> None:
        pipe.xadd(key, fields, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
        if not seq and self._expiry_due(key):
            pipe.expire(key, REPLY_STREAM_TTL_S)

    async def publish(self, gateway: str, delta: ReplyDelta) -> None:
        """Append a delta to the gateway's reply stream. While Redis is unreachable (a restart)
        it tries again, for up to ``PUBLISH_FOR_S``: the reply goes on where it was, rather than
        end in an apology."""
        key = self.reply_prefix + gateway
        fields = cast(Fields, encode(delta))
        await self._until_sent(
            key, lambda: self._together.run(lambda pipe: self._append(pipe, key, fields, delta.seq))
        )

    async def _until_sent(self, key: str, send: Callable[[], Awaitable[T]]) -> T:
        """``send()`` (a reply's delta, to stream ``key``), tried again while Redis is
        unreachable (a restart), for up to ``PUBLISH_FOR_S``."""
        backoff = Backoff(first_s=0.1, cap_s=2.0)
        deadline = time.monotonic() + PUBLISH_FOR_S
        while True:
            try:
                return await send()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise QueueUnavailable(f"cannot send the reply on Redis: {exc}") from exc
                log.warning("reply stream %s: Redis unreachable (%s); retrying", key, exc)
                await backoff.wait()
