"""The operators' side of storage: ``Logs``, every admin read and deletion over the conversation
logs, through one ``LogFilter`` (``filters``). It lists conversations, streams exports and
follows new messages (tail) itself, and takes search, erasure and retention, and the figures from
the modules of their own (``search``, ``retention``, ``stats``). Nothing here runs on a turn's hot
path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    func,
    select,
    true,
)

from .filters import LogFilter
from .models import Conversation, Message
from .retention import Removed, RetentionQueries
from .search import (
    HIT_END,
    HIT_START,
    STOPWORDS,
    WORD,
    SearchHit,
    SearchQueries,
    indexed_text,
    search_words,
)
from .stats import PlatformStats, StatsQueries
from .store import ConversationSummary

EXPORT_BATCH = 2_000


EXPORT_COLUMNS = (
    "message_id",
    "conversation_id",
    "platform",
    "chat",
    "user_id",
    "user_name",
    "role",
    "content",
    "created_at",
    "tokens_in",
    "tokens_out",
    "ttft_ms",
    "latency_ms",
    "model",
    "status",
    "error",
    "kb_sources",  # a reply given knowledge-base passages: those chunks, as JSON
)


@dataclass(frozen=True, slots=True)
class TailMessage:
    id: int
    conversation_id: int
    platform: str
    user_id: str | None
    user_name: str | None
    role: str
    content: str
    created_at: datetime
    status: str


class Logs(SearchQueries, RetentionQueries, StatsQueries):
    """Admin reads and deletions over a started ``Store``."""

    async def list_conversations(self, filt: LogFilter) -> list[ConversationSummary]:
        """Conversations by last activity, newest first, each with its last message."""
        where = self._conversation_filters(filt)
        if filt.since:
            where.append(Conversation.last_activity_at >= filt.since)
        if filt.until:
            where.append(Conversation.last_activity_at < filt.until)
        return await self.store.list_conversations(limit=filt.limit, where=where)

    def _export_query(self, filt: LogFilter) -> Select[*tuple[Any, ...]]:
        return (
            select(
                Message.id,
                Message.conversation_id,
                Conversation.platform,
                Conversation.external_key,
                Message.user_id,
                Message.user_name,
                Message.role,
                Message.content,
                Message.created_at,
                Message.tokens_in,
                Message.tokens_out,
                Message.ttft_ms,
                Message.latency_ms,
                Message.model,
                Message.status,
                Message.error,
                Message.kb_sources,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(and_(true(), *self._message_filters(filt)))
        )

    async def count_messages(self, filt: LogFilter) -> int:
        """How many messages an export with ``filt`` would write (its limit aside)."""
        inner = self._export_query(filt).with_only_columns(Message.id).subquery()
        async with self.store.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(inner))
        return min(total or 0, filt.limit) if filt.limit else total or 0

    async def export_batches(self, filt: LogFilter) -> AsyncIterator[Sequence[Sequence[Any]]]:
        """Messages in id order, as batches of tuples in ``EXPORT_COLUMNS`` order, streamed
        from a server-side cursor: memory stays flat however many there are."""
        stmt = self._export_query(filt).order_by(Message.id)
        if filt.limit:
            stmt = stmt.limit(filt.limit)
        async with self.store.snapshot() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=EXPORT_BATCH))
            async for batch in result.partitions():
                yield batch

    async def messages_after(self, after_id: int, filt: LogFilter) -> list[TailMessage]:
        """Messages newer than ``after_id``, oldest first (at most ``filt.limit``)."""
        stmt = (
            select(
                Message.id,
                Message.conversation_id,
                Conversation.platform,
                Message.user_id,
                Message.user_name,
                Message.role,
                Message.content,
                Message.created_at,
                Message.status,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.id > after_id, *self._message_filters(filt))
            .order_by(Message.id)
        )
        if filt.limit:
            stmt = stmt.limit(filt.limit)
        async with self.store.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [TailMessage(*row) for row in rows]

    async def tail_start(self, count: int, filt: LogFilter) -> int:
        """The id just before the newest ``count`` messages matching ``filt`` (where tail starts)."""
        stmt = (
            select(Message.id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(*self._message_filters(filt))
            .order_by(Message.id.desc())
            .limit(count + 1)
        )
        async with self.store.connect() as conn:
            ids = (await conn.scalars(stmt)).all()
        if len(ids) <= count:
            return 0
        return ids[-1]


__all__ = [
    "EXPORT_BATCH",
    "EXPORT_COLUMNS",
    "HIT_END",
    "HIT_START",
    "STOPWORDS",
    "WORD",
    "LogFilter",
    "Logs",
    "PlatformStats",
    "Removed",
    "SearchHit",
    "TailMessage",
    "indexed_text",
    "search_words",
]
