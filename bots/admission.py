"""Admission control: what the gateway refuses before a message becomes a turn.

- ``FRONTDESK_USER_RATE`` ("10/min"): each user's messages, counted in a token bucket (in Redis in
  scaled mode, so every gateway counts the same user together): a user may send that many at
  once, then one each period/count. A message over it is told when the user can go on.
- ``FRONTDESK_USER_DAILY_TOKENS``: the tokens (prompt and reply) a user's turns may spend in a
  UTC day, counted by the worker after each answer. Past it, the user is told when the budget
  starts again (midnight UTC).
- ``FRONTDESK_MAX_BACKLOG``: turns waiting for a worker. Past it, a new message is told "we're
  busy" instead of joining a queue that grows without bound.

Checked once a new message is stored (a platform's retry of an admitted one is not counted
again, and a conversation a person has is not the engine's to refuse). A refused message stays
stored (the logs show what the user wrote), with what the user was told stored as its failed
reply (error "refused: <reason>"): no turn and no sweep answers it, ``frontdesk stats`` counts it,
and nothing already accepted is dropped. When Redis cannot be reached the message is let
through: queueing it deals with the outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time

from frontdesk import texts
from frontdesk.engine.queue import TurnQueue
from frontdesk.errors import QueueUnavailable
from frontdesk.settings import Settings
from frontdesk.wire import InboundMessage

log = logging.getLogger(__name__)
BACKLOG_FRESH_S = 0.5  # the backlog is read at most this often (one Redis call per read)


class Admission:
    def __init__(self, settings: Settings, queue: TurnQueue) -> None:
        self.queue = queue
        self.rate = settings.user_rate_limit
        self.max_backlog = settings.max_backlog
        self.daily_tokens = settings.user_daily_tokens
        self._backlog = (0, float("-inf"))  # (turns waiting, when read)
        self.refused = {"rate": 0, "busy": 0, "budget": 0}  # by this process, since it started
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # whose day it is

    @property
    def active(self) -> bool:
        return (
            self.rate is not None or self.max_backlog is not None or self.daily_tokens is not None
        )

    async def refusal(self, msg: InboundMessage) -> tuple[str, str] | None:
        """Why ``msg`` is refused ("busy", "budget" or "rate") and what to tell the user instead
        of answering it; None: it is admitted."""
        try:
            if self.max_backlog is not None and await self._waiting() >= self.max_backlog:
                await self._refused("busy")
                log.warning("backlog of %d turns or more: message %s refused",
                            self.max_backlog, msg.dedupe_key)  # fmt: skip
                return "busy", texts.BUSY
            if self.daily_tokens is not None:
                now = self.clock()
                user = f"{msg.platform}:{msg.user_id}"
                if await self.queue.tokens_spent(user, now.date()) >= self.daily_tokens:
                    await self._refused("budget")
                    log.info("user %s past FRONTDESK_USER_DAILY_TOKENS: message %s refused",
                             user, msg.dedupe_key)  # fmt: skip
                    midnight = datetime.combine(now.date() + timedelta(days=1), dt_time(),
                                                tzinfo=UTC)  # fmt: skip
                    return "budget", texts.out_of_budget((midnight - now).total_seconds())
            if self.rate is not None:
                count, per_s = self.rate
                wait = await self.queue.take(f"user:{msg.platform}:{msg.user_id}", count, per_s)
                if wait > 0:
                    await self._refused("rate")
                    log.info("user %s:%s over FRONTDESK_USER_RATE: message %s refused",
                             msg.platform, msg.user_id, msg.dedupe_key)  # fmt: skip
                    return "rate", texts.slow_down(wait)
        except QueueUnavailable as exc:
            log.warning("cannot count admission (%s); message %s let through", exc,
                        msg.dedupe_key)  # fmt: skip
        return None

    async def _refused(self, reason: str) -> None:
        self.refused[reason] += 1
        await self.queue.note_refusal(reason)

    async def _waiting(self) -> int:
        waiting, read_at = self._backlog
        now = time.monotonic()
        if now - read_at >= BACKLOG_FRESH_S:
            waiting = await self.queue.backlog()
            self._backlog = (waiting, now)
        return waiting
