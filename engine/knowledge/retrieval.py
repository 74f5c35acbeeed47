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

import time
from dataclasses import dataclass, field
from typing import Any

from frontdesk import texts
from frontdesk.settings import Settings
from frontdesk.storage import KnowledgeHit, Store
from frontdesk.storage.search import search_words

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


class Retriever:
    """Finds a turn's passages in the knowledge base of ``store``, within the settings'
    limits. Knows every ``KB_CHECK_EVERY_S`` whether there is a knowledge base at all."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self._articles = 0
        self._checked_at = float("-inf")

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

    async def retrieve(self, message: str) -> Retrieval | None:
        """The passages for ``message``; None when there is no knowledge base."""
        if not await self.active():
            return None
        if not set(search_words(message)) - SMALL_TALK:
            return Retrieval(searched=False)
        hits = await self.store.kb_search(message, limit=self.settings.kb_passages)
        kept: list[KnowledgeHit] = []
        tokens = 0
        for hit in hits:
            if hit.score <= self.settings.kb_min_score:
                continue
            if tokens + hit.n_tokens > self.settings.kb_max_tokens:
                break  # the passages' own cap: the best ones first
            kept.append(hit)
            tokens += hit.n_tokens
        return Retrieval(kept)
