"""The turn queue: gateways submit turns, workers take them, and reply deltas flow back.

Semantics (both implementations):

* **At least once.** A turn is delivered until a worker acks it. A worker that dies holding turns
  leaves them pending; after ``claim_idle_ms`` without a heartbeat another worker reclaims them. So a
  turn can be processed twice: the worker makes that harmless by checking storage for an existing
  reply (``Store.reply_to``) before generating, and storage refuses a second reply.
* **A turn's end.** The worker's ack carries the turn's last reply delta (``ack(final=...)``):
  ``RedisQueue`` appends it to the gateway's reply stream and acks in one script, so a turn is
  acked only once its reply's end is on its way, and that costs one round trip, not two.
* **Heartbeats.** A worker ``touch``-es the turns it is still working on, so a long generation is
  not mistaken for a dead worker.
* **Dead letters.** ``Delivery.deliveries`` counts deliveries. The worker moves a turn delivered more
  than ``max_deliveries`` times to the dead-letter stream (``dead_letter``) instead of trying again.
* **Replies** go to the stream of the gateway that owns the turn (``Turn.gateway``), in order. A
  turn re-queued from the dead letters (``Turn.revived``) goes instead to a gateway that runs its
  channel now: each gateway ``announce``-s the channels any gateway can reply on every few seconds,
  with an expiry, and ``gateway_for`` names the one heard from last.
* **Cancels** (a user's /stop) are broadcast to every worker; the one generating the turn stops.
  A cancel for a turn no worker holds is simply ignored.

``RedisQueue`` does this with Redis Streams: one stream of turns read through the consumer group
``workers`` (XADD with ``MAXLEN ~``, XREADGROUP, XACK, XAUTOCLAIM, XCLAIM JUSTID as heartbeat, XPENDING
for delivery counts), a dead-letter stream, and a reply stream per gateway. ``LocalQueue`` does it in
memory for the embedded mode, where gateway and worker share one process. ``RedisQueue`` also serves
the admin CLI: ``status`` (what is queued, pending and dead) and ``retry_dead`` (in ``admin``).
"""

from __future__ import annotations

from typing import Any

from .admin import ConsumerStatus, QueueStatus
from .base import GROUP, Delivery, TurnQueue
from .local import LocalQueue
from .streams import RedisQueue

__all__ = [
    "GROUP",
    "ConsumerStatus",
    "Delivery",
    "LocalQueue",
    "QueueStatus",
    "RedisQueue",
    "TurnQueue",
    "make_queue",
]


def make_queue(redis_url: str | None, *, consumer: str, **redis_options: Any) -> TurnQueue:
    """A Redis queue when a URL is configured, else the embedded in-memory one."""
    if redis_url is None:
        return LocalQueue()
    return RedisQueue(redis_url, consumer=consumer, **redis_options)
