"""Dense vectors in pgvector, where the PostgreSQL has it: ``kb_vectors`` gains an ``embedding
vector`` column beside the portable bytes, filled from them here and written with them after,
and the worker searches it through an HNSW index (one per model, made when that model's first
vectors are written: an index needs the vectors' dimension). A PostgreSQL without the extension
available, or a role not allowed to create it, changes nothing: the vectors stay searched in the
worker's memory, as on SQLite.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import struct
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    available = "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
    if bind.execute(sa.text(available)).scalar() is None:
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError:  # not allowed to: the vectors stay searched in memory
        return
    op.execute("ALTER TABLE kb_vectors ADD COLUMN embedding vector")
    rows = bind.execute(sa.text("SELECT chunk_id, model, vector FROM kb_vectors")).all()
    for chunk_id, model, blob in rows:
        values = struct.unpack(f"<{len(blob) // 4}f", blob)
        bind.execute(
            sa.text(
                "UPDATE kb_vectors SET embedding = CAST(CAST(:e AS text) AS vector) "
                "WHERE chunk_id = :c AND model = :m"
            ),
            {"e": "[" + ",".join(map(repr, values)) + "]", "c": chunk_id, "m": model},
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE kb_vectors DROP COLUMN IF EXISTS embedding")
