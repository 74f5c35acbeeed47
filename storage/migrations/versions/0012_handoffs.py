"""Handoffs to a person: one row per time a customer was handed to the desk, and on each
conversation the handoff it is in now (``handoff_id``, NULL while the bot has it). The gateway
reads it in the same statement that stores the customer's message, so a conversation a person
has gets no turn queued; the desk finds a handoff by its thread (a Slack thread, a Telegram forum
topic).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            BigId,
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("desk", sa.String(300), nullable=False),
        sa.Column("desk_thread", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_id", sa.String(255), nullable=True),
        sa.Column("first_human_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_handoffs_conversation", "handoffs", ["conversation_id"])
    op.create_index("ix_handoffs_desk_thread", "handoffs", ["desk", "desk_thread"])
    op.add_column("conversations", sa.Column("handoff_id", BigId, nullable=True))


def downgrade() -> None:
    op.drop_column("conversations", "handoff_id")
    op.drop_index("ix_handoffs_desk_thread", table_name="handoffs")
    op.drop_index("ix_handoffs_conversation", table_name="handoffs")
    op.drop_table("handoffs")
