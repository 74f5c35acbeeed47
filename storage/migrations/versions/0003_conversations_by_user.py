"""Index conversations by user: a user's conversations are found without a scan (display names
filled in after the ack, and, later, erasure of one user's data).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_conversations_platform_user", "conversations", ["platform", "user_id"])


def downgrade() -> None:
    op.drop_index("ix_conversations_platform_user", table_name="conversations")
