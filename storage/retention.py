"""Erasure and retention: deleting one conversation, erasing one person (``purge_user``: their
messages and the replies to them, then the conversations that hold nobody else), and deleting
conversations inactive for too long. Each runs in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy import update as sql_update

from frontdesk.errors import NotFound

from .filters import LogFilter, LogQueries
from .models import Conversation, Message

DELETE_BATCH = 500  # ids in one DELETE … IN (…)


@dataclass(frozen=True, slots=True)
class Removed:
    """What an erasure or retention run deleted."""

    conversations: int = 0
    messages: int = 0
    users: list[str] = field(default_factory=list)


class RetentionQueries(LogQueries):
    """Deletions over a started ``Store``."""

    async def delete_conversation(self, conversation_id: int) -> Removed:
        """Delete one conversation and all its messages. Raises NotFound."""
        async with self.store.transaction() as conn:
            found = await conn.scalar(
                select(Conversation.id).where(Conversation.id == conversation_id)
            )
            if found is None:
                raise NotFound(f"no conversation with id {conversation_id}")
            messages = await _delete_messages_of(conn, [conversation_id])
            await conn.execute(delete(Conversation).where(Conversation.id == conversation_id))
        return Removed(conversations=1, messages=messages)

    async def user_matches(self, user: str) -> list[tuple[str, str, str | None]]:
        """(platform, user id, display name) of each user ``user`` names, one row a user. A user
        id names that id on every platform; otherwise ``user`` is a display name (exact, any
        case), which several users may share."""
        found: dict[tuple[str, str], str | None] = {}
        async with self.store.connect() as conn:
            for by_id in (True, False):
                for table_ in (Message, Conversation):
                    where = (
                        table_.user_id == user
                        if by_id
                        else func.lower(table_.user_name) == user.lower()
                    )
                    stmt = select(table_.platform, table_.user_id, table_.user_name).where(
                        where, table_.user_id.is_not(None), table_.platform.is_not(None)
                    )
                    for platform, user_id, name in (await conn.execute(stmt.distinct())).all():
                        if found.get((str(platform), str(user_id))) is None:
                            found[(str(platform), str(user_id))] = name
                if found:  # an id match wins over a display name
                    break
        return sorted((p, u, n) for (p, u), n in found.items())

    async def purge_user(self, users: Sequence[tuple[str, str]]) -> Removed:
        """Right to erasure for these (platform, user id) pairs, in one transaction: every
        message they wrote and every reply to one of them, and then each conversation that
        holds nobody else's messages. A conversation someone else also wrote in (a group chat,
        a Slack thread) keeps their turns and the replies to them; if the user had opened it,
        it passes to whoever wrote next, so no row names the user."""
        if not users:
            return Removed()
        by_msg = or_(*(and_(Message.platform == p, Message.user_id == u) for p, u in users))
        by_conv = or_(
            *(and_(Conversation.platform == p, Conversation.user_id == u) for p, u in users)
        )
        async with self.store.transaction() as conn:
            touched = set(
                await conn.scalars(select(Message.conversation_id).where(by_msg).distinct())
            )
            touched |= set(await conn.scalars(select(Conversation.id).where(by_conv)))
            theirs = select(Message.id).where(by_msg)
            replies = await conn.execute(delete(Message).where(Message.reply_to_id.in_(theirs)))
            own = await conn.execute(delete(Message).where(by_msg))
            messages = (replies.rowcount or 0) + (own.rowcount or 0)
            candidates = sorted(touched)
            others = select(Message.id).where(
                Message.conversation_id == Conversation.id, Message.role == "user"
            )
            empty = list(
                await conn.scalars(
                    select(Conversation.id).where(Conversation.id.in_(candidates), ~others.exists())
                )
            )
            messages += await _delete_messages_of(conn, empty)
            for start in range(0, len(empty), DELETE_BATCH):
                chunk = empty[start : start + DELETE_BATCH]
                await conn.execute(delete(Conversation).where(Conversation.id.in_(chunk)))
            kept = sorted(touched - set(empty))
            await _recount(conn, kept)
            await _pass_on(conn, kept, by_conv)
        return Removed(
            conversations=len(empty), messages=messages, users=sorted({u for _p, u in users})
        )

    async def purge_older_than(self, cutoff: datetime, filt: LogFilter | None = None) -> Removed:
        """Retention: delete conversations whose last activity is before ``cutoff``."""
        where = [Conversation.last_activity_at < cutoff]
        if filt is not None:
            where += self._conversation_filters(filt)
        async with self.store.transaction() as conn:
            conv_ids = list(await conn.scalars(select(Conversation.id).where(*where)))
            messages = await _delete_messages_of(conn, conv_ids)
            for start in range(0, len(conv_ids), DELETE_BATCH):
                chunk = conv_ids[start : start + DELETE_BATCH]
                await conn.execute(delete(Conversation).where(Conversation.id.in_(chunk)))
        return Removed(conversations=len(conv_ids), messages=messages)

    async def count_older_than(self, cutoff: datetime, filt: LogFilter | None = None) -> int:
        where = [Conversation.last_activity_at < cutoff]
        if filt is not None:
            where += self._conversation_filters(filt)
        async with self.store.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(Conversation).where(*where))
        return total or 0


async def _delete_messages_of(conn: Any, conv_ids: list[int]) -> int:
    """Delete the messages of these conversations, a batch at a time; returns how many."""
    removed = 0
    for start in range(0, len(conv_ids), DELETE_BATCH):
        chunk = conv_ids[start : start + DELETE_BATCH]
        result = await conn.execute(delete(Message).where(Message.conversation_id.in_(chunk)))
        removed += result.rowcount or 0
    return removed


async def _recount(conn: Any, conv_ids: list[int]) -> None:
    """Set message_count again for conversations that lost messages (the counter trigger only
    counts inserts)."""
    count = (
        select(func.count())
        .where(Message.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )
    for start in range(0, len(conv_ids), DELETE_BATCH):
        chunk = conv_ids[start : start + DELETE_BATCH]
        await conn.execute(
            sql_update(Conversation)
            .where(Conversation.id.in_(chunk))
            .values(message_count=count)
            .execution_options(synchronize_session=False)
        )


async def _pass_on(conn: Any, conv_ids: list[int], owned: ColumnElement[bool]) -> None:
    """Conversations among ``conv_ids`` that ``owned`` matches get as their user the author of
    their earliest user message left."""
    first = (
        select(Message.id)
        .where(Message.conversation_id == Conversation.id, Message.role == "user")
        .order_by(Message.id)
        .limit(1)
        .correlate(Conversation)
        .scalar_subquery()
    )
    author = select(Message.user_id).where(Message.id == first).scalar_subquery()
    name = select(Message.user_name).where(Message.id == first).scalar_subquery()
    for start in range(0, len(conv_ids), DELETE_BATCH):
        chunk = conv_ids[start : start + DELETE_BATCH]
        await conn.execute(
            sql_update(Conversation)
            .where(Conversation.id.in_(chunk), owned)
            .values(user_id=author, user_name=name)
            .execution_options(synchronize_session=False)
        )
