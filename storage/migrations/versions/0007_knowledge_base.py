"""The knowledge base: the operator's help-centre articles (``kb_sources``), cut into chunks
(``kb_chunks``) with a full-text index over each chunk's title, heading path and text: FTS5 with
BM25 on SQLite (an external-content table kept in step by triggers), a stored generated tsvector
with a GIN index on PostgreSQL (title and headings weighted above the text). A reply records the
chunks it was given (``messages.kb_sources``) and where its own text ends before the sources it
lists (``messages.body_chars``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kb_sources",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(1024), nullable=False, unique=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("n_chunks", sa.Integer(), nullable=False),
        sa.Column("n_bytes", sa.BigInteger(), nullable=False),
        # the folder it was added from (absolute), which `kb sync` of that folder may prune
        sa.Column("origin", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "source_id",
            BigId,
            sa.ForeignKey("kb_sources.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("headings", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("n_tokens", sa.Integer(), nullable=False),
    )
    op.create_index("ix_kb_chunks_source_position", "kb_chunks", ["source_id", "position"])
    op.add_column("messages", sa.Column("kb_sources", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("body_chars", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # punctuation as spaces, as for messages (0005): a word means the same on both databases
        op.execute(
            "ALTER TABLE kb_chunks ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ("
            "setweight(to_tsvector('english', regexp_replace(title || ' ' || headings, "
            "'[[:punct:]]', ' ', 'g')), 'A') || "
            "to_tsvector('english', regexp_replace(text, '[[:punct:]]', ' ', 'g'))) STORED"
        )
        op.execute("CREATE INDEX ix_kb_chunks_search_tsv ON kb_chunks USING gin (search_tsv)")
        return
    op.execute(
        "CREATE VIRTUAL TABLE kb_fts USING fts5(title, headings, text, "
        "content='kb_chunks', content_rowid='id', tokenize='porter unicode61')"
    )
    op.execute(
        """
        CREATE TRIGGER kb_fts_insert AFTER INSERT ON kb_chunks BEGIN
            INSERT INTO kb_fts (rowid, title, headings, text)
            VALUES (new.id, new.title, new.headings, new.text);
        END
        """
    )
    op.execute(
        """
        CREATE TRIGGER kb_fts_delete AFTER DELETE ON kb_chunks BEGIN
            INSERT INTO kb_fts (kb_fts, rowid, title, headings, text)
            VALUES ('delete', old.id, old.title, old.headings, old.text);
        END
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for trigger in ("insert", "delete"):
            op.execute(f"DROP TRIGGER kb_fts_{trigger}")
        op.execute("DROP TABLE kb_fts")
    op.drop_column("messages", "body_chars")
    op.drop_column("messages", "kb_sources")
    op.drop_index("ix_kb_chunks_source_position", table_name="kb_chunks")
    op.drop_table("kb_chunks")
    op.drop_table("kb_sources")
