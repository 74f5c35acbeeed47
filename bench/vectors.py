"""Where the knowledge base's vectors are searched on SQLite: in the worker's memory (what
frontdesk does, ``DenseIndex``), or in SQLite by the sqlite-vec extension.

The help centre of bench/helpcentre/ (embedded with all-MiniLM-L6-v2) among ``--chunks`` chunks
in all (filler with random vectors, as in bench/knowledge.py), on an SQLite file. Each of the
223 questions, embedded once beforehand, is searched for its 20 nearest chunks:
- exact product: every vector's cosine as one float32 matrix product (numpy), in a thread: the
  truth that recall is measured against, and what ``DenseIndex`` did before its int8 pass;
- in memory: ``DenseIndex.search``, every vector scored in int8, the best 200 again exactly
  (in a thread);
- sqlite-vec, exact: a ``vec0`` table of float vectors (cosine), its KNN query;
- sqlite-vec, binary: a ``vec0`` table of the vectors' signs (bit quantization), its 200 nearest
  by Hamming distance rescored exactly from the stored vectors (sqlite-vec's own recipe).
Each sqlite-vec query runs in a thread, as a database driver would run it. It prints p50 and p99
in ms, and the share of the exact 20 nearest that each finds (recall@20).

This Python's ``sqlite3`` cannot load extensions, so sqlite-vec is loaded into ``sqlean.py``'s
SQLite (the dev extra installs both).

Usage: python bench/vectors.py [--chunks 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import pct
from knowledge import HERE, add_filler, questions, random_vectors

from frontdesk.engine.knowledge.embeddings import (
    DenseIndex,
    LocalEmbedder,
    embed_missing,
    packaged_model,
)
from frontdesk.engine.knowledge.ingest import add_paths
from frontdesk.storage import Store

K = 20
RESCORED = 200  # binary candidates rescored exactly


async def fill(store: Store, embedder: LocalEmbedder, chunks: int) -> int:
    """The help centre, embedded, then filler chunks with random vectors up to ``chunks``."""
    outcome = await add_paths(store, [HERE / "articles"], url_base=None)
    await embed_missing(store, embedder)
    written = await add_filler(store, outcome.chunks, chunks)
    await random_vectors(store, embedder.model)
    return written


def sqlite_vec(path: Path, model: str) -> Any:
    """A connection to the same file with sqlite-vec loaded, and its two vec0 tables filled
    from ``kb_vectors``."""
    import sqlean
    import sqlite_vec as extension

    conn = sqlean.connect(str(path), check_same_thread=False)
    conn.enable_load_extension(True)
    extension.load(conn)
    conn.enable_load_extension(False)
    conn.executescript(
        "CREATE VIRTUAL TABLE temp.exact USING vec0(embedding float[384] distance_metric=cosine);"
        "CREATE VIRTUAL TABLE temp.signs USING vec0(embedding bit[384]);"
    )
    rows = conn.execute("SELECT chunk_id, vector FROM kb_vectors WHERE model = ?", (model,))
    for chunk_id, blob in rows.fetchall():
        conn.execute("INSERT INTO exact (rowid, embedding) VALUES (?, ?)", (chunk_id, blob))
        conn.execute(
            "INSERT INTO signs (rowid, embedding) VALUES (?, vec_quantize_binary(?))",
            (chunk_id, blob),
        )
    conn.commit()
    return conn


async def timed(
    search: Callable[[np.ndarray], Awaitable[list[int]]], queries: list[np.ndarray]
) -> tuple[list[float], list[list[int]]]:
    took, found = [], []
    for query in queries:
        start = time.perf_counter()
        hits = await search(query)
        took.append((time.perf_counter() - start) * 1000)
        found.append(hits)
    return took, found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    args = parser.parse_args()
    embedder = LocalEmbedder(packaged_model())
    queries = list(await embedder.embed([q for q, _ in questions()]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kb.db"
        store = Store(f"sqlite+aiosqlite:///{path}")
        await store.start(migrate=True)
        try:
            chunks = await fill(store, embedder, args.chunks)
            index = DenseIndex(store, embedder.model)
            await index.search(queries[0], K)  # loaded
            conn = sqlite_vec(path, embedder.model)

            async def memory(q: np.ndarray) -> list[int]:
                return [c for c, _ in await index.search(q, K)]

            vectors = index._vectors

            def product(q: np.ndarray) -> list[int]:
                scores = vectors.matrix @ q
                best = np.argpartition(-scores, K - 1)[:K]
                return [int(vectors.ids[i]) for i in best[np.argsort(-scores[best])]]

            def exact_knn(q: np.ndarray) -> list[int]:
                sql = "SELECT rowid FROM exact WHERE embedding MATCH ? AND k = ? ORDER BY distance"
                return [c for (c,) in conn.execute(sql, (q.tobytes(), K))]

            def binary_knn(q: np.ndarray) -> list[int]:
                sql = (
                    "SELECT s.rowid, v.vector FROM signs AS s JOIN kb_vectors AS v "
                    "ON v.chunk_id = s.rowid AND v.model = ? "
                    "WHERE s.embedding MATCH vec_quantize_binary(?) AND k = ?"
                )
                rows = conn.execute(sql, (embedder.model, q.tobytes(), RESCORED)).fetchall()
                ids = np.array([c for c, _ in rows])
                matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32)
                scores = matrix.reshape(len(rows), -1) @ q
                return [int(c) for c in ids[np.argsort(-scores)[:K]]]

            results = {
                "exact product (float32)": await timed(
                    lambda q: asyncio.to_thread(product, q), queries
                ),
                "in memory (frontdesk)": await timed(memory, queries),
                "sqlite-vec, exact": await timed(
                    lambda q: asyncio.to_thread(exact_knn, q), queries
                ),
                "sqlite-vec, binary + rescoring": await timed(
                    lambda q: asyncio.to_thread(binary_knn, q), queries
                ),
            }
        finally:
            await store.stop()
    truth = results["exact product (float32)"][1]
    print(f"\n{len(queries)} queries, {K} nearest among {chunks:,} vectors of 384 dimensions")
    print(f"{'search':>32} {'p50 ms':>8} {'p99 ms':>8} {'recall@20':>10}")
    for name, (took, found) in results.items():
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
        print(f"{name:>32} {pct(took, 50):>8.1f} {pct(took, 99):>8.1f} {recall:>10.3f}")


if __name__ == "__main__":
    asyncio.run(main())
