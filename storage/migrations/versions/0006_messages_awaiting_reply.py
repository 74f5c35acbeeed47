"""Mark the user messages that still await their reply: ``reply_route`` holds where the reply
goes (``InboundMessage.route`` and the gateway that took the message) until a reply is stored.
A partial index on just those rows lets every worker's sweep find a message that was stored but
never queued, or whose turn Redis lost, with one cheap query.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("reply_route", sa.Text(), nullable=True))
    op.create_index(
        "ix_messages_awaiting_reply",
        "messages",
        ["created_at"],
        sqlite_where=sa.text("reply_route IS NOT NULL"),
        postgresql_where=sa.text("reply_route IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_awaiting_reply", table_name="messages")
    op.drop_column("messages", "reply_route")
