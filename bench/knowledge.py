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

Only BM25 is measured: dense vectors and hybrid ranking are not built yet.

Usage: python bench/knowledge.py [--chunks 100000] [--turns 300]
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
from collections.abc import Iterator
from pathlib import Path

from common import pct, scratch_database

from frontdesk.bots import Gateway
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.knowledge.ingest import add_paths
from frontdesk.engine.queue import LocalQueue
from frontdesk.engine.worker import Worker
from frontdesk.settings import Settings
from frontdesk.storage import ChunkIn, Store
from frontdesk.wire import InboundMessage

HERE = Path(__file__).parent / "helpcentre"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
FILLER_PER_SOURCE = 2_000


def questions() -> list[tuple[str, str]]:
    lines = (HERE / "questions.jsonl").read_text().splitlines()
    return [(q["question"], q["source"]) for q in map(json.loads, lines) if q]


async def quality(store: Store) -> tuple[float, float, float]:
    asked = questions()
    at1 = at3 = 0
    reciprocal = 0.0
    for question, source in asked:
        ranked: list[str] = []
        for hit in await store.kb_search(question, limit=10):
            if hit.source not in ranked:
                ranked.append(hit.source)
        if source in ranked:
            rank = ranked.index(source) + 1
            at1 += rank == 1
            at3 += rank <= 3
            reciprocal += 1 / rank
    n = len(asked)
    return at1 / n, at3 / n, reciprocal / n


def filler(words: list[str], count: int, seed: int) -> Iterator[ChunkIn]:
    rng = random.Random(seed)
    for i in range(count):
        text = " ".join(rng.choices(words, k=220))
        yield ChunkIn(f"Filler {seed}", f"Part {i}", text, 290)


async def latency(store: Store, repeat: int = 2) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        for question, _source in questions():
            start = time.perf_counter()
            await store.kb_search(question, limit=4)
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


async def ttft(url: str, turns: int, asked: list[tuple[str, str]]) -> float:
    """p50 of the time from a message to its reply's first text, on the full path."""
    settings = Settings(
        _env_file=None,
        database_url=url,
        engine="fixed",
        kb_strict=False,  # type: ignore[call-arg]
    )
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


async def one_database(name: str, url: str, chunks: int, turns: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    store = Store(url)
    await store.start(migrate=True)
    try:
        asked = questions()
        figures["ttft_none"] = await ttft(url, turns, asked)
        start = time.perf_counter()
        outcome = await add_paths(store, [HERE / "articles"], url_base=None)
        articles_s = time.perf_counter() - start
        figures["articles_chunks"] = outcome.chunks
        figures["at1"], figures["at3"], figures["mrr"] = await quality(store)
        vocabulary = sorted(
            {
                word
                for path in (HERE / "articles").rglob("*.md")
                for word in re.findall(r"[a-z]{3,}", path.read_text().lower())
            }
        )
        start = time.perf_counter()
        written = outcome.chunks
        for seed in range(max(0, chunks - outcome.chunks) // FILLER_PER_SOURCE + 1):
            left = min(FILLER_PER_SOURCE, chunks - written)
            if left <= 0:
                break
            written += await store.kb_replace(
                f"filler/{seed}.md", title=f"Filler {seed}", url=None, content_hash=str(seed),
                n_bytes=0, chunks=filler(vocabulary, left, seed),
            )  # fmt: skip
        filler_s = time.perf_counter() - start
        figures["chunks"] = written
        figures["ingest_articles"] = outcome.chunks / articles_s
        figures["ingest_filler"] = (written - outcome.chunks) / filler_s if filler_s else 0
        figures["p50"], figures["p99"] = await latency(store)
        figures["at1_full"], figures["at3_full"], figures["mrr_full"] = await quality(store)
        figures["ttft_kb"] = await ttft(url, turns, asked)
    finally:
        await store.stop()
    print(f"{name}: done", flush=True)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--turns", type=int, default=300)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/kb.db"
        results["sqlite"] = await one_database("sqlite", url, args.chunks, args.turns)
    async with scratch_database(PG_ADMIN) as url:
        results["postgresql"] = await one_database("postgresql", url, args.chunks, args.turns)
    n = len(questions())
    base = int(results["sqlite"]["articles_chunks"])
    print(f"\n{n} questions; BM25. 'alone': the {base} chunks of the 37 articles; 'among': with")
    print(
        f"filler up to {args.chunks:,} chunks. TTFT: message to first reply text, full path, p50."
    )
    header = (
        "database", "hit@1", "hit@3", "MRR", "among:hit@1", "hit@3", "MRR", "p50 ms", "p99 ms",
        "ingest art/s", "bulk/s", "TTFT none", "TTFT kb", "added",
    )  # fmt: skip
    print(" ".join(f"{h:>11}" for h in header))
    for name, f in results.items():
        row = [
            name, f"{f['at1']:.3f}", f"{f['at3']:.3f}", f"{f['mrr']:.3f}", f"{f['at1_full']:.3f}",
            f"{f['at3_full']:.3f}", f"{f['mrr_full']:.3f}", f"{f['p50']:.2f}", f"{f['p99']:.2f}",
            f"{f['ingest_articles']:.0f}", f"{f['ingest_filler']:.0f}", f"{f['ttft_none']:.2f}",
            f"{f['ttft_kb']:.2f}", f"{f['ttft_kb'] - f['ttft_none']:+.2f}",
        ]  # fmt: skip
        print(" ".join(f"{v:>11}" for v in row))


if __name__ == "__main__":
    asyncio.run(main())
