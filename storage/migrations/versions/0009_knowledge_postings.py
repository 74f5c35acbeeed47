"""BM25 on PostgreSQL, as on SQLite: a postings table (``kb_terms``: lexeme, chunk, weighted term
frequency, chunk length) made from each chunk's tsvector when the chunk is written, so a query
reads the postings of its few words from a B-tree and ranks with their document frequency.
``ts_rank`` has no IDF, and reading every matching chunk's tsvector made a query over 100,000
chunks take 60 ms. SQLite's FTS5 has BM25 already: nothing changes there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A chunk's postings: each lexeme of its tsvector, counted with title and headings (weight A)
# four times, and the chunk's length in tokens
POSTINGS_OF = """
INSERT INTO kb_terms (lexeme, chunk_id, tf, dl)
SELECT u.lexeme, c.id,
       (SELECT sum(CASE w WHEN 'A' THEN 4 ELSE 1 END) FROM unnest(u.weights) AS w),
       c.n_tokens
FROM kb_chunks AS c, unnest(c.search_tsv) AS u
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE TABLE kb_terms (lexeme text NOT NULL, "
        "chunk_id bigint NOT NULL REFERENCES kb_chunks (id) ON DELETE CASCADE, "
        "tf real NOT NULL, dl integer NOT NULL)"
    )
    op.execute(POSTINGS_OF)
    op.execute("CREATE INDEX ix_kb_terms_lexeme ON kb_terms (lexeme) INCLUDE (chunk_id, tf, dl)")
    op.execute("CREATE INDEX ix_kb_terms_chunk ON kb_terms (chunk_id)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE kb_terms")
