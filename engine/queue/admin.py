"""What the admin CLI asks of the Redis queue: ``status`` (what is queued, pending and dead) and
``retry_dead`` (dead-lettered turns back onto the turns stream). ``RedisQueue`` takes these from
``QueueAdmin``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from frontdesk.errors import QueueUnavailable
from frontdesk.secrets import hide_password
from frontdesk.wire import Turn, decode

from .base import GROUP, Entries, Fields

log = logging.getLogger(__name__)

RETRY_BATCH = 100  # dead letters moved per round trip by ``retry_dead``
# What ``dead_letter`` adds to a turn's own fields; ``retry_dead`` strips it again.
DEAD_LETTER_FIELDS = frozenset({"entry_id", "deliveries", "reason"})


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
    # messages admission control refused, by every gateway: over a user's rate, backlog full,
    # a user's daily tokens spent
    refused_rate: int = 0
    refused_busy: int = 0
    refused_budget: int = 0


class QueueAdmin:
    """The admin side of ``RedisQueue``."""

    url: str
    redis: aioredis.Redis
    turns_key: str
    dead_key: str
    admission_key: str
    maxlen: int

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
                pipe.hgetall(self.admission_key)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(
                f"cannot read the queue status from Redis at {hide_password(self.url)}: {exc}"
            ) from exc
        length, dead, groups, pending, oldest, consumers, refused = (
            self._unless_missing(result) for result in results
        )
        refused = refused if isinstance(refused, dict) else {}
        rate, busy, budget = (int(refused.get(k, 0)) for k in ("rate", "busy", "budget"))
        group = next((g for g in groups or () if g["name"] == GROUP), None)
        if group is None or pending is None:
            # No worker has started: a worker creates the group at id 0, so all of it is lag.
            return QueueStatus(self.turns_key, length, dead, False, lag=length, entries_read=0,
                               refused_rate=rate, refused_busy=busy,
                               refused_budget=budget)  # fmt: skip
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
            refused_rate=rate,
            refused_busy=busy,
            refused_budget=budget,
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
            f"Redis at {hide_password(self.url)} refused the status read: {result}"
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
                f"cannot re-queue dead-lettered turns on Redis at {hide_password(self.url)}: {exc}"
            ) from exc

    async def _retry_dead(self, limit: int | None) -> int:
        newest = cast(Entries, await self.redis.xrevrange(self.dead_key, count=1))
        if not newest:
            return 0
        end, start, moved = newest[0][0], "-", 0
        while limit is None or moved < limit:
            want = RETRY_BATCH if limit is None else min(RETRY_BATCH, limit - moved)
            entries = cast(
                Entries, await self.redis.xrange(self.dead_key, min=start, max=end, count=want)
            )
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
                    fields = cast(Fields, requeued)
                    pipe.xadd(self.turns_key, fields, maxlen=self.maxlen, approximate=True)
                await pipe.execute()
            await self.redis.xdel(self.dead_key, *(entry_id for entry_id, _ in batch))
            moved += len(batch)
        if moved:
            log.info("re-queued %d dead-lettered turns on %s", moved, self.turns_key)
        return moved


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
    # its gateway may be gone: the reply goes to one running its channel, as this revival
    data["revived"] = int(data.get("revived") or 0) + 1
    turn = {k: v for k, v in fields.items() if k not in DEAD_LETTER_FIELDS}
    turn["d"] = json.dumps(data, ensure_ascii=False)
    return turn
