"""The repository API: the only way the rest of frontdesk reads or writes conversation history.

Queries live here, next to the models, and return plain dataclasses, so no caller ever holds a
SQLAlchemy object or imports SQLAlchemy. Connection failures surface as ``StorageUnavailable``.
Works on SQLite (aiosqlite, WAL mode) and PostgreSQL (asyncpg).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from frontdesk.errors import ConfigError, NotFound, StorageUnavailable
from frontdesk.wire import InboundMessage

from .models import Conversation, Message, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    conversation_id: int
    message_id: int


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
    status: str = "ok"
    error: str | None = None


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
)


def _describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable url>"


class Store:
    """Conversation history on one database. ``async with Store(url) as store:`` or start()/stop()."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"FRONTDESK_DATABASE_URL is not a database URL: {url!r}") from exc
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            # Gateway and worker write from one process in embedded mode: wait for the lock.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        try:
            self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"cannot use database {_describe(url)}: {exc}") from exc
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, *, migrate: bool = False) -> None:
        """Connect, and check the schema: upgrade it when ``migrate``, else insist it is current."""
        from . import migrations

        if migrate:
            await self.upgrade()
            return
        async with self._connect() as conn:
            current = await conn.run_sync(migrations.current_revision)
        if current != migrations.head_revision():
            raise StorageUnavailable(
                f"the database schema at {_describe(self.url)} is at revision {current or 'none'}, "
                f"not {migrations.head_revision()}: run `frontdesk db upgrade`"
            )

    async def stop(self) -> None:
        await self.engine.dispose()

    async def upgrade(self) -> str:
        """Run the Alembic migrations up to head; returns the head revision."""
        from . import migrations

        async with self._connect(begin=True) as conn:
            await conn.run_sync(migrations.upgrade_to_head)
        return migrations.head_revision()

    @asynccontextmanager
    async def _connect(self, *, begin: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction when ``begin``) with connection failures translated."""
        try:
            if begin:
                async with self.engine.begin() as conn:
                    yield conn
            else:
                async with self.engine.connect() as conn:
                    yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError, OSError) as exc:
            if isinstance(exc, DBAPIError) and not _is_connection_error(exc):
                raise
            raise StorageUnavailable(
                f"cannot reach the database at {_describe(self.url)}: {_first_line(exc)}"
            ) from exc

    # -- the gateway's writes ------------------------------------------------------------------

    async def record_user_message(self, msg: InboundMessage) -> RecordedMessage | None:
        """Store a user's message in its chat's active conversation, opening one if needed.

        Returns None, and writes nothing, when the same platform event was stored before.
        """
        for attempt in range(2):
            try:
                async with self._connect(begin=True) as conn:
                    return await self._insert_user_message(conn, msg)
            except IntegrityError:
                async with self._connect() as conn:
                    seen = await conn.scalar(
                        select(Message.id).where(Message.dedupe_key == msg.dedupe_key)
                    )
                if seen is not None:
                    return None
                if attempt:
                    raise
                # Lost a race to open the chat's active conversation: the retry finds it.
        raise AssertionError("unreachable")

    async def _insert_user_message(
        self, conn: AsyncConnection, msg: InboundMessage
    ) -> RecordedMessage:
        now = utcnow()
        conv_id = await conn.scalar(
            select(Conversation.id).where(
                Conversation.platform == msg.platform,
                Conversation.external_key == msg.conversation_key,
                Conversation.status == "active",
            )
        )
        if conv_id is None:
            conv_id = await conn.scalar(
                insert(Conversation)
                .values(
                    platform=msg.platform,
                    external_key=msg.conversation_key,
                    user_id=msg.user_id,
                    user_name=msg.user_name,
                    status="active",
                    message_count=0,
                    created_at=now,
                    last_activity_at=now,
                )
                .returning(Conversation.id)
            )
        message_id = await conn.scalar(
            insert(Message)
            .values(
                conversation_id=conv_id,
                role="user",
                content=msg.text,
                platform=msg.platform,
                platform_message_id=msg.message_id,
                dedupe_key=msg.dedupe_key,
                user_id=msg.user_id,
                user_name=msg.user_name,
                status="ok",
                created_at=now,
            )
            .returning(Message.id)
        )
        await conn.execute(
            update(Conversation)
            .where(Conversation.id == conv_id)
            .values(message_count=Conversation.message_count + 1, last_activity_at=now)
        )
        assert conv_id is not None and message_id is not None
        return RecordedMessage(conversation_id=conv_id, message_id=message_id)

    async def reset_conversation(self, platform: str, external_key: str) -> bool:
        """Close the chat's active conversation (it stays in the logs); the next message opens a
        new one. Returns whether there was one to close."""
        async with self._connect(begin=True) as conn:
            result = await conn.execute(
                update(Conversation)
                .where(
                    Conversation.platform == platform,
                    Conversation.external_key == external_key,
                    Conversation.status == "active",
                )
                .values(status="closed")
            )
        return bool(result.rowcount)

    # -- the worker's reads and writes ---------------------------------------------------------

    async def history(
        self, conversation_id: int, *, up_to: int, limit: int = 200
    ) -> list[StoredMessage]:
        """The newest ``limit`` good messages of a conversation up to message ``up_to``, oldest
        first. Failed replies are left out: they are not context."""
        query = (
            select(*_MESSAGE_COLUMNS)
            .where(
                Message.conversation_id == conversation_id,
                Message.id <= up_to,
                Message.status == "ok",
            )
            .order_by(Message.id.desc())
            .limit(limit)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredMessage(*row) for row in reversed(rows)]

    async def reply_to(self, message_id: int) -> StoredMessage | None:
        """The stored reply to a user message, if a worker already answered it."""
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    select(*_MESSAGE_COLUMNS).where(Message.reply_to_id == message_id)
                )
            ).first()
        return StoredMessage(*row) if row else None

    async def record_reply(
        self,
        conversation_id: int,
        reply_to_id: int,
        content: str,
        figures: ReplyFigures,
        *,
        error: str | None = None,
    ) -> int:
        """Store the assistant's reply to a user message, with its figures; ``error`` marks a
        failed one. Idempotent: a second reply to the same message returns the first one's id."""
        now = utcnow()
        try:
            async with self._connect(begin=True) as conn:
                message_id = await conn.scalar(
                    insert(Message)
                    .values(
                        conversation_id=conversation_id,
                        role="assistant",
                        content=content,
                        reply_to_id=reply_to_id,
                        tokens_in=figures.tokens_in,
                        tokens_out=figures.tokens_out,
                        ttft_ms=figures.ttft_ms,
                        latency_ms=figures.latency_ms,
                        model=figures.model,
                        status="error" if error else "ok",
                        error=error,
                        created_at=now,
                    )
                    .returning(Message.id)
                )
                await conn.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id)
                    .values(message_count=Conversation.message_count + 1, last_activity_at=now)
                )
        except IntegrityError:
            existing = await self.reply_to(reply_to_id)
            if existing is None:
                raise
            return existing.id
        assert message_id is not None
        return message_id

    # -- the admin CLI's reads -----------------------------------------------------------------

    async def list_conversations(self, *, limit: int = 50) -> list[ConversationSummary]:
        """Conversations by last activity, newest first, each with its last message."""
        last_id = (
            select(func.max(Message.id))
            .where(Message.conversation_id == Conversation.id)
            .correlate(Conversation)
            .scalar_subquery()
        )
        last_text = select(Message.content).where(Message.id == last_id).scalar_subquery()
        query = (
            select(
                Conversation.id,
                Conversation.platform,
                Conversation.external_key,
                Conversation.user_id,
                Conversation.user_name,
                Conversation.status,
                Conversation.message_count,
                Conversation.created_at,
                Conversation.last_activity_at,
                last_text,
            )
            .order_by(Conversation.last_activity_at.desc(), Conversation.id.desc())
            .limit(limit)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [ConversationSummary(*row) for row in rows]

    async def conversation(
        self, conversation_id: int
    ) -> tuple[ConversationSummary, list[StoredMessage]]:
        """One conversation and all its messages, oldest first. Raises NotFound."""
        async with self._connect() as conn:
            conv = (
                await conn.execute(
                    select(
                        Conversation.id,
                        Conversation.platform,
                        Conversation.external_key,
                        Conversation.user_id,
                        Conversation.user_name,
                        Conversation.status,
                        Conversation.message_count,
                        Conversation.created_at,
                        Conversation.last_activity_at,
                    ).where(Conversation.id == conversation_id)
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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _is_connection_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    orig = exc.orig
    return (
        isinstance(orig, OSError | ConnectionError) or "connection" in type(orig).__name__.lower()
    )


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(inner).strip() or type(inner).__name__
    return text.splitlines()[0]
