"""Search means the same on SQLite and on PostgreSQL: every word of a query must match, common
words are left out on both, and nothing in a query is an operator. The same messages are stored in
both databases, the same queries (symbols and operator words included) run on each, and each finds
the same messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from frontdesk.storage import Store
from frontdesk.storage.logs import LogFilter, Logs
from frontdesk.wire import InboundMessage

TEXTS = [
    "I want a refund for my shoes",
    "My card was charged twice, refund the card please",
    "Where is my parcel? Mail ann@example.com",
    "See https://shop.example.com/returns for the returns form",
    "The e-mail never came; the 1.5 kg box did",
    "I don't want a refund, I want new shoes",
    "Refunds take 5-10 days (or so)",
    "card:* and refund <-> card are not operators",
]
QUERIES = [
    "refund",
    "refunds",
    "-refund",
    "refund -card",
    "refund or card",
    "refund OR card",
    "refund AND NOT card",
    '"refund card"',
    "refund & card",
    "refund | card",
    "!card",
    "card:*",
    "refund <-> card",
    "ann",
    "ann@example.com",
    "example.com",
    "returns",
    "e-mail",
    "1.5",
    "don't",
    "the refund",
    "the",
    "'; DROP TABLE messages; --",
    "(refund)",
    "5-10",
]


@pytest.fixture
async def both(tmp_path: Path, pg_fresh: str) -> AsyncIterator[dict[str, Logs]]:
    """The same messages in a SQLite and a PostgreSQL database."""
    stores = {
        "sqlite": Store(f"sqlite+aiosqlite:///{tmp_path / 'search.db'}"),
        "postgresql": Store(pg_fresh),
    }
    for store in stores.values():
        await store.start(migrate=True)
        for text in TEXTS:
            msg = InboundMessage("telegram", "chat", "u1", uuid.uuid4().hex, text, "Ann")
            assert await store.record_user_message(msg) is not None
    yield {name: Logs(store) for name, store in stores.items()}
    for store in stores.values():
        await store.stop()


async def found(logs: Logs, query: str) -> list[str]:
    return sorted(h.text for h in await logs.search(query, LogFilter(limit=None)))


@pytest.mark.parametrize("query", QUERIES)
async def test_a_query_finds_the_same_messages_on_both_databases(
    both: dict[str, Logs], query: str
) -> None:
    assert await found(both["sqlite"], query) == await found(both["postgresql"], query)


async def test_every_word_must_match_and_nothing_is_an_operator(both: dict[str, Logs]) -> None:
    for logs in both.values():
        refund = await found(logs, "refund")
        assert len(refund) == 5  # "refunds" too: both stem
        assert await found(logs, "-refund") == refund  # a dash excludes nothing
        both_words = [t for t in refund if "card" in t.lower()]
        assert await found(logs, "refund -card") == both_words  # it is a word to match
        assert await found(logs, "refund or card") == both_words  # "or" joins nothing
        assert await found(logs, '"refund card"') == both_words  # quotes make no phrase
        assert await found(logs, "ann") == [TEXTS[2]]  # an address is words, on both
        assert await found(logs, "returns") == [TEXTS[3]]
        assert await found(logs, "the") == []  # only common words: nothing to look for
        hits = await logs.search("refunds card", LogFilter(limit=None))
        assert {frozenset(h.hits) for h in hits} == {frozenset({"refund", "card"})}
