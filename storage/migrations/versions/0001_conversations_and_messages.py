"""Conversations and messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("external_key", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255)),
        sa.Column("user_name", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_conversations_last_activity", "conversations", ["last_activity_at"])
    op.create_index("ix_conversations_platform_key", "conversations", ["platform", "external_key"])
    op.create_index(
        "uq_conversations_active",
        "conversations",
        ["platform", "external_key"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "messages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            BigId,
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("platform", sa.String(32)),
        sa.Column("platform_message_id", sa.String(255)),
        sa.Column("dedupe_key", sa.String(512), unique=True),
        sa.Column("user_id", sa.String(255)),
        sa.Column("user_name", sa.String(255)),
        sa.Column(
            "reply_to_id", BigId, sa.ForeignKey("messages.id", ondelete="SET NULL"), unique=True
        ),
        sa.Column("tokens_in", sa.Integer()),
        sa.Column("tokens_out", sa.Integer()),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("model", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_messages_conversation_id_id", "messages", ["conversation_id", "id"])


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("conversations")
