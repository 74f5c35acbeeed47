"""PostgreSQL indexes message text with its punctuation as spaces, so that its parser sees only
words, as SQLite's FTS5 does. Before, it took ``ann@example.com``, ``example.com/returns`` or ``1.5``
for one token each, so a search for ``ann`` or ``returns`` found them on SQLite and not on
PostgreSQL. The expression is ``storage.logs.indexed_text``. SQLite is unchanged.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tsvector(expression: str) -> None:
    op.execute("DROP INDEX IF EXISTS ix_messages_content_tsv")
    op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS content_tsv")
    op.execute(
        "ALTER TABLE messages ADD COLUMN content_tsv tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('english', {expression})) STORED"
    )
    op.execute("CREATE INDEX ix_messages_content_tsv ON messages USING gin (content_tsv)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _tsvector("regexp_replace(content, '[[:punct:]]', ' ', 'g')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _tsvector("content")
