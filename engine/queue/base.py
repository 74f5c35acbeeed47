"""What both queues share: a ``Delivery``, the ``TurnQueue`` protocol the gateway and the worker
use, and the consumer group's name. The semantics are in the package's docstring."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from frontdesk.wire import ReplyDelta, Turn, decode

log = logging.getLogger(__name__)

GROUP = "workers"

# redis-py types what goes into and comes out of a stream as bytes or str; the queue's clients
# decode responses, so an entry's fields are str -> str, and these say so where they pass.
Fields = dict[Any, Any]  # an entry's fields, as redis-py's (invariant) argument type takes them
Entries = list[tuple[str, dict[str, str]]]  # XRANGE / XCLAIM: (entry id, fields)
Streams = list[tuple[str, Entries]] | None  # XREAD / XREADGROUP: (stream, entries), or nothing


@dataclass(slots=True)
class Delivery:
    """One delivery of a queue entry. ``turn`` is None when the entry could not be decoded: the
    worker dead-letters it at once."""

    entry_id: str
    turn: Turn | None
    deliveries: int
    fields: dict[str, str] = field(default_factory=dict, repr=False)


class TurnQueue(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    # gateway side
    async def submit(self, turn: Turn) -> None: ...
    def replies(self, gateway: str) -> AsyncIterator[ReplyDelta]: ...
    async def cancel(self, turn_id: str) -> None: ...
    async def announce(self, gateway: str, platforms: Iterable[str], ttl_s: float) -> None: ...
    async def withdraw(self, gateway: str, platforms: Iterable[str]) -> None: ...

    # worker side
    async def receive(self, count: int, block_ms: int) -> list[Delivery]: ...
    async def ack(self, delivery: Delivery) -> None: ...
    async def release(self, delivery: Delivery) -> None: ...
    async def touch(self, deliveries: Iterable[Delivery]) -> None: ...
    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
    async def publish(self, gateway: str, delta: ReplyDelta) -> None: ...
    def cancellations(self) -> AsyncIterator[str]: ...
    async def gateway_for(self, platform: str) -> str | None: ...


def delivery_of(entry_id: str, fields: dict[str, Any], deliveries: int) -> Delivery:
    try:
        turn: Turn | None = decode(Turn, fields)
    except ValueError:
        log.exception("undecodable turn entry %s", entry_id)
        turn = None
    return Delivery(entry_id, turn, deliveries, dict(fields))
