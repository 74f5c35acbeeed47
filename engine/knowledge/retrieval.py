"""Retrieval, a step of the worker beside the context builder: the passages of the knowledge
base that best match the user's message, put into the current user turn (never the system
prompt), and the list of their sources shown after the reply.

The passages go in the message being answered, and only there: history holds each earlier user
message as it was stored, without the passages it was given then. So a turn's prompt shares with
the one before it every token up to the previous user message, and an engine's prefix cache keeps
hitting; an old turn's passages do not take room from the history either. (The other choice, an
old turn keeping its passages, would share even more but needs them stored and re-rendered.)

The engine never sees the database: the worker hands the backend a prompt, passages included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from frontdesk import texts
from frontdesk.errors import EngineUnavailable
from frontdesk.settings import Settings
from frontdesk.storage import KnowledgeHit, Store
from frontdesk.storage.search import search_words

log = logging.getLogger(__name__)
KB_CHECK_EVERY_S = 30.0  # how often a worker looks whether a knowledge base exists
# Words of small talk: a message of only these (and stopwords) asks the help centre nothing,
# so strict mode lets the model answer it ("hi", "thanks!", "ok bye")
SMALL_TALK = frozenset(
    """hi hello hey hiya yo thanks thank thx ty cheers ok okay k great cool nice good morning
    afternoon evening bye goodbye see later yes yeah yep no nope please sorry lol""".split()  # noqa: SIM905
)


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What retrieval found for one message: the passages that fit (best first), and whether
    the message had words to search for at all (a greeting has none)."""

    passages: list[KnowledgeHit] = field(default_factory=list)
    searched: bool = True

    @property
    def uncovered(self) -> bool:
        """Asked something, and nothing in the knowledge base fits."""
        return self.searched and not self.passages

    def user_turn(self, message: str) -> str:
        """The message as the model sees it: the passages first, then the message itself."""
        if not self.passages:
            return message
        blocks = [
            f"[{i}] {_label(hit)}\n{hit.text}" for i, hit in enumerate(self.passages, start=1)
        ]
        return (
            "Help-centre passages (answer from these; if they do not answer the question, say "
            "so):\n\n" + "\n\n".join(blocks) + f"\n\nCustomer message:\n{message}"
        )

    def sources(self) -> list[dict[str, Any]]:
        """The chunks given, as stored with the reply."""
        return [
            {"chunk_id": h.chunk_id, "source": h.source, "title": h.title, "url": h.url}
            for h in self.passages
        ]

    def footer(self) -> str:
        """The sources, once each, as Markdown after the reply: each channel renders it its
        own way (Telegram HTML links, Slack mrkdwn links, plain text on the console)."""
        return sources_footer(self.sources())


def sources_footer(sources: list[dict[str, Any]]) -> str:
    seen: dict[str, str] = {}
    for source in sources:
        name = str(source.get("source"))
        if name in seen:
            continue
        title = str(source.get("title") or name).replace("[", "(").replace("]", ")")
        url = source.get("url")
        seen[name] = f"[{title}]({url})" if url else title
    if not seen:
        return ""
    return f"\n\n{texts.SOURCES}: " + ", ".join(seen.values())


def _label(hit: KnowledgeHit) -> str:
    return " > ".join(part for part in (hit.title, hit.headings) if part)


CANDIDATES = 20  # hits taken from each ranking before they are fused
# Reciprocal rank fusion's constant, and the weight of a dense rank against a BM25 one. k = 60
# (Cormack et al.) suits fusing long rankings; of 20 candidates each, a small k lets the top
# ranks decide. Chosen on bench/helpcentre/ by halves of its questions, over k in (2, 3, 5, 8,
# 10, 20, 60) and weights (1, 1.25, 1.5, 2): on the second half the best were k = 3 with a dense
# rank counting 1.25 times and k = 2 with 1.5 (hybrid hit@3 0.929), both among the best on the
# first half too (0.973); of the two, k = 3 ranks better on the whole set (MRR 0.813 against
# 0.806) and on the follow-ups, which took no part in choosing. (Chosen the same way with FTS5's
# BM25 on SQLite, before its postings table: k = 5, weight 1.5.)
RRF_K = 3
DENSE_WEIGHT = 1.25


class Retriever:
    """Finds a turn's passages in the knowledge base of ``store``, within the settings'
    limits: BM25 alone, or with embeddings (``FRONTDESK_EMBEDDINGS``) BM25 and dense vectors
    fused by reciprocal rank (``FRONTDESK_KB_RANKING``). Knows every ``KB_CHECK_EVERY_S``
    whether there is a knowledge base at all."""

    def __init__(self, settings: Settings, store: Store, embedder: Any = None) -> None:
        self.settings, self.store = settings, store
        self.embedder = embedder
        self._index: Any = None  # made at the first search: the store is started by then
        self._articles = 0
        self._checked_at = float("-inf")

    async def stop(self) -> None:
        """Stop the dense index's look for changes, and close the embeddings server's
        connections."""
        if self._index is not None:
            await self._index.stop()
        close = getattr(self.embedder, "close", None)
        if close is not None:
            await close()

    @property
    def min_score(self) -> float:
        if self.settings.kb_min_score is not None:
            return self.settings.kb_min_score
        return 0.3 if self.embedder is not None else 0.0

    async def active(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= KB_CHECK_EVERY_S:
            self._articles = await self.store.kb_count()
            self._checked_at = now
        return self._articles > 0

    @property
    def strict(self) -> bool:
        strict = self.settings.kb_strict
        return self._articles > 0 if strict is None else strict

    async def retrieve(self, message: str, previous: str | None = None) -> Retrieval | None:
        """The passages for ``message``; None when there is no knowledge base. ``previous``:
        the user's message before it, searched with a short follow-up ("and for Belgium?")
        when ``FRONTDESK_KB_REWRITE`` is on."""
        if not await self.active():
            return None
        if not set(search_words(message)) - SMALL_TALK:
            return Retrieval(searched=False)
        if self.settings.kb_rewrite and previous:
            message = rewritten(message, previous)
        mode = self.settings.kb_ranking if self.embedder is not None else "bm25"
        kept: list[KnowledgeHit] = []
        tokens = 0
        hits, by_cosine = await self.ranked(message, mode, self.settings.kb_passages)
        floor = self.min_score if by_cosine or self.settings.kb_min_score is not None else 0.0
        for hit in hits:
            if hit.score <= floor:
                continue
            if tokens + hit.n_tokens > self.settings.kb_max_tokens:
                break  # the passages' own cap: the best ones first
            kept.append(hit)
            tokens += hit.n_tokens
        return Retrieval(kept)

    async def rank(self, message: str, mode: str, limit: int) -> list[KnowledgeHit]:
        """The best ``limit`` chunks for ``message`` by ``mode`` (bm25, dense or hybrid)."""
        return (await self.ranked(message, mode, limit))[0]

    async def ranked(self, message: str, mode: str, limit: int) -> tuple[list[KnowledgeHit], bool]:
        """``rank``, and whether the hits' scores are cosine similarities (with embeddings)
        rather than BM25's."""
        if mode == "bm25" or self.embedder is None:
            return await self.store.kb_search(message, limit=limit), False
        # Hybrid: BM25 runs in the database while the query is embedded (on the CPU, in a
        # thread) and searched, so a turn waits for the slower of the two, not for their sum
        searching = (
            asyncio.ensure_future(self.store.kb_search(message, limit=max(limit, CANDIDATES)))
            if mode == "hybrid"
            else None
        )
        try:
            query = (await self.embedder.embed([message]))[0]
            if self._index is None:
                from .embeddings import dense_index

                self._index = dense_index(self.store, self.embedder.model)
            dense = await self._index.search(query, CANDIDATES if mode == "hybrid" else limit)
        except EngineUnavailable as exc:  # the turn is still answered, from BM25
            log.warning("embeddings unavailable, BM25 alone for this turn: %s", exc)
            if searching is None:
                return await self.store.kb_search(message, limit=limit), False
            return (await searching)[:limit], False
        except BaseException:
            if searching is not None:
                searching.cancel()
            raise
        if searching is None:
            order = [chunk_id for chunk_id, _ in dense]
            lexical: dict[int, KnowledgeHit] = {}
        else:
            bm25 = (await searching)[:CANDIDATES]
            lexical = {hit.chunk_id: hit for hit in bm25}
            order = fuse(
                [[hit.chunk_id for hit in bm25], [chunk_id for chunk_id, _ in dense]],
                weights=[1.0, DENSE_WEIGHT],
            )
        order = order[:limit]
        cosine = dict(dense)
        missing = [chunk_id for chunk_id in order if chunk_id not in cosine]
        cosine.update(await self._index.similarity(missing, query))
        rows = {**lexical, **await self.store.kb_chunks([c for c in order if c not in lexical])}
        hits = [
            dataclasses.replace(rows[c], score=round(cosine.get(c, 0.0), 6))
            for c in order
            if c in rows
        ]
        return hits, True


FOLLOW_UP_WORDS = 6  # a message this short is searched with the user's message before it


def rewritten(message: str, previous: str) -> str:
    """The query for a follow-up: a short message is searched with the previous user message
    before it, so "and for Belgium?" after a question about returns finds returns to Belgium."""
    return f"{previous} {message}" if len(message.split()) <= FOLLOW_UP_WORDS else message


def fuse(
    rankings: list[list[int]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[int]:
    """Reciprocal rank fusion: each id scores the sum of weight / (k + rank) over the rankings
    that hold it (each weight 1 unless given); best first (ties: in the first ranking's order)."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])
