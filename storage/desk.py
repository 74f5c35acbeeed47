"""Handoffs to a person (migration 0012): the conversation's state (bot, waiting, human) and the
desk's thread for it, and the messages agents write to customers (role ``agent``).

A conversation is in at most one open handoff, named by ``conversations.handoff_id``: the
gateway learns it in the statement that stores the customer's message (``record_user_message``),
which then stores the message without a reply route, so neither the gateway nor the sweep queues
a turn for it. Opening a handoff sets that column only where it is empty, so two gateways racing
to hand the same customer over open one handoff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from .database import Database, dialect_insert
from .models import (
    Conversation,
    Handoff,
    HandoffState,
    Message,
    MessageStatus,
    chat_active,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    id: int
    conversation_id: int
    reason: str
    state: str
    route: dict[str, Any]  # where the customer's messages come from and replies go
    desk: str
    desk_thread: str | None
    created_at: datetime
    agent_id: str | None

    @property
    def open(self) -> bool:
        return self.state != HandoffState.RESOLVED


def _record(row: Any) -> HandoffRecord:
    return HandoffRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        reason=row.reason,
        state=row.state,
        route=json.loads(row.route),
        desk=row.desk,
        desk_thread=row.desk_thread,
        created_at=row.created_at,
        agent_id=row.agent_id,
    )


_COLUMNS = (
    Handoff.id,
    Handoff.conversation_id,
    Handoff.reason,
    Handoff.state,
    Handoff.route,
    Handoff.desk,
    Handoff.desk_thread,
    Handoff.created_at,
    Handoff.agent_id,
)


class _InOneAlready(Exception):
    pass


class _Resolved(Exception):
    pass


class Handoffs(Database):
    """The queries of handoffs."""

    def __init__(self, url: str, *, pool_size: int = 20, echo: bool = False) -> None:
        super().__init__(url, pool_size=pool_size, echo=echo)
        self._insert_agent_message = (
            dialect_insert(self.dialect)(Message)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(Message.id)
        )

    async def open_handoff(
        self, conversation_id: int, *, reason: str, route: dict[str, Any], desk: str
    ) -> tuple[HandoffRecord, bool]:
        """Hand the conversation to the desk: its open handoff, and whether this call opened it
        (False: it was in one already, which is returned)."""
        now = utcnow()
        try:
            async with self.transaction() as conn:
                handoff_id = await conn.scalar(
                    insert(Handoff)
                    .values(
                        conversation_id=conversation_id,
                        reason=reason,
                        state=HandoffState.WAITING,
                        route=json.dumps(route, ensure_ascii=False),
                        desk=desk,
                        created_at=now,
                    )
                    .returning(Handoff.id)
                )
                taken = await conn.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id, Conversation.handoff_id.is_(None))
                    .values(handoff_id=handoff_id)
                )
                if taken.rowcount != 1:
                    raise _InOneAlready  # rolls the new row back
        except _InOneAlready:
            found = await self.handoff_of(conversation_id)
            if found is None:  # resolved in between: hand over again
                return await self.open_handoff(
                    conversation_id, reason=reason, route=route, desk=desk
                )
            return found, False
        assert handoff_id is not None
        opened = await self.handoff(handoff_id)
        assert opened is not None
        return opened, True

    async def chat_customer(
        self, platform: str, external_key: str
    ) -> tuple[int, str | None, int | None] | None:
        """The chat's (or thread's) active conversation: its id, the customer's user id, and
        its open handoff if a person has it; None when there is none."""
        query = select(Conversation.id, Conversation.user_id, Conversation.handoff_id).where(
            Conversation.platform == platform,
            Conversation.external_key == external_key,
            chat_active(),
        )
        async with self.connect() as conn:
            row = (await conn.execute(query)).first()
        return (row[0], row[1], row[2]) if row is not None else None

    async def handoff(self, handoff_id: int) -> HandoffRecord | None:
        async with self.connect() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(Handoff.id == handoff_id))).first()
        return _record(row) if row is not None else None

    async def handoff_of(self, conversation_id: int) -> HandoffRecord | None:
        """The conversation's open handoff, if a person has it or is to."""
        query = select(*_COLUMNS).join(Conversation, Conversation.handoff_id == Handoff.id)
        async with self.connect() as conn:
            row = (await conn.execute(query.where(Conversation.id == conversation_id))).first()
        return _record(row) if row is not None else None

    async def handoff_by_thread(self, desk: str, thread: str) -> HandoffRecord | None:
        """The newest handoff whose desk thread this is (open or not)."""
        query = (
            select(*_COLUMNS)
            .where(Handoff.desk == desk, Handoff.desk_thread == thread)
            .order_by(Handoff.id.desc())
            .limit(1)
        )
        async with self.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None

    async def threads_opening(self, desk: str, since: datetime) -> bool:
        """Whether an open handoff at ``desk``, opened after ``since``, has no desk thread yet:
        its card is being posted, or was posted a moment ago and its thread not yet stored."""
        query = (
            select(Handoff.id)
            .where(
                Handoff.desk == desk,
                Handoff.desk_thread.is_(None),
                Handoff.state != HandoffState.RESOLVED,
                Handoff.created_at > since,
            )
            .limit(1)
        )
        async with self.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def set_desk_thread(self, handoff_id: int, thread: str) -> None:
        async with self.connect() as conn:
            await conn.execute(
                update(Handoff).where(Handoff.id == handoff_id).values(desk_thread=thread)
            )

    async def claim_handoff(self, handoff_id: int, agent_id: str) -> bool:
        """A person takes the handoff; False when it is resolved already. A claimed one stays
        with the agent who claimed it first."""
        async with self.connect() as conn:
            done = await conn.execute(
                update(Handoff)
                .where(Handoff.id == handoff_id, Handoff.state != HandoffState.RESOLVED)
                .values(
                    state=HandoffState.HUMAN,
                    claimed_at=func.coalesce(Handoff.claimed_at, utcnow()),
                    agent_id=func.coalesce(Handoff.agent_id, agent_id),
                )
            )
        return done.rowcount == 1

    async def record_agent_message(
        self, handoff: HandoffRecord, *, agent_id: str, agent_name: str | None, text: str,
        dedupe_key: str,
    ) -> int | None:  # fmt: skip
        """Store what an agent wrote to the customer (role ``agent``), and mark the handoff a
        person's: None, and nothing written, when the same desk event was stored before or the
        handoff is resolved (a reply racing a Resolve or a timeout does not bring it back)."""
        now = utcnow()
        try:
            async with self.transaction() as conn:
                taken = await conn.execute(
                    update(Handoff)
                    .where(Handoff.id == handoff.id, Handoff.state != HandoffState.RESOLVED)
                    .values(
                        state=HandoffState.HUMAN,
                        first_human_at=func.coalesce(Handoff.first_human_at, now),
                        claimed_at=func.coalesce(Handoff.claimed_at, now),
                        agent_id=func.coalesce(Handoff.agent_id, agent_id),
                    )
                )
                if taken.rowcount != 1:
                    raise _Resolved  # resolved meanwhile: nothing goes to the customer
                message_id = await conn.scalar(
                    self._insert_agent_message.values(
                        conversation_id=handoff.conversation_id,
                        role="agent",
                        content=text,
                        platform=handoff.desk.partition(":")[0],
                        dedupe_key=dedupe_key,
                        user_id=agent_id,
                        user_name=agent_name,
                        status=MessageStatus.OK,
                        created_at=now,
                    )
                )
                if message_id is None:
                    raise _Resolved  # the same desk event again: stored already
        except _Resolved:
            return None
        return message_id

    async def overdue_handoffs(
        self,
        desks: list[str],
        *,
        unclaimed_before: datetime,
        idle_before: datetime,
        limit: int = 100,
    ) -> list[HandoffRecord]:
        """Open handoffs that should go back to the bot: waiting since before
        ``unclaimed_before`` (nobody claimed or answered them), or a person's with no message in
        the conversation since ``idle_before``."""
        query = (
            select(*_COLUMNS)
            .join(Conversation, Conversation.handoff_id == Handoff.id)
            .where(Handoff.desk.in_(desks))
            .where(
                or_(
                    and_(Handoff.state == HandoffState.WAITING,
                         Handoff.created_at < unclaimed_before),
                    and_(Handoff.state == HandoffState.HUMAN,
                         Conversation.last_activity_at < idle_before),
                )
            )
            .order_by(Handoff.id)
            .limit(limit)
        )  # fmt: skip
        async with self.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def resolve_handoff(self, handoff_id: int) -> HandoffRecord | None:
        """End the handoff: the bot has the conversation again. None when it was over already."""
        now = utcnow()
        async with self.transaction() as conn:
            done = await conn.execute(
                update(Handoff)
                .where(Handoff.id == handoff_id, Handoff.state != HandoffState.RESOLVED)
                .values(state=HandoffState.RESOLVED, resolved_at=now)
            )
            if done.rowcount != 1:
                return None
            await conn.execute(
                update(Conversation)
                .where(Conversation.handoff_id == handoff_id)
                .values(handoff_id=None)
            )
        return await self.handoff(handoff_id)
