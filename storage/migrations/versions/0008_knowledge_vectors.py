"""Dense vectors of knowledge-base chunks, one per chunk and embedding model: float32 bytes,
normalised, searched exactly in the worker's memory (``frontdesk.engine.knowledge.dense``). A
portable column on both databases: this machine's Python cannot load SQLite extensions
(sqlite-vec) and its PostgreSQL has no pgvector. Deleting a chunk deletes its vectors.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kb_vectors",
        sa.Column(
            "chunk_id",
            BigId,
            sa.ForeignKey("kb_chunks.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_vectors")
