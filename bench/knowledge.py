"""The knowledge base: retrieval quality on an evaluation set, and its speed, on SQLite and on
PostgreSQL.

The evaluation set is bench/helpcentre/: 37 help-centre articles of a made-up shoe shop, and 223
questions written the way customers type them (paraphrased, with typos), each naming the
article that answers it. For each database it prints:
- hit@1, hit@3 and MRR over the questions (a hit: a chunk of the right article);
- ingest throughput, in chunks a second (the articles, then the filler below);
- retrieval latency p50 and p99 with the help centre among ``--chunks`` chunks (filler chunks
  made of the help centre's own words, so that they compete for every query);
- the time to first token that retrieval adds on the full path (gateway → queue → worker with
  retrieval → a fixed engine), p50, against the same path with no knowledge base, in one run.

Three rankings: BM25 alone, dense vectors alone (all-MiniLM-L6-v2, in process), and hybrid
(reciprocal rank fusion of both). The filler's vectors are random: embedding 100,000 chunks on
this CPU would take most of an hour, and search time does not depend on what a vector holds.

Three databases: SQLite, PostgreSQL (vectors searched in the worker's memory), and PostgreSQL
with pgvector (vectors searched through its HNSW index; a server that the PyPI package pgserver
bundles, started in a temporary folder).

Usage: python bench/knowledge.py [--chunks 100000] [--turns 300] [--databases sqlite,postgresql]
Needs PostgreSQL on 127.0.0.1 (a scratch database is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from common import pct, scratch_database

from frontdesk.bots import Gateway
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.knowledge.embeddings import LocalEmbedder, embed_missing, packaged_model
from frontdesk.engine.knowledge.ingest import add_paths
from frontdesk.engine.knowledge.retrieval import Retriever, rewritten
from frontdesk.engine.queue import LocalQueue
from frontdesk.engine.worker import Worker
from frontdesk.settings import Settings
from frontdesk.storage import ChunkIn, Store
from frontdesk.wire import InboundMessage

HERE = Path(__file__).parent / "helpcentre"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
FILLER_PER_SOURCE = 2_000
MODES = ("bm25", "dense", "hybrid")


def questions() -> list[tuple[str, str]]:
    lines = (HERE / "questions.jsonl").read_text().splitlines()
    return [(q["question"], q["source"]) for q in map(json.loads, lines) if q]


async def ranks(retriever: Retriever, mode: str, asked: list[tuple[str, str]]) -> list[int]:
    """For each (question, source): where the source's first chunk ranks among the articles
    found (1 is best), or 0 when it is not in the first 10 chunks."""
    found = []
    for question, source in asked:
        ranked: list[str] = []
        for hit in await retriever.rank(question, mode, 10):
            if hit.source not in ranked:
                ranked.append(hit.source)
        found.append(ranked.index(source) + 1 if source in ranked else 0)
    return found


async def quality(retriever: Retriever, mode: str) -> tuple[float, float, float]:
    """hit@1, hit@3 and MRR over the questions."""
    found = await ranks(retriever, mode, questions())
    n = len(found)
    at1 = sum(r == 1 for r in found) / n
    at3 = sum(0 < r <= 3 for r in found) / n
    return at1, at3, sum(1 / r for r in found if r) / n


def followups() -> list[tuple[str, str, str]]:
    lines = (HERE / "followups.jsonl").read_text().splitlines()
    return [(q["previous"], q["followup"], q["source"]) for q in map(json.loads, lines) if q]


async def hit3(retriever: Retriever, mode: str, asked: list[tuple[str, str]]) -> float:
    found = await ranks(retriever, mode, asked)
    return sum(0 < r <= 3 for r in found) / len(found)


async def rewrites(retriever: Retriever) -> dict[str, dict[str, float]]:
    """hit@3 of follow-ups ("and for Belgium?") searched alone, with the previous user message
    before them, and with it only when the follow-up is short; and what the same rules cost a
    question that changes the subject (a random earlier question before it)."""
    pairs = followups()
    rng = random.Random(7)
    switches = [(rng.choice(questions())[0], q, s) for q, s in questions()]
    figures: dict[str, dict[str, float]] = {}
    for mode in MODES:
        row: dict[str, float] = {}
        for name, rule in REWRITES.items():
            row[f"followup {name}"] = await hit3(
                retriever, mode, [(rule(prev, q), s) for prev, q, s in pairs]
            )
            row[f"switch {name}"] = await hit3(
                retriever, mode, [(rule(prev, q), s) for prev, q, s in switches]
            )
        figures[mode] = row
    return figures


REWRITES = {
    "alone": lambda previous, message: message,
    "with previous": lambda previous, message: f"{previous} {message}",
    # the worker's rule (FRONTDESK_KB_REWRITE)
    "previous if short": lambda previous, message: rewritten(message, previous),
}


def filler(words: list[str], count: int, seed: int) -> Iterator[ChunkIn]:
    """Chunks of made-up words with a few of the help centre's own in each (about 1 in 20, as
    in a large help centre about other things): every query word is in a few hundred of them."""
    rng = random.Random(seed)
    for i in range(count):
        made_up = [f"w{rng.randrange(200_000)}" for _ in range(210)]
        text = " ".join(made_up + rng.choices(words, k=10))
        yield ChunkIn(f"Filler {seed}", f"x{seed}p{i}", text, 290)


async def add_filler(store: Store, written: int, chunks: int) -> int:
    """Filler articles until the knowledge base holds ``chunks`` chunks (``written`` now):
    made-up words, with a few of the help centre's own. How many chunks there are then."""
    vocabulary = sorted(
        {
            word
            for path in (HERE / "articles").rglob("*.md")
            for word in re.findall(r"[a-z]{3,}", path.read_text().lower())
        }
    )
    seed = 0
    while written < chunks:
        written += await store.kb_replace(
            f"filler/{seed}.md", title=f"Filler {seed}", url=None, content_hash=str(seed),
            n_bytes=0, chunks=filler(vocabulary, min(FILLER_PER_SOURCE, chunks - written), seed),
        )  # fmt: skip
        seed += 1
    return written


async def random_vectors(store: Store, model: str) -> None:
    """A random unit vector under ``model`` for each chunk that has none (the filler's):
    embedding 100,000 chunks here would take most of an hour."""
    rng = np.random.default_rng(0)
    while pending := await store.kb_unembedded(model, limit=5_000):
        vectors = rng.standard_normal((len(pending), 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        await store.kb_put_vectors(
            model, [(c, v.tobytes()) for (c, _), v in zip(pending, vectors, strict=True)]
        )


async def latency(retriever: Retriever, mode: str, repeat: int = 2) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        for question, _source in questions():
            start = time.perf_counter()
            await retriever.rank(question, mode, 4)
            took.append((time.perf_counter() - start) * 1000)
    return pct(took, 50), pct(took, 99)


class FirstDelta:
    """A channel that notes when each reply's first text arrives."""

    name = "bench"

    def __init__(self) -> None:
        self.first: list[float] = []

    async def start(self, gateway: Gateway) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def deliver(self, reply) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        seen = False
        async for delta in reply:
            if delta.text and not seen:
                self.first.append((time.perf_counter() - started) * 1000)
                seen = True


async def ttft(url: str, turns: int, asked: list[tuple[str, str]], embeddings: str) -> float:
    """p50 of the time from a message to its reply's first text, on the full path."""
    settings = Settings(
        _env_file=None, database_url=url, engine="fixed", kb_strict=False,  # type: ignore[call-arg]
        embeddings=embeddings,
    )  # fmt: skip
    store = Store(url)
    await store.start()
    queue = LocalQueue()
    await queue.start()
    worker = Worker(settings, queue, store, FixedReplyBackend("Here is how."))
    await worker.start()
    channel = FirstDelta()
    gateway = Gateway(settings, queue, store, [channel])  # type: ignore[list-item]
    await gateway.start()
    try:
        for i in range(turns):
            question = asked[i % len(asked)][0]
            msg = InboundMessage("bench", f"c{i}", f"u{i}", f"m{i}-{time.time_ns()}", question)
            task = await gateway.handle(msg, channel)  # type: ignore[arg-type]
            assert task is not None
            await task
    finally:
        await gateway.stop()
        await worker.stop()
        await queue.stop()
        await store.stop()
    return statistics.median(channel.first[turns // 10 :])


async def one_database(
    name: str, url: str, chunks: int, turns: int, embedder: LocalEmbedder
) -> dict[str, Any]:
    f: dict[str, Any] = {}
    store = Store(url)
    await store.start(migrate=True)
    asked = questions()
    try:
        f["ttft_none"] = await ttft(url, turns, asked, "none")
        start = time.perf_counter()
        outcome = await add_paths(store, [HERE / "articles"], url_base=None)
        f["articles"] = outcome.chunks
        f["ingest"] = outcome.chunks / (time.perf_counter() - start)
        start = time.perf_counter()
        embedded = await embed_missing(store, embedder)
        f["embed"] = embedded / (time.perf_counter() - start)
        settings = Settings(_env_file=None, database_url=url, embeddings="local")  # type: ignore[call-arg]
        retriever = Retriever(settings, store, embedder)
        for mode in MODES:
            f[mode] = await quality(retriever, mode)
        f["rewrites"] = await rewrites(retriever)
        print(f"{name}: quality measured", flush=True)

        start = time.perf_counter()
        written = await add_filler(store, outcome.chunks, chunks)
        await store.kb_optimize()  # as `frontdesk kb add` does after a large add
        f["bulk"] = (written - outcome.chunks) / (time.perf_counter() - start)
        await random_vectors(store, embedder.model)
        f["chunks"] = written
        retriever = Retriever(settings, store, embedder)
        for mode in MODES:
            f[f"{mode}_ms"] = await latency(retriever, mode)
            f[f"{mode}_among"] = await quality(retriever, mode)
        print(f"{name}: latency measured", flush=True)
        f["ttft_bm25"] = await ttft(url, turns, asked, "none")
        f["ttft_hybrid"] = await ttft(url, turns, asked, "local")
    finally:
        await store.stop()
    print(f"{name}: done", flush=True)
    return f


@asynccontextmanager
async def sqlite() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite+aiosqlite:///{folder}/kb.db"


@asynccontextmanager
async def postgresql() -> AsyncIterator[str]:
    async with scratch_database(PG_ADMIN) as url:
        yield url


@asynccontextmanager
async def pgvector() -> AsyncIterator[str]:
    """PostgreSQL with pgvector: the server the PyPI package pgserver bundles."""
    import pgserver

    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE kb;")
            yield server.get_uri("kb").replace("postgresql://", "postgresql+asyncpg://", 1)
        finally:
            server.cleanup()


DATABASES: dict[str, Callable[[], AbstractAsyncContextManager[str]]] = {
    "sqlite": sqlite,
    "postgresql": postgresql,
    "pgvector": pgvector,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument(
        "--databases", default=",".join(DATABASES),
        help=f"which to measure, comma-separated (of {', '.join(DATABASES)})",
    )  # fmt: skip
    args = parser.parse_args()
    wanted = [name.strip() for name in args.databases.split(",") if name.strip()]
    if not wanted or set(wanted) - set(DATABASES):
        parser.error(f"--databases takes some of: {', '.join(DATABASES)}")
    embedder = LocalEmbedder(packaged_model())
    results = {}
    for name in wanted:
        async with DATABASES[name]() as url:
            results[name] = await one_database(name, url, args.chunks, args.turns, embedder)
    first = next(iter(results.values()))
    print(f"\n{len(questions())} questions over the {first['articles']} chunks of 37 "
          "articles; hit@1 / hit@3 / MRR (a hit: a chunk of the right article)")  # fmt: skip
    print(f"{'database':>10} " + " ".join(f"{m:>20}" for m in MODES))
    for name, f in results.items():
        cells = [" / ".join(f"{x:.3f}" for x in f[m]) for m in MODES]
        print(f"{name:>10} " + " ".join(f"{c:>20}" for c in cells))
    print("\nquery rewrite, hit@3: follow-ups (and what the rule costs a change of subject)")
    for name, f in results.items():
        for mode, row in f["rewrites"].items():
            cells = [
                f"{rule}: {row['followup ' + rule]:.3f} ({row['switch ' + rule]:.3f})"
                for rule in REWRITES
            ]
            print(f"{name:>10} {mode:>7}  " + "   ".join(cells))
    print(f"\namong {args.chunks:,} chunks (filler of made-up words, random vectors): retrieval "
          "latency p50 / p99 ms, and hit@3")  # fmt: skip
    print(f"{'database':>10} " + " ".join(f"{m:>22}" for m in MODES))
    for name, f in results.items():
        cells = [
            f"{f[m + '_ms'][0]:.1f} / {f[m + '_ms'][1]:.1f} ({f[m + '_among'][1]:.2f})"
            for m in MODES
        ]
        print(f"{name:>10} " + " ".join(f"{c:>22}" for c in cells))
    print("\ningest, chunks/s: articles (read, cut, written) / bulk writes / local embeddings")
    for name, f in results.items():
        print(f"{name:>10} {f['ingest']:.0f} / {f['bulk']:.0f} / {f['embed']:.1f}")
    print("\ntime to first text on the full path, p50 ms: no knowledge base / BM25 / hybrid")
    for name, f in results.items():
        print(
            f"{name:>10} {f['ttft_none']:.2f} / {f['ttft_bm25']:.2f} "
            f"(+{f['ttft_bm25'] - f['ttft_none']:.2f}) / {f['ttft_hybrid']:.2f} "
            f"(+{f['ttft_hybrid'] - f['ttft_none']:.2f})"
        )


if __name__ == "__main__":
    asyncio.run(main())
