"""SQLAlchemy models for conversations and their messages.

The indexes serve the two hot reads: "newest N messages of a conversation" (the worker builds every
prompt with it) and "conversations by last activity" (the admin CLI lists them). ``dedupe_key`` is
unique, so a replayed platform event inserts nothing; ``reply_to_id`` is unique, so a turn that is
delivered twice stores one reply. ``reply_route`` is set on a user message until its reply is
stored; a partial index on it serves the sweep that queues again what no turn answers.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL; INTEGER on SQLite, where only "INTEGER PRIMARY KEY" autoincrements.
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class ConversationStatus(enum.StrEnum):
    """Where a conversation stands."""

    ACTIVE = "active"
    """It takes its chat's new messages; a chat has at most one active conversation."""
    CLOSED = "closed"
    """Ended by /reset: the chat's next message opens a new one. Kept for the logs."""


class MessageStatus(enum.StrEnum):
    """Whether a message stands as it is."""

    OK = "ok"
    """A user's message, or a reply that was given."""
    ERROR = "error"
    """A reply that failed (``Message.error`` says why). A new answer to the same message
    replaces it: a stored failure is not a reply."""


REFUSED = "refused: "
"""How the ``error`` of a message admission control refused begins (then the reason: "rate",
"busy" or "budget"); its ``content`` is what the user was told. Not a turn: stats count it
apart."""


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    external_key: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str | None] = mapped_column(String(255))
    user_name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=ConversationStatus.ACTIVE)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the handoff to a person it is in now (0012); NULL while the bot has it
    handoff_id: Mapped[int | None] = mapped_column(BigId)

    __table_args__ = (
        Index("ix_conversations_last_activity", "last_activity_at"),
        Index("ix_conversations_platform_key", "platform", "external_key"),
        Index("ix_conversations_platform_user", "platform", "user_id"),
        # At most one active conversation per platform chat: two gateways racing to open one
        # cannot both win.
        Index(
            "uq_conversations_active",
            "platform",
            "external_key",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


def chat_active() -> ColumnElement[bool]:
    """``status = 'active'`` with the value written into the statement, not bound: so that the
    planner matches a lookup of a chat's active conversation (its platform and key) to the
    partial unique index above even in the generic plan PostgreSQL switches to once a statement
    has been prepared and run a few times on a connection. Against a bound value it cannot use
    that index, and on a table without statistics yet (a new or freshly restored database) it
    read every conversation of the platform for each message."""
    return Conversation.status == literal_column(f"'{ConversationStatus.ACTIVE.value}'")


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    platform: Mapped[str | None] = mapped_column(String(32))
    platform_message_id: Mapped[str | None] = mapped_column(String(255))
    dedupe_key: Mapped[str | None] = mapped_column(String(512), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(255))
    user_name: Mapped[str | None] = mapped_column(String(255))
    reply_to_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("messages.id", ondelete="SET NULL"), unique=True
    )
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[float | None]
    latency_ms: Mapped[float | None]
    model: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.OK)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A user message awaiting its reply: where the reply goes (JSON), cleared once one is stored
    reply_route: Mapped[str | None] = mapped_column(Text)
    # A reply given knowledge-base passages: those chunks (JSON), and the length of the reply's
    # own text, before the list of sources shown after it
    kb_sources: Mapped[str | None] = mapped_column(Text)
    body_chars: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # The sweep's query: messages still awaiting a reply, oldest first
        Index(
            "ix_messages_awaiting_reply",
            "created_at",
            sqlite_where=text("reply_route IS NOT NULL"),
            postgresql_where=text("reply_route IS NOT NULL"),
        ),
    )


class HandoffState(enum.StrEnum):
    """Where a handoff to a person stands."""

    WAITING = "waiting"
    """Posted to the desk; no person has answered yet. The bot stays quiet."""
    HUMAN = "human"
    """A person claimed it or wrote to the customer; the bot stays quiet."""
    RESOLVED = "resolved"
    """Over: the bot has the conversation again."""


class Handoff(Base):
    """A customer handed to the desk (0012): why, where the customer's replies go, and the
    desk's thread for it."""

    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    reason: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=HandoffState.WAITING)
    route: Mapped[str] = mapped_column(Text)  # the customer's InboundMessage.route, JSON
    desk: Mapped[str] = mapped_column(String(300))  # "slack:C0DESK", "telegram:-100123"
    desk_thread: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    agent_id: Mapped[str | None] = mapped_column(String(255))
    first_human_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_handoffs_conversation", "conversation_id"),
        Index("ix_handoffs_desk_thread", "desk", "desk_thread"),
    )


class Rating(enum.StrEnum):
    UP = "up"
    DOWN = "down"


class Feedback(Base):
    """A user's rating of one of the bot's answers (0013): one per user and answer, changed in
    place."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigId, ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255))
    rating: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("message_id", "user_id", name="uq_feedback_message_user"),
        Index("ix_feedback_updated_at", "updated_at"),
    )


class KbSource(Base):
    """A help-centre article, named by its path relative to the folder it was added from."""

    __tablename__ = "kb_sources"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(1024), unique=True)
    title: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    n_chunks: Mapped[int] = mapped_column(Integer)
    n_bytes: Mapped[int] = mapped_column(BigInteger)
    origin: Mapped[str | None] = mapped_column(Text)  # the folder it was added from
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KbChunk(Base):
    """A piece of an article, with its title and heading path (full-text indexed, 0007)."""

    __tablename__ = "kb_chunks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_sources.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    headings: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    n_tokens: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_kb_chunks_source_position", "source_id", "position"),)


class KbVector(Base):
    """A chunk's embedding under one model: normalised float32 bytes (0008)."""

    __tablename__ = "kb_vectors"

    chunk_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("kb_chunks.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    # a model's vectors counted from the index alone (0011)
    __table_args__ = (Index("ix_kb_vectors_model_chunk", "model", "chunk_id"),)
