"""Usage figures per platform over a time window: replies per day, active users, latency and time
to first token (p50, p95), tokens in and out, the error rate, messages admission control refused
(by reason), and handoffs to a person (by reason, time to the first human answer, share
resolved). The replies stream from a server-side cursor, so memory stays flat over any window."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import (
    func,
    select,
)

from .filters import LogFilter, LogQueries
from .models import REFUSED, Conversation, Handoff, HandoffState, Message, MessageStatus

STATS_BATCH = 2_000  # replies read a round trip


@dataclass(frozen=True, slots=True)
class PlatformStats:
    platform: str
    turns: int
    turns_per_day: dict[str, int]
    active_users: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tokens_in: int
    tokens_out: int
    errors: int
    error_rate: float
    # handoffs to a person opened in the window, by reason ("asked", ...); the time from each
    # to its first human answer (p50, p95; those answered), and the share of them resolved
    handoffs: dict[str, int]
    first_human_p50_s: float | None
    first_human_p95_s: float | None
    handoffs_resolved: float | None
    # messages admission control refused in the window, by reason ("rate", "busy", "budget"):
    # neither turns nor errors
    refused: dict[str, int]


class StatsQueries(LogQueries):
    """``stats`` over a started ``Store``."""

    async def stats(self, filt: LogFilter) -> list[PlatformStats]:
        """Per platform over the filter's window: turns (replies) per day, active users, reply
        latency and time to first token (p50, p95), tokens in and out, and the error rate."""
        where = self._message_filters(filt)
        replies = (
            select(
                Conversation.platform,
                Message.created_at,
                Message.latency_ms,
                Message.ttft_ms,
                Message.tokens_in,
                Message.tokens_out,
                Message.status,
                Message.error,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.role == "assistant", *where)
        )
        users = (
            select(Conversation.platform, func.count(func.distinct(Message.user_id)))
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.role == "user", *where)
            .group_by(Conversation.platform)
        )
        handoffs = select(
            Conversation.platform,
            Handoff.reason,
            Handoff.created_at,
            Handoff.first_human_at,
            Handoff.state,
        ).join(Conversation, Conversation.id == Handoff.conversation_id)
        handoffs = handoffs.where(*self._conversation_filters(filt))
        if filt.since:
            handoffs = handoffs.where(Handoff.created_at >= filt.since)
        if filt.until:
            handoffs = handoffs.where(Handoff.created_at < filt.until)
        per: dict[str, _Figures] = defaultdict(_Figures)
        async with self.store.snapshot() as conn:
            result = await conn.stream(replies.execution_options(yield_per=STATS_BATCH))
            async for batch in result.partitions():
                for platform, at, latency, ttft, t_in, t_out, status, error in batch:
                    if error is not None and error.startswith(REFUSED):
                        per[platform].refused[error.removeprefix(REFUSED)] += 1
                    else:
                        per[platform].add(at, latency, ttft, t_in, t_out, status)
            active = dict((await conn.execute(users)).all())
            for platform, reason, opened, answered, state in await conn.execute(handoffs):
                per[platform].add_handoff(reason, opened, answered, state)
        return [per[p].summary(p, active.get(p, 0)) for p in sorted(per.keys() | active.keys())]


class _Figures:
    """Running figures of one platform's replies."""

    def __init__(self) -> None:
        self.per_day: dict[date, int] = defaultdict(int)
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.tokens_in = self.tokens_out = self.errors = self.turns = 0
        self.handoffs: dict[str, int] = defaultdict(int)
        self.first_human: list[float] = []
        self.resolved = 0
        self.refused: dict[str, int] = defaultdict(int)

    def add_handoff(
        self, reason: str, opened: datetime, answered: datetime | None, state: str
    ) -> None:
        self.handoffs[reason] += 1
        if answered is not None:
            self.first_human.append((answered - opened).total_seconds())
        self.resolved += state == HandoffState.RESOLVED

    def add(
        self,
        at: datetime,
        latency: float | None,
        ttft: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
        status: str,
    ) -> None:
        self.turns += 1
        self.per_day[at.date()] += 1
        if latency is not None:
            self.latency.append(latency)
        if ttft is not None:
            self.ttft.append(ttft)
        self.tokens_in += tokens_in or 0
        self.tokens_out += tokens_out or 0
        self.errors += status != MessageStatus.OK

    def summary(self, platform: str, active_users: int) -> PlatformStats:
        p50l, p95l = _percentiles(self.latency)
        p50t, p95t = _percentiles(self.ttft)
        p50h, p95h = _percentiles(self.first_human)
        opened = sum(self.handoffs.values())
        return PlatformStats(
            platform=platform,
            turns=self.turns,
            turns_per_day={d.isoformat(): n for d, n in sorted(self.per_day.items())},
            active_users=active_users,
            latency_p50_ms=p50l,
            latency_p95_ms=p95l,
            ttft_p50_ms=p50t,
            ttft_p95_ms=p95t,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            errors=self.errors,
            error_rate=self.errors / self.turns if self.turns else 0.0,
            handoffs=dict(sorted(self.handoffs.items())),
            first_human_p50_s=p50h,
            first_human_p95_s=p95h,
            handoffs_resolved=self.resolved / opened if opened else None,
            refused=dict(sorted(self.refused.items())),
        )


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]
