"""Conversations and their messages, the turn path's aggregate: a user's message in (opening the
chat's conversation when it has none), a turn's context, its reply out, a chat reset, names
filled in later; and the admin CLI's reads of conversations. ``Conversations`` holds these
queries, next to the models, on a ``Database``; ``Store`` is built on it. Everything returns plain
dataclasses, so no caller ever holds a SQLAlchemy object or imports SQLAlchemy. Connection
failures surface as ``StorageUnavailable``. Works on SQLite (aiosqlite, WAL mode) and PostgreSQL
(asyncpg).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Integer,
    Text,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from frontdesk.batching import Batcher
from frontdesk.errors import NotFound, StorageUnavailable
from frontdesk.wire import CHAT_ROLES, ChatMessage, InboundMessage, as_chat, dumps

from .database import Database, DriverStatement, dialect_insert
from .models import (
    Conversation,
    ConversationStatus,
    Message,
    MessageStatus,
    chat_active,
    utcnow,
)

log = logging.getLogger(__name__)

ALONE_AT_ONCE = 4
"""PostgreSQL: at most this many of a batch's user messages stored alone at a time (each on a
connection of the pool's): different chats' first messages side by side, the pool left for the
rest of the turn's statements. (Measured on two cores, 32 new chats at once: 2, 4 and 8 at a time
all beat one; 8 gave a slow tail, its server processes outnumbering the cores.)"""


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    conversation_id: int
    message_id: int
    # the conversation is in a handoff to a person: stored without a reply route, no turn is
    # to be queued for it (``handoff_of`` says which)
    handed_off: bool = False


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: str
    content: str
    created_at: datetime
    user_id: str | None = None
    user_name: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    model: str | None = None
    status: str = MessageStatus.OK
    error: str | None = None
    # a reply given knowledge-base passages: the chunks (chunk_id, source, title, url), as JSON
    kb_sources: str | None = None

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The knowledge-base chunks this reply was given (empty when none)."""
        try:
            found = json.loads(self.kb_sources) if self.kb_sources else []
        except ValueError:
            return []
        return found if isinstance(found, list) else []


class TurnMessage(NamedTuple):
    """A stored reply as a worker reads it: the one stored already for the message a turn
    answers (a redelivered turn), or one stored after newer messages (``turn_context``)."""

    id: int
    role: str
    content: str
    status: str


class TurnContext(NamedTuple):
    """What a worker needs to answer a message (``turn_context``), made in one pass over the
    rows read: every turn reads one, about a hundred messages in a long conversation."""

    reply: TurnMessage | None  # the reply stored for the message already (a redelivered turn)
    # the newest good messages up to it, oldest first, each reply right after the message it
    # answers, as the model sees them (``as_chat``: a person's answers marked as a person's)
    history: list[ChatMessage]
    ids: list[int]  # the stored id of each message of ``history``
    awaiting: list[int]  # the ids of those of ``history`` that await their reply, oldest first


@dataclass(frozen=True, slots=True)
class AwaitingMessage:
    """A user message still awaiting its reply, with where the reply goes (the sweep's)."""

    conversation_id: int
    message_id: int
    route: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    id: int
    platform: str
    external_key: str
    user_id: str | None
    user_name: str | None
    status: str
    message_count: int
    created_at: datetime
    last_activity_at: datetime
    last_message: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyFigures:
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    model: str | None = None


_CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.platform,
    Conversation.external_key,
    Conversation.user_id,
    Conversation.user_name,
    Conversation.status,
    Conversation.message_count,
    Conversation.created_at,
    Conversation.last_activity_at,
)
_MESSAGE_COLUMNS = (
    Message.id,
    Message.conversation_id,
    Message.role,
    Message.content,
    Message.created_at,
    Message.user_id,
    Message.user_name,
    Message.tokens_in,
    Message.tokens_out,
    Message.ttft_ms,
    Message.latency_ms,
    Message.model,
    Message.status,
    Message.error,
    Message.kb_sources,
)


class Conversations(Database):
    """The queries of conversations and their messages, on one database."""

    def __init__(self, url: str, *, pool_size: int = 20, echo: bool = False) -> None:
        super().__init__(url, pool_size=pool_size, echo=echo)
        insert = dialect_insert(self.dialect)
        self._insert_user_message = (
            insert(Message)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(Message.id)
        )
        # INSERT INTO messages (...) SELECT <active conversation's id>, :role, ... : a user message
        # lands in its chat's active conversation in one statement, or not at all.
        columns = [
            "conversation_id",
            "role",
            "content",
            "platform",
            "platform_message_id",
            "dedupe_key",
            "user_id",
            "user_name",
            "status",
            "created_at",
            "reply_route",
        ]
        given = [bindparam(c, type_=Message.__table__.c[c].type) for c in columns[1:-1]]
        # no reply route while a person has the conversation (handoff, 0012): nothing queues it
        values = [
            *given,
            case((Conversation.handoff_id.is_(None), bindparam("reply_route", type_=Text()))),
        ]
        active = select(Conversation.id, *values).where(
            Conversation.platform == bindparam("platform"),
            Conversation.external_key == bindparam("external_key"),
            chat_active(),
        )
        self._insert_into_active = (
            insert(Message)
            .from_select(columns, active)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(Message.id, Message.conversation_id, Message.reply_route)
        )
        # A reply to a message that has one: a stored failure is replaced (the turn was answered
        # afresh, e.g. re-queued from the dead letters), a good reply is kept.
        reply = insert(Message)
        self._insert_reply = reply.on_conflict_do_update(
            index_elements=["reply_to_id"],
            set_={c: reply.excluded[c] for c in _REPLY_COLUMNS},
            where=Message.status != MessageStatus.OK,
        ).returning(Message.id)
        # PostgreSQL: the reply and its message's "answered" in one statement (a data-modifying
        # WITH), one round trip where a transaction takes four. Its values are bound under names
        # of their own: parameters named as columns would join the UPDATE's SET.
        self._insert_reply_answering = None
        if self.dialect == "postgresql":
            named = insert(Message).values(
                {c: bindparam(f"reply_{c}", type_=Message.__table__.c[c].type) for c in _REPLY_ROW}
            )
            self._insert_reply_answering = (
                named.on_conflict_do_update(
                    index_elements=["reply_to_id"],
                    set_={c: named.excluded[c] for c in _REPLY_COLUMNS},
                    where=Message.status != MessageStatus.OK,
                )
                .returning(Message.id)
                .add_cte(_ANSWERED.cte("answered"))
            )
        # PostgreSQL: the three statements of every turn run by asyncpg itself (``driver_rows``)
        self._open_or_insert_pg = (
            self.driver_statement(_open_or_insert(columns, given))
            if self.dialect == "postgresql"
            else None
        )
        self._turn_context_pg = self.driver_statement(_SELECT_TURN_CONTEXT)
        self._turn_contexts_pg = self.driver_statement(_SELECT_TURN_CONTEXTS)
        self._turn_contexts = (
            Batcher(self._read_turn_contexts) if self._turn_context_pg is not None else None
        )
        self._insert_reply_answering_pg = (
            self.driver_statement(self._insert_reply_answering)
            if self._insert_reply_answering is not None
            else None
        )
        self._insert_replies_pg = (
            self.driver_statement(_insert_replies()) if self.dialect == "postgresql" else None
        )
        self._replies = Batcher(self._store_replies) if self._insert_replies_pg else None
        self._insert_into_actives_pg = (
            self.driver_statement(_insert_into_actives()) if self.dialect == "postgresql" else None
        )
        self._user_messages = (
            Batcher(self._insert_user_messages) if self._insert_into_actives_pg else None
        )
        self._storing_alone: set[asyncio.Task[None]] = set()  # ``_stored_alone``'s, running
        self._insert_conversation = (
            insert(Conversation)
            .on_conflict_do_nothing(
                index_elements=["platform", "external_key"], index_where=text("status = 'active'")
            )
            .returning(Conversation.id)
        )

    # -- the gateway's writes ------------------------------------------------------------------

    async def record_user_message(
        self, msg: InboundMessage, reply_route: dict[str, Any] | None = None
    ) -> RecordedMessage | None:
        """Store a user's message in its chat's active conversation, opening one if needed.
        ``reply_route`` (where its reply goes) marks it as awaiting a reply until one is stored.

        Returns None, and writes nothing, when the same platform event was stored before. The
        common case (the chat has an active conversation) is one INSERT … SELECT statement, on
        PostgreSQL one for all the messages that come at about the same moment; on PostgreSQL a
        chat's first message also opens its conversation, in one statement.
        """
        row = {
            "role": "user",
            "content": msg.text,
            "platform": msg.platform,
            "platform_message_id": msg.message_id,
            "dedupe_key": msg.dedupe_key,
            "user_id": msg.user_id,
            "user_name": msg.user_name,
            "status": MessageStatus.OK,
            "created_at": utcnow(),
            "reply_route": dumps(reply_route) if reply_route else None,
        }
        params = {**row, "external_key": msg.conversation_key}
        found: Sequence[Any] | None
        if self._user_messages is not None:
            found = await self._user_messages(params)
        else:
            async with self.connect() as conn:
                found = (await conn.execute(self._insert_into_active, params)).first()
        if found is not None:
            # (the route itself comes back: SQLite's RETURNING says "reply_route IS NULL" is
            # false of a NULL it just wrote)
            handed_off = found[2] is None and reply_route is not None
            return RecordedMessage(found[1], found[0], handed_off=handed_off)
        async with self.connect() as conn:
            if await conn.scalar(_SELECT_DEDUPE, {"dedupe_key": msg.dedupe_key}) is not None:
                return None
            # no active conversation (the INSERT … SELECT found none): open one straight away
            conv_id = await self._active_conversation(conn, msg, open_first=True)
            message_id = await conn.scalar(
                self._insert_user_message, {**row, "conversation_id": conv_id}
            )
        if message_id is None:
            return None
        return RecordedMessage(conversation_id=conv_id, message_id=message_id)

    async def _insert_user_messages(
        self, asked: list[dict[str, Any]]
    ) -> list[Sequence[Any] | Exception | asyncio.Future[Sequence[Any] | None] | None]:
        """PostgreSQL: the user messages that come at about the same moment (``Batcher``), each
        into its chat's active conversation, by one statement: for each, the row stored (id,
        conversation id, reply route) or None (a duplicate, or another gateway opened its chat's
        conversation meanwhile: the caller goes the long way). A chat's first message of the
        batch goes in the statement; any later one, and any the statement did not store (its
        chat has no active conversation), goes after it, alone, by ``_open_or_insert``: a chat's
        messages in turn, in the order they came, and different chats' side by side (at most
        ``ALONE_AT_ONCE`` statements at a time), so that new chats' first messages arriving
        together do not wait a round trip for each chat before them. When the batch's statement
        fails for anything but a lost database, each message is stored alone."""
        assert self._open_or_insert_pg is not None
        together: list[int] = []  # a chat's first message, and a dedupe key's first
        seen: set[object] = set()
        for i, params in enumerate(asked):
            chat, key = _chat(params), params["dedupe_key"]
            if chat not in seen and key not in seen:
                together.append(i)
            seen.update((chat, key))
        results: list[Sequence[Any] | Exception | asyncio.Future[Sequence[Any] | None] | None]
        results = [None] * len(asked)
        alone: Sequence[int] = range(len(asked))
        if len(together) > 1:
            assert self._insert_into_actives_pg is not None
            batch = [asked[i] for i in together]
            params = {f"messages_{c}": [p[c] for p in batch] for c in _USER_MESSAGE_ROW}
            rows = await self._batch_rows(self._insert_into_actives_pg, params, "messages")
            if rows is not None:
                stored = {row[3]: row[:3] for row in rows}  # by dedupe key
                for i in together:
                    results[i] = stored.get(asked[i]["dedupe_key"])
                alone = [i for i, result in enumerate(results) if result is None]
        chats: dict[tuple[str, str], list[int]] = {}
        for i in alone:
            chats.setdefault(_chat(asked[i]), []).append(i)
        loop = asyncio.get_running_loop()
        at_once = asyncio.Semaphore(ALONE_AT_ONCE)
        for of_chat in chats.values():
            answers: list[asyncio.Future[Sequence[Any] | None]] = []
            for i in of_chat:
                results[i] = answer = loop.create_future()
                answers.append(answer)
            storing = self._stored_alone([asked[i] for i in of_chat], answers, at_once)
            if len(chats) == 1:  # (the common batch, one message) nobody to go side by side with
                await storing
                continue
            task = asyncio.create_task(storing)
            self._storing_alone.add(task)
            task.add_done_callback(self._storing_alone.discard)
        return results

    async def _stored_alone(
        self,
        messages: list[dict[str, Any]],
        answers: list[asyncio.Future[Sequence[Any] | None]],
        at_once: asyncio.Semaphore,
    ) -> None:
        """PostgreSQL: one chat's messages by ``_open_or_insert``, in turn, each answered as
        it is stored (or with its own error); ``at_once`` bounds the statements of a batch
        running at a time."""
        assert self._open_or_insert_pg is not None
        try:
            for params, answer in zip(messages, answers, strict=True):
                try:
                    async with at_once:
                        found = await self.driver_rows(self._open_or_insert_pg, params)
                except Exception as exc:  # its own caller hears of it
                    answer.set_exception(exc)
                else:
                    answer.set_result(next(iter(found), None))
        finally:  # cancelled midway (the store stopping): the rest are told so
            for answer in answers:
                answer.cancel()

    async def awaiting_reply(self, dedupe_key: str) -> AwaitingMessage | None:
        """The message stored under ``dedupe_key`` if it still awaits its reply: a platform's
        retry of a message whose turn was lost is answered, not dropped as a duplicate."""
        async with self.connect() as conn:
            row = (await conn.execute(_SELECT_AWAITING_KEY, {"dedupe_key": dedupe_key})).first()
        return _awaiting(row) if row is not None else None

    async def awaiting_replies(self, older_than: datetime, limit: int) -> list[AwaitingMessage]:
        """Messages stored before ``older_than`` that still await their reply, oldest first: one
        query on a partial index that holds only those messages."""
        params = {"older_than": older_than, "limit": limit}
        async with self.connect() as conn:
            rows = (await conn.execute(_SELECT_AWAITING, params)).all()
        return [_awaiting(row) for row in rows]

    async def _active_conversation(
        self, conn: AsyncConnection, msg: InboundMessage, *, open_first: bool = False
    ) -> int:
        """The chat's active conversation, opened if there is none. ``open_first`` when the
        caller just saw none: try opening before looking (one round trip fewer)."""
        key = {"platform": msg.platform, "external_key": msg.conversation_key}
        for attempt in range(3):
            if not (open_first and attempt == 0):
                conv_id = await conn.scalar(_SELECT_ACTIVE, key)
                if conv_id is not None:
                    return conv_id
            now = utcnow()
            conv_id = await conn.scalar(
                self._insert_conversation,
                {
                    **key,
                    "user_id": msg.user_id,
                    "user_name": msg.user_name,
                    "status": ConversationStatus.ACTIVE,
                    "message_count": 0,
                    "created_at": now,
                    "last_activity_at": now,
                },
            )
            if conv_id is not None:
                return conv_id
            # another gateway opened it in between: read it
        raise StorageUnavailable(f"cannot open a conversation for {msg.conversation_key}")

    async def reset_conversation(self, platform: str, external_key: str) -> bool:
        """Close the chat's active conversation (it stays in the logs); the next message opens a
        new one. Returns whether there was one to close."""
        async with self.connect() as conn:
            result = await conn.execute(
                update(Conversation)
                .where(
                    Conversation.platform == platform,
                    Conversation.external_key == external_key,
                    chat_active(),
                )
                .values(status=ConversationStatus.CLOSED)
            )
        return bool(result.rowcount)

    async def set_user_names(self, platform: str, names: dict[str, str]) -> None:
        """Fill in users' display names (user id -> name) where they were not known when their
        messages were stored: a channel that looks names up after the ack, so that the ack
        never waits for one. Two statements for any number of users."""
        if not names:
            return
        users = list(names)
        theirs = select(Conversation.id).where(
            Conversation.platform == platform, Conversation.user_id.in_(users)
        )
        async with self.connect() as conn:
            await conn.execute(
                update(Conversation)
                .where(Conversation.id.in_(theirs), Conversation.user_name.is_(None))
                .values(user_name=case(names, value=Conversation.user_id))
            )
            await conn.execute(
                update(Message)
                .where(
                    Message.conversation_id.in_(theirs),
                    Message.user_id.in_(users),
                    Message.user_name.is_(None),
                )
                .values(user_name=case(names, value=Message.user_id))
            )

    # -- the worker's reads and writes ---------------------------------------------------------

    async def turn_context(
        self, conversation_id: int, message_id: int, *, limit: int = 200
    ) -> TurnContext:
        """What a worker needs to answer ``message_id``, in one query: the reply already stored
        for it (a redelivered turn), and the newest ``limit`` good messages up to it, oldest
        first, each reply right after the message it answers, as the model sees them. A reply
        stored after newer user messages (the user sent several at once) has an id past theirs:
        it is fetched as well, by the rows after ``message_id`` that reply to it or to an
        earlier one. Only the columns a prompt needs: this runs on every turn. On PostgreSQL
        the turns that ask at about the same moment (those a worker received together) are read
        by one statement."""
        rows: Sequence[Sequence[Any]]
        if self._turn_contexts is not None:
            rows = await self._turn_contexts((conversation_id, message_id, limit + 1))
        else:
            params = {"conversation_id": conversation_id, "message_id": message_id,
                      "limit": limit + 1}  # fmt: skip
            async with self.connect() as conn:
                rows = (await conn.execute(_SELECT_TURN_CONTEXT, params)).all()
        return _turn_context_of(rows, message_id, limit)

    async def _read_turn_contexts(
        self, asked: list[tuple[int, int, int]]
    ) -> list[Sequence[Sequence[Any]]]:
        """PostgreSQL: the rows of each (conversation, message, limit) asked in one batch
        (``Batcher``), read by one statement (by the one-message statement when one is asked)."""
        assert self._turn_context_pg is not None and self._turn_contexts_pg is not None
        if len(asked) == 1:
            ((conversation_id, message_id, limit),) = asked
            one = {"conversation_id": conversation_id, "message_id": message_id, "limit": limit}
            return [await self.driver_rows(self._turn_context_pg, one)]
        conversation_ids, message_ids, limits = (
            list(column) for column in zip(*asked, strict=True)
        )
        params = {"conversation_ids": conversation_ids, "message_ids": message_ids,
                  "limits": limits}  # fmt: skip
        each: list[list[Sequence[Any]]] = [[] for _ in asked]
        # each message's rows, by the position they end with (in runs: no step a row in Python)
        for k, rows in itertools.groupby(
            await self.driver_rows(self._turn_contexts_pg, params), _POSITION
        ):
            each[k - 1].extend(rows)
        return list(each)

    async def messages_before(self, conversation_id: int, message_id: int) -> int:
        """How many good messages of the conversation come before ``message_id``: the stored
        position of a message, which does not move as the conversation grows (an index-only
        count, asked only of conversations longer than a prompt reads)."""
        async with self.connect() as conn:
            found = await conn.scalar(
                _COUNT_BEFORE, {"conversation_id": conversation_id, "message_id": message_id}
            )
        return int(found or 0)

    async def awaits_later(self, conversation_id: int, message_id: int, user_id: str) -> bool:
        """Whether a message of ``user_id`` after ``message_id`` in the conversation awaits its
        reply (FRONTDESK_BURST_MS: its turn answers both)."""
        async with self.connect() as conn:
            found = await conn.scalar(
                _LATER_AWAITING,
                {"conversation_id": conversation_id, "message_id": message_id, "user_id": user_id},
            )
        return found is not None

    async def mark_answered(self, message_id: int) -> None:
        """The message has its reply (found stored on a redelivery): it awaits nothing more."""
        async with self.connect() as conn:
            await conn.execute(_ANSWERED, {"message_id": message_id})

    async def reply_to(self, message_id: int) -> StoredMessage | None:
        """The stored reply to a user message, if a worker already answered it."""
        async with self.connect() as conn:
            row = (await conn.execute(_SELECT_REPLY, {"message_id": message_id})).first()
        return StoredMessage(*row) if row else None

    async def record_reply(
        self,
        conversation_id: int,
        reply_to_id: int,
        content: str,
        figures: ReplyFigures,
        *,
        error: str | None = None,
        sources: Sequence[dict[str, Any]] = (),
        body_chars: int | None = None,
    ) -> int:
        """Store the assistant's reply to a user message, with its figures; ``error`` marks a
        failed one. ``sources``: the knowledge-base chunks the reply was given; ``body_chars``:
        where the reply's own text ends, before the list of sources shown after it (a prompt
        holds only the reply's own text). Idempotent: a second reply to the same message returns the first one's id,
        unless the first was a failure, which the new reply replaces. The message stops
        awaiting its reply at once with it: in one statement (PostgreSQL, one for all the replies
        stored at about the same moment) or transaction."""
        row = {
            "conversation_id": conversation_id,
            "role": "assistant",
            "content": content,
            "reply_to_id": reply_to_id,
            "tokens_in": figures.tokens_in,
            "tokens_out": figures.tokens_out,
            "ttft_ms": figures.ttft_ms,
            "latency_ms": figures.latency_ms,
            "model": figures.model,
            "status": MessageStatus.ERROR if error else MessageStatus.OK,
            "error": error,
            "created_at": utcnow(),
            "kb_sources": json.dumps(list(sources), ensure_ascii=False) if sources else None,
            "body_chars": body_chars,
        }
        message_id: int | None
        if self._replies is not None:
            message_id = await self._replies(row)
        else:
            async with self.transaction() as conn:
                message_id = await conn.scalar(self._insert_reply, row)
                await conn.execute(_ANSWERED, {"message_id": reply_to_id})
        if message_id is not None:
            return message_id
        existing = await self.reply_to(reply_to_id)
        assert existing is not None, "conflicting reply vanished"
        return existing.id

    async def _store_replies(self, rows: list[dict[str, Any]]) -> list[int | Exception | None]:
        """PostgreSQL: the replies of the turns that store one at about the same moment (those
        a worker answered together; ``Batcher``), each with its message's "answered", by one
        statement: the id of each reply stored (None where a good reply was there already).
        One reply, or two to the same message, go by the one-reply statement. When the batch's
        statement fails for anything but a lost database, each reply is stored alone, so that
        a reply that cannot be stored fails its own turn only."""
        if len(rows) > 1 and len({row["reply_to_id"] for row in rows}) == len(rows):
            assert self._insert_replies_pg is not None
            params = {f"replies_{c}": [row[c] for row in rows] for c in _REPLY_ROW}
            stored = await self._batch_rows(self._insert_replies_pg, params, "replies")
            if stored is not None:
                ids = {reply_to_id: id_ for id_, reply_to_id in stored}
                return [ids.get(row["reply_to_id"]) for row in rows]
        results: list[int | Exception | None] = []
        for row in rows:
            try:
                results.append(await self._store_reply(row))
            except Exception as exc:  # its own caller hears of it
                results.append(exc)
        return results

    async def _batch_rows(
        self, statement: DriverStatement, params: dict[str, list[Any]], what: str
    ) -> Sequence[Sequence[Any]] | None:
        """The rows of a batch statement (its values bound as arrays), or None when it failed
        for anything but a lost database (logged, with no stored text): the caller then stores
        each row alone. A lost database raises ``StorageUnavailable`` to every caller."""
        try:
            return await self.driver_rows(statement, params)
        except StorageUnavailable:
            raise
        except Exception as exc:
            count = len(next(iter(params.values())))
            log.warning("%d %s could not be stored together (%s); storing each alone",
                        count, what, type(exc).__name__)  # fmt: skip
            return None

    async def _store_reply(self, row: dict[str, Any]) -> int | None:
        """PostgreSQL: one reply and its message's "answered", by one statement."""
        assert self._insert_reply_answering_pg is not None
        params = {f"reply_{c}": value for c, value in row.items()}
        params["message_id"] = row["reply_to_id"]
        stored = await self.driver_rows(self._insert_reply_answering_pg, params)
        return stored[0][0] if stored else None

    # -- the admin CLI's reads -----------------------------------------------------------------

    async def list_conversations(
        self, *, limit: int | None = 50, where: Sequence[ColumnElement[bool]] = ()
    ) -> list[ConversationSummary]:
        """Conversations by last activity, newest first, each with its last message; ``where``
        narrows them (the admin CLI's filters)."""
        last_id = (
            select(func.max(Message.id))
            .where(Message.conversation_id == Conversation.id)
            .correlate(Conversation)
            .scalar_subquery()
        )
        last_text = select(Message.content).where(Message.id == last_id).scalar_subquery()
        query = (
            select(*_CONVERSATION_COLUMNS, last_text)
            .where(*where)
            .order_by(Conversation.last_activity_at.desc(), Conversation.id.desc())
        )
        if limit:
            query = query.limit(limit)
        async with self.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [ConversationSummary(*row) for row in rows]

    async def conversation(
        self, conversation_id: int
    ) -> tuple[ConversationSummary, list[StoredMessage]]:
        """One conversation and all its messages, oldest first. Raises NotFound."""
        async with self.connect() as conn:
            conv = (
                await conn.execute(
                    select(*_CONVERSATION_COLUMNS).where(Conversation.id == conversation_id)
                )
            ).first()
            if conv is None:
                raise NotFound(f"no conversation with id {conversation_id}")
            rows = (
                await conn.execute(
                    select(*_MESSAGE_COLUMNS)
                    .where(Message.conversation_id == conversation_id)
                    .order_by(Message.id)
                )
            ).all()
        return ConversationSummary(*conv), [StoredMessage(*row) for row in rows]


# the columns of a stored reply
_REPLY_ROW = (
    "conversation_id", "role", "content", "reply_to_id", "tokens_in", "tokens_out", "ttft_ms",
    "latency_ms", "model", "status", "error", "created_at", "kb_sources", "body_chars",
)  # fmt: skip
# What a new reply overwrites in a stored failure: its text, status and time, and every figure
_REPLY_COLUMNS = (
    "content",
    "status",
    "error",
    "created_at",
    "kb_sources",
    "body_chars",
    *(f.name for f in dataclasses.fields(ReplyFigures)),
)

# Hot-path statements, built once: SQLAlchemy then only binds parameters.
_SELECT_ACTIVE = select(Conversation.id).where(
    Conversation.platform == bindparam("platform"),
    Conversation.external_key == bindparam("external_key"),
    chat_active(),
)
_TURN_COLUMNS = (
    Message.id,
    Message.role,
    Message.content,
    Message.status,
    Message.reply_route.is_not(None),
    Message.body_chars,
    Message.reply_to_id,
)


def _turn_context(
    conversation_id: ColumnElement[int],
    message_id: ColumnElement[int],
    limit: ColumnElement[int],
    position: ColumnElement[int],
    *,
    lateral: bool = False,
) -> CompoundSelect:
    """The rows ``turn_context`` reads for one message (``_turn_context_of`` makes them history),
    each ending with ``position``: that of the message among those read together (1 when alone).
    ``lateral``: for a LATERAL subquery (PostgreSQL), whose parts correlate only at its top
    level; SQLite takes no parenthesized part, so its first part is a subquery."""
    columns = (*_TURN_COLUMNS, position.label("k"))
    # the newest messages up to the one to answer: an index range scan, newest first
    newest = (
        select(*columns)
        .where(Message.conversation_id == conversation_id, Message.id <= message_id)
        .order_by(Message.id.desc())
        .limit(limit)
    )
    return union_all(
        newest if lateral else select(newest.subquery()),
        # replies stored after it (to it, or to earlier messages): the few rows past it
        select(*columns).where(
            Message.conversation_id == conversation_id,
            Message.id > message_id,
            Message.reply_to_id <= message_id,
        ),
    )


_SELECT_TURN_CONTEXT = _turn_context(
    bindparam("conversation_id"),
    bindparam("message_id"),
    bindparam("limit"),
    literal_column("1", Integer),
)
# PostgreSQL: the turn contexts of many messages in one statement, each row ending with the position
# (from 1) of the message it is for: the turns a worker received together are read together
_ASKED = (
    func.unnest(
        bindparam("conversation_ids", type_=ARRAY(BigInteger)),
        bindparam("message_ids", type_=ARRAY(BigInteger)),
        bindparam("limits", type_=ARRAY(Integer)),
    )
    .table_valued("conversation_id", "message_id", "lim", with_ordinality="k")
    .render_derived(name="asked")
)
_ASKED_ROWS = (
    _turn_context(
        _ASKED.c.conversation_id, _ASKED.c.message_id, _ASKED.c.lim, _ASKED.c.k, lateral=True
    )
    .subquery()
    .lateral("turn_rows")
)
_SELECT_TURN_CONTEXTS = select(*_ASKED_ROWS.c).select_from(_ASKED.join(_ASKED_ROWS, true()))
_COUNT_BEFORE = (
    select(func.count())
    .select_from(Message)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.id < bindparam("message_id"),
        Message.status == MessageStatus.OK,
    )
)
_SELECT_DEDUPE = select(Message.id).where(Message.dedupe_key == bindparam("dedupe_key"))
_AWAITING_COLUMNS = (Message.conversation_id, Message.id, Message.reply_route)
_SELECT_AWAITING_KEY = select(*_AWAITING_COLUMNS).where(
    Message.dedupe_key == bindparam("dedupe_key"), Message.reply_route.is_not(None)
)
_SELECT_AWAITING = (
    select(*_AWAITING_COLUMNS)
    .where(Message.reply_route.is_not(None), Message.created_at < bindparam("older_than"))
    .order_by(Message.created_at)
    .limit(bindparam("limit"))
)
_LATER_AWAITING = (
    select(Message.id)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.id > bindparam("message_id"),
        Message.role == "user",
        Message.user_id == bindparam("user_id"),
        Message.reply_route.is_not(None),
    )
    .limit(1)
)
_ANSWERED = (
    update(Message)
    .where(Message.id == bindparam("message_id"), Message.reply_route.is_not(None))
    .values(reply_route=None)
)


def _chat(params: dict[str, Any]) -> tuple[str, str]:
    return params["platform"], params["external_key"]


# the columns of a user message, bound as arrays (``messages_<column>``) by ``_insert_into_actives``
_USER_MESSAGE_ROW = (
    "platform", "external_key", "role", "content", "platform_message_id", "dedupe_key",
    "user_id", "user_name", "status", "created_at", "reply_route",
)  # fmt: skip


def _insert_into_actives() -> Any:
    """PostgreSQL: many user messages, each into its chat's active conversation (no reply route
    while a person has it), as ``_insert_into_active`` puts one, in one statement. A message
    whose chat has no active conversation, or stored before (its dedupe key), is not stored.
    Returns (id, conversation id, reply route, dedupe key) of each message stored."""
    types = {c: Message.__table__.c[c].type for c in _USER_MESSAGE_ROW if c != "external_key"}
    types["external_key"] = Conversation.__table__.c.external_key.type
    new = (
        func.unnest(*(bindparam(f"messages_{c}", type_=ARRAY(types[c])) for c in _USER_MESSAGE_ROW))
        .table_valued(*_USER_MESSAGE_ROW)
        .render_derived(name="new_messages")
    )
    stored = ("role", "content", "platform_message_id", "dedupe_key", "user_id", "user_name",
              "status", "created_at")  # fmt: skip
    # each message's chat looked up alone (LATERAL), by the active chats' unique index: joined
    # as sets, a table without statistics got a hash join that read every active conversation
    chat = (
        select(Conversation.id, Conversation.handoff_id)
        .where(
            Conversation.platform == new.c.platform,
            Conversation.external_key == new.c.external_key,
            chat_active(),
        )
        .limit(1)
        .lateral("chat")
    )
    into_active = (
        select(
            chat.c.id,
            new.c.platform,
            *(new.c[c] for c in stored),
            case((chat.c.handoff_id.is_(None), new.c.reply_route)),
        )
        .join_from(new, chat, true())
        # in the order of their conversations, whose rows the counter trigger locks: two
        # batches never wait on each other's conversations in a cycle
        .order_by(chat.c.id)
    )
    columns = ["conversation_id", "platform", *stored, "reply_route"]
    return (
        postgresql.insert(Message)
        .from_select(columns, into_active)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Message.id, Message.conversation_id, Message.reply_route, Message.dedupe_key)
    )


def _open_or_insert(columns: list[str], values: list[Any]) -> Any:
    """PostgreSQL: ``_insert_into_active``'s message (``columns``, ``values``: its statement's),
    into its chat's active conversation or, where the chat has none, into one that the same
    statement opens: one round trip, where a chat's first message took the one-message statement
    and then a transaction (the duplicate check, the conversation, the message). Stores nothing,
    and opens nothing, for a message stored before (its dedupe key); stores nothing when another
    gateway opened the chat's conversation meanwhile (the caller then goes the long way).
    Returns the message's (id, conversation id, reply route), as ``_insert_into_active`` does."""
    active = _SELECT_ACTIVE.add_columns(Conversation.handoff_id).cte("active")
    conversation = Conversation.__table__.c
    opening = select(
        *(bindparam(c, type_=conversation[c].type) for c in _OPENED_FROM_MESSAGE),
        bindparam("opened_status", ConversationStatus.ACTIVE, type_=conversation.status.type),
        bindparam("opened_count", 0, type_=conversation.message_count.type),
        bindparam("created_at", type_=conversation.created_at.type),
        bindparam("created_at", type_=conversation.last_activity_at.type),
    ).where(~select(active.c.id).exists(), ~_SELECT_DEDUPE.exists())
    opened = (
        postgresql.insert(Conversation)
        .from_select(
            [*_OPENED_FROM_MESSAGE, "status", "message_count", "created_at", "last_activity_at"],
            opening,
        )
        .on_conflict_do_nothing(
            index_elements=["platform", "external_key"], index_where=text("status = 'active'")
        )
        .returning(Conversation.id, Conversation.handoff_id)
        .cte("opened")
    )
    target = union_all(select(active.c.id, active.c.handoff_id), select(opened)).subquery("target")
    route = case((target.c.handoff_id.is_(None), bindparam("reply_route", type_=Text())))
    return (
        postgresql.insert(Message)
        .from_select(columns, select(target.c.id, *values, route))
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Message.id, Message.conversation_id, Message.reply_route)
    )


# what a conversation that a user message opens takes from the message's parameters
_OPENED_FROM_MESSAGE = ("platform", "external_key", "user_id", "user_name")


def _insert_replies() -> Any:
    """PostgreSQL: many replies, each replacing a stored failure as ``record_reply``'s does,
    and their messages' "answered", in one statement (a data-modifying WITH); each column's
    values bound as one array (``replies_<column>``). Returns (id, reply_to_id) of each reply
    stored."""
    columns = Message.__table__.c
    new = (
        func.unnest(*(bindparam(f"replies_{c}", type_=ARRAY(columns[c].type)) for c in _REPLY_ROW))
        .table_valued(*_REPLY_ROW)
        .render_derived(name="new_replies")
    )
    answered = (
        update(Message)
        .where(
            Message.id == any_(bindparam("replies_reply_to_id", type_=ARRAY(BigInteger))),
            Message.reply_route.is_not(None),
        )
        .values(reply_route=None)
        .cte("answered")
    )
    # in the order of their conversations, whose rows the counter trigger locks: two batches
    # never wait on each other's conversations in a cycle
    ordered = select(*new.c).order_by(new.c.conversation_id)
    replies = postgresql.insert(Message).from_select(list(_REPLY_ROW), ordered)
    return (
        replies.on_conflict_do_update(
            index_elements=["reply_to_id"],
            set_={c: replies.excluded[c] for c in _REPLY_COLUMNS},
            where=Message.status != MessageStatus.OK,
        )
        .returning(Message.id, Message.reply_to_id)
        .add_cte(answered)
    )


_MESSAGE_ID = operator.itemgetter(0)  # of a row of ``_turn_context``
_POSITION = operator.itemgetter(len(_TURN_COLUMNS))  # the last: the message it was read for


def _turn_context_of(rows: Sequence[Sequence[Any]], message_id: int, limit: int) -> TurnContext:
    """``turn_context``'s answer from its rows (``_turn_context``'s), in one pass: the reply
    stored for ``message_id``, and the newest ``limit`` good messages up to it, oldest first,
    each reply right after the message it answers, each as the model sees it."""
    reply = None
    late: dict[int, TurnMessage] = {}  # user message id -> its reply stored after newer ones
    chats: list[ChatMessage] = []  # newest first, as the rows are read
    ids: list[int] = []
    awaiting: list[int] = []
    ok = MessageStatus.OK
    new = tuple.__new__  # what ``ChatMessage._make`` does, without a Python call a row
    for id_, role, content, status, waits, body_chars, reply_to_id, _k in sorted(
        rows, key=_MESSAGE_ID, reverse=True
    ):
        if body_chars is not None:  # a reply's own text, without the sources listed after it
            content = content[:body_chars]
        if reply_to_id == message_id:
            reply = TurnMessage(id_, role, content, status)
        elif id_ > message_id:
            late[reply_to_id] = TurnMessage(id_, role, content, status)
        elif status == ok:
            chats.append(
                new(ChatMessage, (role, content)) if role in CHAT_ROLES else as_chat(role, content)
            )
            ids.append(id_)
            if waits:
                awaiting.append(id_)
    if late:  # each late reply goes right after the message it answers
        merged: list[ChatMessage] = []
        merged_ids: list[int] = []
        for chat, id_ in zip(chats, ids, strict=True):
            answer = late.get(id_)
            if answer is not None and answer.status == ok:
                merged.append(as_chat(answer.role, answer.content))
                merged_ids.append(answer.id)
            merged.append(chat)
            merged_ids.append(id_)
        chats, ids = merged, merged_ids
    history, kept = chats[:limit], ids[:limit]
    history.reverse()
    kept.reverse()
    if len(ids) > limit and awaiting:  # only those of the messages kept
        within = set(kept)
        awaiting = [i for i in awaiting if i in within]
    awaiting.reverse()
    return TurnContext(reply, history, kept, awaiting)


def _awaiting(row: Any) -> AwaitingMessage:
    return AwaitingMessage(row[0], row[1], json.loads(row[2]))


_SELECT_REPLY = select(*_MESSAGE_COLUMNS).where(Message.reply_to_id == bindparam("message_id"))
