"""BM25 on SQLite over a postings table, as on PostgreSQL (0009): ``kb_terms`` (stem, chunk,
term frequency with the title counted four times and the headings twice, chunk length), clustered
by stem, written with each chunk. FTS5's ``bm25()`` scored every matching chunk through its
auxiliary-function machinery: among 100,000 chunks a long query took 16 to 28 ms, and p99 was
23 to 31 ms; summed from postings read in stem order, p99 is 12 ms. The FTS5 index (0007) goes:
nothing else searches it, and every chunk written paid for both. Its stems are kept (FTS5's
``porter unicode61``, see ``storage.knowledge``), so the postings are copied from it here.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    op.execute(
        "CREATE TABLE kb_terms (lexeme TEXT NOT NULL, "
        "chunk_id INTEGER NOT NULL REFERENCES kb_chunks (id) ON DELETE CASCADE, "
        "tf REAL NOT NULL, dl INTEGER NOT NULL, PRIMARY KEY (lexeme, chunk_id)) WITHOUT ROWID"
    )
    op.execute("CREATE INDEX ix_kb_terms_chunk ON kb_terms (chunk_id)")
    op.execute("CREATE VIRTUAL TABLE temp.kb_fts_instance USING fts5vocab(main, kb_fts, instance)")
    op.execute(
        "INSERT INTO kb_terms (lexeme, chunk_id, tf, dl) "
        "SELECT i.term, i.doc, "
        "sum(CASE i.col WHEN 'title' THEN 4.0 WHEN 'headings' THEN 2.0 ELSE 1.0 END), "
        "c.n_tokens "
        "FROM temp.kb_fts_instance AS i JOIN kb_chunks AS c ON c.id = i.doc "
        "GROUP BY i.term, i.doc"
    )
    op.execute("DROP TABLE temp.kb_fts_instance")
    for trigger in ("insert", "delete"):
        op.execute(f"DROP TRIGGER kb_fts_{trigger}")
    op.execute("DROP TABLE kb_fts")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    op.execute(
        "CREATE VIRTUAL TABLE kb_fts USING fts5(title, headings, text, "
        "content='kb_chunks', content_rowid='id', tokenize='porter unicode61')"
    )
    op.execute("INSERT INTO kb_fts (kb_fts) VALUES ('rebuild')")
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
    op.execute("DROP TABLE kb_terms")
