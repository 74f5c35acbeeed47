"""The knowledge base's SQL: help-centre articles (``kb_sources``) and their chunks
(``kb_chunks``), written a whole article at a time, and BM25 search over the chunks, alike on both
databases: a postings table (``kb_terms``: stem, chunk, weighted term frequency, chunk length)
written with each chunk, read for a query's few stems from its clustered index, and ranked with
BM25's IDF and length normalisation. PostgreSQL makes the postings from each chunk's weighted
tsvector (0009), SQLite from FTS5's ``porter unicode61`` tokenizer (0014). A query means the same
on both: its words (letters and digits, stemmed, PostgreSQL's English stopwords left out, see
``search_words``), any of which a chunk may hold; nothing in it is an operator. Scores are in
[0, 1), higher is better: ``s / (1 + s)`` of the BM25 score, so that one
``FRONTDESK_KB_MIN_SCORE`` reads alike on both. The chunks' vectors (0008) are stored on both; on
a PostgreSQL with pgvector (0010) they are searched here too (``kb_nearest``), elsewhere in the
worker's memory.

Reading files and cutting chunks is ``frontdesk.engine.knowledge``'s; this module only stores
and finds them.
"""

from __future__ import annotations

import hashlib
import math
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    table,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .models import KbChunk, KbSource, KbVector, utcnow
from .search import search_words

INSERT_BATCH = 500  # chunks per INSERT while an article is written
STATS_EVERY_S = 30.0
# SQLite's page cache (at most) for a connection that writes articles: their postings land all
# over the postings table's index, and with SQLite's default 2 MiB each batch read and wrote its
# pages again (550 -> 670 chunks a second at 20,000 chunks of the benchmark's filler)
WRITE_CACHE_KIB = 131_072
# A query word in more than half the chunks is left out of a search over this many chunks or
# more, while another of its words is in fewer: BM25 reads every posting of every word, so such
# a word made a query 10x slower at 100,000 chunks (a word in all of them: 15 -> 150 ms), for an
# IDF below ln 2 (the classic Robertson-Sparck Jones weight of a word in over half the
# documents is negative: it tells against a match). Smaller knowledge bases keep every word.
COMMON_FROM_CHUNKS = 1_000
# BM25 (k1 = 1.2, b = 0.75) over the postings of the query's lexemes (PostgreSQL, 0009): the
# query is cut into lexemes by the same parser as the chunks; each lexeme's IDF from a count of
# its postings, then its postings scored. Both lateral joins read the postings from the index
# alone (OFFSET 0 keeps the planner from a hash join over every posting), and the arithmetic is
# in float8: numeric, PostgreSQL's default for these literals, made a query 3× slower.
# 1.2 * (0.25 + 0.75 * dl / avgdl) is bound as :norm_a + :norm_b * dl. The count of chunks is
# read every 30 s (``_kb_stats``): a word's count may be above it for that long after an add, so
# the IDF takes the larger (never below 0). A lexeme in more than
# :common chunks is left out while another of the query's is in fewer (``_common_limit``).
_BM25_PG = """
WITH q AS (
    SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', :words))) AS lexeme
), w AS (
    SELECT q.lexeme, d.n, ln(1 + (GREATEST(CAST(:n AS float8), d.n) - d.n + 0.5) / (d.n + 0.5)) AS idf
    FROM q CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM kb_terms WHERE kb_terms.lexeme = q.lexeme
    ) AS d
), kept AS (
    SELECT lexeme, idf FROM w
    WHERE w.n <= :common OR NOT EXISTS (SELECT 1 FROM w AS r WHERE r.n > 0 AND r.n <= :common)
)
SELECT t.chunk_id AS id,
       sum(kept.idf * t.tf * 2.2
           / (t.tf + CAST(:norm_a AS float8) + CAST(:norm_b AS float8) * t.dl)) AS rank
FROM kept CROSS JOIN LATERAL (
    SELECT chunk_id, tf, dl FROM kb_terms WHERE kb_terms.lexeme = kept.lexeme OFFSET 0
) AS t
GROUP BY t.chunk_id
ORDER BY rank DESC, t.chunk_id
LIMIT :limit
"""
_POSTINGS_OF_SOURCE = text(
    """
    INSERT INTO kb_terms (lexeme, chunk_id, tf, dl)
    SELECT u.lexeme, c.id,
           (SELECT sum(CASE w WHEN 'A' THEN 4 ELSE 1 END) FROM unnest(u.weights) AS w),
           c.n_tokens
    FROM kb_chunks AS c, unnest(c.search_tsv) AS u
    WHERE c.source_id = :source_id
    """
)
_TERMS = table("kb_terms", column("lexeme"))
# SQLite (0014): FTS5's tokenizer stems chunks and queries alike, through a scratch table of the
# connection's own (temp, never written to the database file), read back by fts5vocab: a row's
# (stem, column) pairs, one per occurrence. Title and headings count 4 and 2 times the text.
_SQLITE_TOKENS = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.kb_tokens USING fts5(title, headings, text, "
    "tokenize='porter unicode61')",
    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.kb_tokens_instance "
    "USING fts5vocab(temp, kb_tokens, instance)",
)
_SQLITE_TOKENIZE_CHUNKS = text(
    "INSERT INTO temp.kb_tokens (rowid, title, headings, text) "
    "SELECT id, title, headings, text FROM kb_chunks "
    "WHERE source_id = :source_id AND position >= :first"
)
_SQLITE_POSTINGS = text(
    "INSERT INTO kb_terms (lexeme, chunk_id, tf, dl) "
    "SELECT i.term, i.doc, "
    "sum(CASE i.col WHEN 'title' THEN 4.0 WHEN 'headings' THEN 2.0 ELSE 1.0 END), c.n_tokens "
    "FROM temp.kb_tokens_instance AS i JOIN kb_chunks AS c ON c.id = i.doc "
    "GROUP BY i.term, i.doc"
)
_SQLITE_TOKENIZE_WORDS = "INSERT INTO temp.kb_tokens (rowid, text) VALUES (:rowid, :word)"
_SQLITE_STEMS = text("SELECT doc, term FROM temp.kb_tokens_instance")
_SQLITE_TOKENS_CLEAR = text("DELETE FROM temp.kb_tokens")
# BM25 as ``_BM25_PG``, each stem's IDF bound from ``_sqlite_weights`` (FTS5's SQLite may lack
# ln()); CROSS JOIN keeps the stems as the outer loop, so each stem's postings are one range of
# the clustered index. The best chunks' rows come in the same statement, which goes to the
# driver as it is (qmark parameters: the stems' pairs, then norm_a, norm_b and the limit):
# SQLAlchemy's statement building and parameter handling took 1.5 ms of a 6 ms search.
_BM25_SQLITE = """
WITH kept (lexeme, idf) AS (VALUES {values}), best AS (
    SELECT t.chunk_id AS id,
           sum(kept.idf * t.tf * 2.2 / (t.tf + ? + ? * t.dl)) AS rank
    FROM kept CROSS JOIN kb_terms AS t ON t.lexeme = kept.lexeme
    GROUP BY t.chunk_id
    ORDER BY rank DESC, t.chunk_id
    LIMIT ?
)
SELECT c.id, s.source, s.title, s.url, c.headings, c.text, c.n_tokens, best.rank
FROM best
JOIN kb_chunks AS c ON c.id = best.id
JOIN kb_sources AS s ON s.id = c.source_id
ORDER BY best.rank DESC, c.id
"""
STEMS_KEPT = 50_000  # SQLite: words whose stems are remembered (then forgotten all at once)


@dataclass(frozen=True, slots=True)
class ChunkIn:
    """A chunk to store: its article's title, its heading path (``A > B``), its text, and
    about how many tokens it is."""

    title: str
    headings: str
    text: str
    n_tokens: int


@dataclass(frozen=True, slots=True)
class KnowledgeSource:
    source: str
    title: str
    url: str | None
    content_hash: str
    n_chunks: int
    n_bytes: int
    updated_at: datetime
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class KnowledgeHit:
    chunk_id: int
    source: str
    title: str
    url: str | None
    headings: str
    text: str
    n_tokens: int
    score: float  # in [0, 1), higher is better


class Knowledge(Database):
    """The knowledge base's queries, on the ``Store``'s database."""

    def __init__(self, url: str, *, pool_size: int = 20, echo: bool = False) -> None:
        super().__init__(url, pool_size=pool_size, echo=echo)
        self._kb_stats_cache: tuple[int, float, float] | None = None  # chunks, avg length, at
        self._kb_df: dict[str, int] = {}  # SQLite: how many chunks hold each stem, for
        self._kb_version = (0, 0)  # the chunks as they were: (how many, the highest id)
        self._kb_stems: dict[str, tuple[str, ...]] = {}  # SQLite: each word's stems
        # PostgreSQL with pgvector (0010): vectors are searched in the database, see kb_nearest
        self.kb_pgvector = False
        self._kb_hnsw: set[str] = set()  # models whose HNSW index this process has made sure of

    async def start(self, *, migrate: bool = False, warm: bool = False) -> None:
        await super().start(migrate=migrate, warm=warm)
        if self.dialect == "postgresql":
            async with self.connect() as conn:
                self.kb_pgvector = bool(await conn.scalar(_HAS_EMBEDDING))

    async def kb_sources(self) -> list[KnowledgeSource]:
        """Every article, by source name."""
        stmt = select(
            KbSource.source,
            KbSource.title,
            KbSource.url,
            KbSource.content_hash,
            KbSource.n_chunks,
            KbSource.n_bytes,
            KbSource.updated_at,
            KbSource.origin,
        ).order_by(KbSource.source)
        async with self.connect() as conn:
            return [KnowledgeSource(*row) for row in (await conn.execute(stmt)).all()]

    async def kb_count(self) -> int:
        """How many articles there are (0: no knowledge base)."""
        async with self.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(KbSource)) or 0)

    async def kb_hash(self, source: str) -> str | None:
        """The content hash ``source`` was stored with, if it is stored."""
        async with self.connect() as conn:
            found = await conn.scalar(
                select(KbSource.content_hash).where(KbSource.source == source)
            )
        return str(found) if found is not None else None

    async def kb_replace(
        self,
        source: str,
        *,
        title: str,
        url: str | None,
        content_hash: str,
        n_bytes: int,
        chunks: Iterable[ChunkIn],
        origin: str | None = None,
    ) -> int:
        """Store article ``source`` with ``chunks`` in place of what it held, in one
        transaction (a search sees the old article or the new one, never half of either).
        ``chunks`` is read as it is written, a batch at a time, so a huge article is never all
        in memory. Returns how many chunks were stored."""
        async with self.transaction() as conn:
            if self.dialect == "sqlite":  # kept by the connection: only kb add and sync write
                await conn.execute(text(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}"))
            source_id = await conn.scalar(select(KbSource.id).where(KbSource.source == source))
            if source_id is not None:
                await conn.execute(delete(KbChunk).where(KbChunk.source_id == source_id))
                await conn.execute(
                    update(KbSource)
                    .where(KbSource.id == source_id)
                    .values(title=title, url=url, content_hash="", n_chunks=0, n_bytes=n_bytes,
                            origin=origin, updated_at=utcnow())
                )  # fmt: skip
            else:
                source_id = await conn.scalar(
                    insert(KbSource)
                    .values(source=source, title=title, url=url, content_hash="", n_chunks=0,
                            n_bytes=n_bytes, origin=origin, updated_at=utcnow())
                    .returning(KbSource.id)
                )  # fmt: skip
            assert source_id is not None  # found, or just inserted
            count = 0
            batch: list[dict[str, Any]] = []
            for chunk in chunks:
                batch.append(
                    {"source_id": source_id, "position": count, "title": chunk.title,
                     "headings": chunk.headings, "text": chunk.text, "n_tokens": chunk.n_tokens}
                )  # fmt: skip
                count += 1
                if len(batch) >= INSERT_BATCH:
                    await self._kb_insert(conn, source_id, batch)
                    batch = []
            if batch:
                await self._kb_insert(conn, source_id, batch)
            if self.dialect == "postgresql":  # BM25's postings (0009), from the tsvectors
                await conn.execute(_POSTINGS_OF_SOURCE, {"source_id": source_id})
            # the hash last: an article whose chunks failed midway is rolled back whole anyway
            await conn.execute(
                update(KbSource)
                .where(KbSource.id == source_id)
                .values(content_hash=content_hash, n_chunks=count)
            )
        return count

    async def _kb_insert(
        self, conn: AsyncConnection, source_id: int, batch: list[dict[str, Any]]
    ) -> None:
        """Write a batch of an article's chunks; on SQLite with their postings (0014)."""
        await conn.execute(insert(KbChunk), batch)
        if self.dialect == "sqlite":
            for statement in _SQLITE_TOKENS:
                await conn.execute(text(statement))
            first = {"source_id": source_id, "first": batch[0]["position"]}
            await conn.execute(_SQLITE_TOKENIZE_CHUNKS, first)
            await conn.execute(_SQLITE_POSTINGS)
            await conn.execute(_SQLITE_TOKENS_CLEAR)

    async def _kb_stats(self) -> tuple[int, float]:
        """How many chunks there are and their average length, for BM25 (read at most every
        ``STATS_EVERY_S``: a count over every chunk is not free). The words' counts of
        ``_sqlite_weights`` are forgotten when the chunks changed (a written chunk has a new id)."""
        now = time.monotonic()
        cached = self._kb_stats_cache
        if cached is not None and now - cached[2] < STATS_EVERY_S:
            return cached[0], cached[1]
        async with self.connect() as conn:
            count, average, highest = (
                await conn.execute(
                    select(func.count(), func.avg(KbChunk.n_tokens), func.max(KbChunk.id))
                )
            ).one()
        version = (int(count or 0), int(highest or 0))
        if version != self._kb_version:
            self._kb_df = {}
            self._kb_version = version
        self._kb_stats_cache = (version[0], float(average or 1.0), now)
        return version[0], self._kb_stats_cache[1]

    async def kb_optimize(self) -> None:
        """Bring the search index to its best after a large write: the planner's statistics of
        the postings (SQLite's ANALYZE), and on PostgreSQL a VACUUM of them too, so that a
        query reads them from the index alone (its visibility map); autovacuum would get there,
        later."""
        async with self.connect() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("VACUUM (ANALYZE) kb_terms"))
                await conn.execute(text("ANALYZE kb_chunks"))
            else:
                await conn.execute(text("ANALYZE kb_terms"))

    async def kb_remove(self, source: str) -> bool:
        """Remove article ``source`` and its chunks; False when there is none by that name."""
        async with self.transaction() as conn:
            source_id = await conn.scalar(select(KbSource.id).where(KbSource.source == source))
            if source_id is None:
                return False
            await conn.execute(delete(KbChunk).where(KbChunk.source_id == source_id))
            await conn.execute(delete(KbSource).where(KbSource.id == source_id))
        return True

    async def kb_search(self, query: str, limit: int = 5) -> list[KnowledgeHit]:
        """The chunks that best match ``query`` (any of its words), best first."""
        words = search_words(query)
        if not words:
            return []
        # The best ids first, from the index alone, then their rows: the chunks' text is read
        # for the few that are returned, not for every chunk that holds a common word.
        chunks, average = await self._kb_stats()
        norm_a, norm_b = 1.2 * 0.25, 1.2 * 0.75 / average
        rows: Sequence[Sequence[Any]]
        if self.dialect == "postgresql":
            scored = (
                text(_BM25_PG)
                .bindparams(
                    words=" ".join(words),
                    n=chunks,
                    common=_common_limit(chunks),
                    norm_a=norm_a,
                    norm_b=norm_b,
                    limit=limit,
                )
                .columns(id=BigInteger, rank=Float)
                .subquery()
            )
            best = select(scored.c.id, scored.c.rank).subquery()
            stmt = (
                select(
                    KbChunk.id, KbSource.source, KbSource.title, KbSource.url, KbChunk.headings,
                    KbChunk.text, KbChunk.n_tokens, best.c.rank,
                )
                .select_from(best)
                .join(KbChunk, KbChunk.id == best.c.id)
                .join(KbSource, KbSource.id == KbChunk.source_id)
                .order_by(best.c.rank.desc(), KbChunk.id)
            )  # fmt: skip
            async with self.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        else:
            weights = await self._sqlite_weights(words, chunks)
            if not weights:
                return []
            values = ", ".join("(?, ?)" for _ in weights)
            params = (*(x for pair in weights for x in pair), norm_a, norm_b, limit)
            async with self.connect() as conn:
                found = await conn.exec_driver_sql(_BM25_SQLITE.format(values=values), params)
                rows = found.all()
        hits: list[KnowledgeHit] = []
        for row in rows:
            chunk_id, source, title, url, headings, chunk_text, n_tokens, raw = tuple(row)
            value = float(raw or 0.0)
            value = value if value > 0 else 0.0
            score = value / (1.0 + value)
            hits.append(
                KnowledgeHit(chunk_id, source, title, url, headings, chunk_text, n_tokens,
                             round(score, 6))
            )  # fmt: skip
        return hits

    async def _sqlite_weights(self, words: list[str], chunks: int) -> list[tuple[str, float]]:
        """SQLite: the stems of ``words`` that a search reads, each with its IDF, computed as
        ``_BM25_PG`` does: stems found in no chunk left out, and those in more than
        ``_common_limit`` chunks too, unless no other stem is found. Each word's stems and each
        stem's count of chunks are looked up once (the counts until the chunks change), in one
        connection for all that are new: counting a stem's postings is cheap next to ranking
        them, and most words recur."""
        stems_of = {w: self._kb_stems[w] for w in words if w in self._kb_stems}
        new_words = sorted(set(words) - stems_of.keys())
        if new_words:
            rows = [{"rowid": i, "word": w} for i, w in enumerate(new_words)]
            found: dict[int, list[str]] = {}
            async with self.connect() as conn:
                for statement in _SQLITE_TOKENS:
                    await conn.execute(text(statement))
                # emptied first too: a search stopped midway (autocommit) leaves its words there
                await conn.execute(_SQLITE_TOKENS_CLEAR)
                await conn.execute(text(_SQLITE_TOKENIZE_WORDS), rows)
                for doc, term in (await conn.execute(_SQLITE_STEMS)).all():
                    found.setdefault(int(doc), []).append(str(term))
                await conn.execute(_SQLITE_TOKENS_CLEAR)
            fresh = {w: tuple(dict.fromkeys(found.get(i, ()))) for i, w in enumerate(new_words)}
            if len(self._kb_stems) > STEMS_KEPT:
                self._kb_stems = {}
            self._kb_stems.update(fresh)
            stems_of.update(fresh)
        stems = list(dict.fromkeys(s for w in words for s in stems_of[w]))
        df = {s: self._kb_df[s] for s in stems if s in self._kb_df}
        uncounted = [s for s in stems if s not in df]
        if uncounted:
            counts = [
                select(func.count())
                .select_from(_TERMS)
                .where(_TERMS.c.lexeme == stem)
                .scalar_subquery()
                for stem in uncounted
            ]
            async with self.connect() as conn:
                counted = (await conn.execute(select(*counts))).one()
            fresh_df = dict(zip(uncounted, (int(n or 0) for n in counted), strict=True))
            self._kb_df.update(fresh_df)
            df.update(fresh_df)
        common = _common_limit(chunks)
        present = [s for s in stems if df[s]]
        kept = [s for s in present if df[s] <= common] or present
        return [(s, math.log(1 + (max(chunks, df[s]) - df[s] + 0.5) / (df[s] + 0.5))) for s in kept]

    # -- dense vectors ---------------------------------------------------------------------------

    async def kb_unembedded(self, model: str, limit: int = 256) -> list[tuple[int, str]]:
        """Chunks with no vector under ``model`` yet: (chunk id, the text to embed)."""
        stmt = (
            select(KbChunk.id, KbChunk.title, KbChunk.headings, KbChunk.text)
            .outerjoin(KbVector, (KbVector.chunk_id == KbChunk.id) & (KbVector.model == model))
            .where(KbVector.chunk_id.is_(None))
            .order_by(KbChunk.id)
            .limit(limit)
        )
        async with self.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(row[0], _embedded_text(row[1], row[2], row[3])) for row in rows]

    async def kb_put_vectors(self, model: str, vectors: Sequence[tuple[int, bytes]]) -> None:
        """Store each chunk's vector under ``model`` (a chunk deleted meanwhile is skipped);
        with pgvector, in its ``embedding`` column too, under the model's HNSW index."""
        if not vectors:
            return
        ids = [chunk_id for chunk_id, _ in vectors]
        async with self.transaction() as conn:
            live = set((await conn.scalars(select(KbChunk.id).where(KbChunk.id.in_(ids)))).all())
            rows: list[dict[str, Any]] = [
                {"chunk_id": c, "model": model, "vector": v} for c, v in vectors if c in live
            ]
            if not rows:
                return
            if not self.kb_pgvector:
                await conn.execute(insert(KbVector), rows)
                return
            for row in rows:
                row["embedding"] = _vector_literal(row["vector"])
            await conn.execute(_INSERT_EMBEDDING, rows)
            if model not in self._kb_hnsw:
                dimensions = len(rows[0]["vector"]) // 4
                await conn.execute(text(_hnsw_index(model, dimensions)))
        self._kb_hnsw.add(model)

    async def kb_nearest(
        self, model: str, query: Sequence[float], limit: int
    ) -> list[tuple[int, float]]:
        """pgvector: the ``limit`` chunks nearest ``query`` under ``model``, through its HNSW
        index (approximate: pgvector's ``ef_search`` 40 candidates): (chunk id, cosine)."""
        dimensions = len(query)
        distance = (
            f"CAST(embedding AS vector({dimensions})) "
            f"<=> CAST(CAST(:query AS text) AS vector({dimensions}))"
        )
        # the model as a literal: a partial index serves only a query whose WHERE names it
        stmt = text(
            f"SELECT chunk_id, 1 - ({distance}) AS cosine FROM kb_vectors "
            f"WHERE model = {_sql_string(model)} ORDER BY {distance} LIMIT :limit"
        ).bindparams(query=_vector_literal(query), limit=limit)
        async with self.connect() as conn:
            return [(int(c), float(cos)) for c, cos in (await conn.execute(stmt)).all()]

    async def kb_cosines(
        self, model: str, chunk_ids: Sequence[int], query: Sequence[float]
    ) -> dict[int, float]:
        """pgvector: the cosine of each of ``chunk_ids`` that has a vector, with ``query``."""
        if not chunk_ids:
            return {}
        stmt = text(
            "SELECT chunk_id, 1 - (embedding <=> CAST(CAST(:query AS text) AS vector)) "
            "FROM kb_vectors WHERE model = :model AND chunk_id IN :ids"
        ).bindparams(
            bindparam("ids", expanding=True), query=_vector_literal(query), model=model,
            ids=list(chunk_ids),
        )  # fmt: skip
        async with self.connect() as conn:
            return {int(c): float(cos) for c, cos in (await conn.execute(stmt)).all()}

    async def kb_vectors(self, model: str) -> list[tuple[int, bytes]]:
        """Every chunk's vector under ``model``, by chunk id."""
        stmt = (
            select(KbVector.chunk_id, KbVector.vector)
            .where(KbVector.model == model)
            .order_by(KbVector.chunk_id)
        )
        async with self.connect() as conn:
            return [(row[0], bytes(row[1])) for row in (await conn.execute(stmt)).all()]

    async def kb_vectors_version(self, model: str) -> tuple[int, int, str]:
        """What ``model``'s vectors are now, in a few values that change when they do: how
        many there are, the highest chunk id among them, and when an article last changed (on
        SQLite a changed article's new chunks can take the ids of its old ones: same count,
        same highest id, other vectors)."""
        vectors = select(func.count(), func.max(KbVector.chunk_id)).where(KbVector.model == model)
        changed = select(func.max(KbSource.updated_at)).scalar_subquery()
        async with self.connect() as conn:
            count, highest, latest = (await conn.execute(vectors.add_columns(changed))).one()
        return int(count or 0), int(highest or 0), str(latest)

    async def kb_chunks(self, chunk_ids: Sequence[int]) -> dict[int, KnowledgeHit]:
        """The chunks by id (score 0: the caller scores them)."""
        if not chunk_ids:
            return {}
        stmt = (
            select(
                KbChunk.id, KbSource.source, KbSource.title, KbSource.url, KbChunk.headings,
                KbChunk.text, KbChunk.n_tokens,
            )
            .join(KbSource, KbSource.id == KbChunk.source_id)
            .where(KbChunk.id.in_(list(chunk_ids)))
        )  # fmt: skip
        async with self.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {
            row[0]: KnowledgeHit(row[0], row[1], row[2], row[3], row[4], row[5], row[6], 0.0)
            for row in rows
        }


_HAS_EMBEDDING = text(
    "SELECT 1 FROM information_schema.columns "
    "WHERE table_name = 'kb_vectors' AND column_name = 'embedding' "
    "AND table_schema = current_schema()"
)
_INSERT_EMBEDDING = text(
    "INSERT INTO kb_vectors (chunk_id, model, vector, embedding) "
    "VALUES (:chunk_id, :model, :vector, CAST(CAST(:embedding AS text) AS vector))"
)


_NO_LIMIT = 2**62


def _common_limit(chunks: int) -> int:
    """How many chunks a query word may be in and still be searched (``COMMON_FROM_CHUNKS``)."""
    return chunks // 2 if chunks >= COMMON_FROM_CHUNKS else _NO_LIMIT


def _vector_literal(vector: bytes | Sequence[float]) -> str:
    """A vector in pgvector's text form, from float32 bytes or numbers."""
    values = array("f", vector) if isinstance(vector, bytes) else vector
    return "[" + ",".join(f"{float(x):.8g}" for x in values) + "]"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _hnsw_index(model: str, dimensions: int) -> str:
    """The HNSW index (cosine) of one model's vectors: partial, as the column holds any
    dimension, and each model's vectors have one."""
    name = "ix_kb_vectors_hnsw_" + hashlib.sha1(model.encode()).hexdigest()[:12]
    return (
        f"CREATE INDEX IF NOT EXISTS {name} ON kb_vectors USING hnsw "
        f"((CAST(embedding AS vector({int(dimensions)}))) vector_cosine_ops) "
        f"WHERE model = {_sql_string(model)}"
    )


def _embedded_text(title: str, headings: str, text: str) -> str:
    """What a chunk's vector is made of: where it sits in its article, then its text."""
    return " > ".join(part for part in (title, headings) if part) + "\n" + text
