"""An index of ``kb_vectors`` by model and chunk: how many vectors a model has and its highest
chunk id (the worker's look for changes, every 30 s) are read from the index alone. Without it
SQLite read every vector for them: 50 ms at 100,000 chunks.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_kb_vectors_model_chunk", "kb_vectors", ["model", "chunk_id"])


def downgrade() -> None:
    op.drop_index("ix_kb_vectors_model_chunk", table_name="kb_vectors")
