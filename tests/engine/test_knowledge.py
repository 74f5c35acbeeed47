"""The knowledge base: files read along their structure, added idempotently, synced, searched
on both databases, and used by the worker: the passage in the prompt's current user turn, the
sources after the reply, and "not covered" instead of a guess."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from pypdf import PdfWriter
from sqlalchemy import insert
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from frontdesk import texts
from frontdesk.engine.backends import Chunk, GenerationParams, Prompt, Usage
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.knowledge.chunks import MAX_TOKENS, MIN_TOKENS, chunk_events
from frontdesk.engine.knowledge.documents import Heading, open_document
from frontdesk.engine.knowledge.ingest import add_paths, sync_folder
from frontdesk.storage import ChunkIn, Store, knowledge, migrations
from frontdesk.storage.models import KbChunk, KbSource, utcnow
from frontdesk.wire import InboundMessage
from tests.support import pipeline

CLI = [sys.executable, "-m", "frontdesk.cli"]

RETURNS = """---
url: https://help.example.com/returns
---
# Returning an item

You can send shoes back within 30 days of delivery for a full refund.

## How to return

Print the prepaid label from your account and drop the parcel at a post office.

### Damaged parcels

Photograph the damage before you send it back.

## Refund timing

Refunds reach your card within 5 business days after the parcel arrives.
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_markdown_gives_its_title_url_and_heading_paths(tmp_path: Path) -> None:
    doc = open_document(write(tmp_path, "returns.md", RETURNS), "returns.md")
    assert (doc.title, doc.url) == ("Returning an item", "https://help.example.com/returns")
    headings = [e.path for e in doc.events() if isinstance(e, Heading)]
    assert headings == [
        (),
        ("How to return",),
        ("How to return", "Damaged parcels"),
        ("Refund timing",),
    ]
    [chunk] = list(chunk_events(doc.title, doc.events()))  # short sections share one chunk
    assert chunk.title == "Returning an item" and chunk.headings == ""
    assert "Damaged parcels" in chunk.text and "5 business days" in chunk.text
    assert "url:" not in chunk.text  # the front matter is not text


def test_a_long_article_is_cut_along_its_sections_into_chunks_of_200_to_400_tokens(
    tmp_path: Path,
) -> None:
    sentence = "Our couriers deliver parcels to every region on weekdays and Saturdays. "
    sections = "".join(f"## Part {i}\n\n{sentence * 12}\n\n{sentence * 12}\n\n" for i in range(6))
    doc = open_document(write(tmp_path, "long.md", f"# Delivery\n\n{sections}"), "long.md")
    chunks = list(chunk_events(doc.title, doc.events()))
    assert len(chunks) >= 5
    assert all(c.n_tokens <= MAX_TOKENS for c in chunks)
    assert all(c.n_tokens >= MIN_TOKENS for c in chunks[:-1])
    assert chunks[0].headings == "Part 0" and chunks[-1].headings == "Part 5"


def test_html_and_pdf_titles_and_text(tmp_path: Path) -> None:
    page = (
        "<html><head><title>Gift cards</title><style>p{}</style></head><body>"
        "<h1>Gift cards</h1><p>A gift card is valid for <b>two years</b>.</p>"
        "<h2>Balance</h2><p>See the balance in your account.</p><script>x()</script></body></html>"
    )
    doc = open_document(write(tmp_path, "gift.html", page), "gift.html")
    [chunk] = list(chunk_events(doc.title, doc.events()))
    assert doc.title == "Gift cards"
    assert "valid for two years" in chunk.text and "x()" not in chunk.text

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    with (tmp_path / "scan.pdf").open("wb") as f:
        writer.write(f)
    with pytest.raises(Exception, match=r"scan\.pdf: a PDF without text"):
        open_document(tmp_path / "scan.pdf", "scan.pdf")


async def test_add_is_idempotent_a_change_replaces_and_sync_removes_only_what_is_gone(
    kb_store: Store, tmp_path: Path
) -> None:
    help_centre = tmp_path / "help"
    write(help_centre, "returns.md", RETURNS)
    write(help_centre, "policies/warranty.md", "# Warranty\n\nTwo years on every pair of shoes.\n")
    (help_centre / "logo.md").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0binary")
    other = write(tmp_path / "elsewhere", "faq.txt", "Opening hours are nine to five.\n")

    first = await add_paths(kb_store, [help_centre, other])
    assert sorted(first.added) == ["faq.txt", "policies/warranty.md", "returns.md"]
    assert first.failed == ["logo.md: a binary file, not text"]  # named; the rest added
    before = {h.chunk_id for h in await kb_store.kb_search("warranty shoes refund", limit=10)}

    again = await add_paths(kb_store, [help_centre])
    assert again.added == again.updated == [] and again.chunks == 0
    assert sorted(again.unchanged) == ["policies/warranty.md", "returns.md"]
    after = {h.chunk_id for h in await kb_store.kb_search("warranty shoes refund", limit=10)}
    assert after == before  # nothing was rewritten

    write(help_centre, "policies/warranty.md", "# Warranty\n\nThree years on boots now.\n")
    changed = await add_paths(kb_store, [help_centre])
    assert changed.updated == ["policies/warranty.md"]
    [hit] = await kb_store.kb_search("warranty", limit=5)
    assert "Three years" in hit.text and hit.source == "policies/warranty.md"

    (help_centre / "returns.md").unlink()
    synced = await sync_folder(kb_store, help_centre)
    assert synced.removed == ["returns.md"]
    names = [a.source for a in await kb_store.kb_sources()]
    assert names == ["faq.txt", "policies/warranty.md"]  # faq.txt came from another folder
    assert await kb_store.kb_search("refund parcel label") == []


async def test_search_ranks_the_answering_article_first_and_reads_operators_as_words(
    kb_store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "help"
    write(folder, "returns.md", RETURNS)
    write(folder, "shipping.md", "# Shipping\n\nParcels to Belgium take two days by bpost.\n")
    write(folder, "sizes.md", "# Size guide\n\nMeasure your foot in centimetres.\n")
    await add_paths(kb_store, [folder])
    hits = await kb_store.kb_search("how long until my refund hits my card?")
    assert hits[0].source == "returns.md"
    assert hits[0].url == "https://help.example.com/returns"
    assert all(0 < h.score < 1 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for nasty in ['belgium" OR 1=1; --', "NEAR(belgium) AND -bpost*", "belgium'); DELETE"]:
        [hit] = await kb_store.kb_search(nasty)  # just words: only shipping.md holds them
        assert hit.source == "shipping.md"
    assert await kb_store.kb_search("' OR '' = '") == []
    assert len(await kb_store.kb_sources()) == 3


async def test_bm25_weighs_a_rare_word_over_a_common_one_and_a_short_chunk_over_a_long_one(
    kb_store: Store, tmp_path: Path
) -> None:
    """BM25's IDF and length normalisation, on both databases: "insoles" is in one article and
    "shoes" in all, so the one with "insoles" comes first though others say "shoes" more; of
    two articles that say "laces" once, the shorter comes first."""
    folder = tmp_path / "help"
    for n in range(4):
        write(folder, f"shoes{n}.md", f"# Page {n}\n\nShoes, shoes and more shoes for you.\n")
    write(folder, "insoles.md", "# Inserts\n\nOur insoles fit all shoes.\n")
    write(folder, "laces-short.md", "# Cords\n\nSpare laces come free.\n")
    filler = " ".join(f"word{n}" for n in range(120))
    write(folder, "laces-long.md", f"# Strings\n\nSpare laces come free. {filler}\n")
    await add_paths(kb_store, [folder])
    assert (await kb_store.kb_search("shoes insoles"))[0].source == "insoles.md"
    laces = [h.source for h in await kb_store.kb_search("laces")]
    assert laces == ["laces-short.md", "laces-long.md"]


async def test_optimizing_the_index_after_a_large_add_keeps_every_hit(
    kb_store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "help"
    write(folder, "returns.md", RETURNS)
    write(folder, "shipping.md", "# Shipping\n\nParcels to Belgium take two days by bpost.\n")
    await add_paths(kb_store, [folder])
    query = "refund parcel belgium label"
    before = [(h.chunk_id, h.score) for h in await kb_store.kb_search(query, limit=10)]
    await kb_store.kb_optimize()  # what an add of 1,000 chunks or more ends with
    assert [(h.chunk_id, h.score) for h in await kb_store.kb_search(query, limit=10)] == before
    assert len(before) >= 2


async def test_an_add_of_1000_chunks_or_more_ends_by_optimizing_the_index(
    kb_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    optimized: list[bool] = []
    original = kb_store.kb_optimize

    async def noted() -> None:
        optimized.append(True)
        await original()

    monkeypatch.setattr(kb_store, "kb_optimize", noted)
    write(tmp_path / "small", "shipping.md", "# Shipping\n\nParcels take two days.\n")
    await add_paths(kb_store, [tmp_path / "small"])
    assert optimized == []  # one chunk: the index is left to itself
    sections = "".join(
        f"## Part {n}\n\n" + "Insoles and laces. " * 220 + "\n\n" for n in range(1_000)
    )
    write(tmp_path / "large", "catalogue.md", f"# Catalogue\n\n{sections}")
    outcome = await add_paths(kb_store, [tmp_path / "large"])
    assert outcome.chunks >= 1_000 and optimized == [True]


async def test_a_word_in_most_chunks_of_a_large_knowledge_base_is_left_out_while_others_match(
    kb_store: Store, tmp_path: Path
) -> None:
    """Past 1,000 chunks, a query word in more than half of them is not searched (it would
    cost a ranking of every chunk for almost no weight) while another word of the query is in
    some chunk; alone, or with words that match nothing, it is searched as before."""
    filler = [
        ChunkIn("Catalogue", f"x{i}", f"part number w{i} of the catalogue", 8) for i in range(1_200)
    ]
    await kb_store.kb_replace(
        "catalogue.md", title="Catalogue", url=None, content_hash="c", n_bytes=0, chunks=filler
    )
    write(tmp_path / "help", "refunds.md", "# Refunds\n\nPart of a refund can go to a gift card.\n")
    await add_paths(kb_store, [tmp_path / "help"])
    assert [h.source for h in await kb_store.kb_search("part refund", limit=5)] == ["refunds.md"]
    assert len(await kb_store.kb_search("part", limit=5)) == 5
    assert len(await kb_store.kb_search("part zebra", limit=5)) == 5  # zebra: in no chunk


async def test_a_search_stopped_midway_leaves_the_next_search_unharmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite stems a query's words in a scratch table of the connection's own; a search that
    fails or is cancelled after writing its words there must not break the next one on that
    connection."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}")
    await store.start(migrate=True)
    try:
        write(tmp_path / "help", "shipping.md", "# Shipping\n\nParcels to Belgium take two days.\n")
        await add_paths(store, [tmp_path / "help"])
        monkeypatch.setattr(knowledge, "_SQLITE_STEMS", sql("SELECT * FROM no_such_table"))
        with pytest.raises(Exception, match="no_such_table"):
            await store.kb_search("parcels")
        monkeypatch.undo()
        [hit] = await store.kb_search("belgium parcels")
        assert hit.source == "shipping.md"
    finally:
        await store.stop()


async def test_articles_another_process_just_added_score_above_zero_before_the_counts_refresh(
    kb_store: Store, tmp_path: Path
) -> None:
    """BM25's count of chunks is read every 30 s; a word of articles added meanwhile (by `kb
    add`, another process) can be in more chunks than it says, and still weighs above 0."""
    write(tmp_path / "one", "shipping.md", "# Shipping\n\nParcels take two days.\n")
    await add_paths(kb_store, [tmp_path / "one"])
    assert await kb_store.kb_search("parcels")  # the count is read now: one chunk
    other = Store(kb_store.url)
    await other.start()
    try:
        boots = [ChunkIn("Boots", f"b{i}", f"waterproof boots, pair {i}", 5) for i in range(5)]
        await other.kb_replace(
            "boots.md", title="Boots", url=None, content_hash="b", n_bytes=0, chunks=boots
        )
    finally:
        await other.stop()
    hits = await kb_store.kb_search("waterproof boots")
    assert len(hits) == 5 and all(h.score > 0 for h in hits)


async def test_a_sqlite_knowledge_base_from_before_its_postings_table_is_found_alike_after_upgrade(
    tmp_path: Path,
) -> None:
    """An SQLite knowledge base written under FTS5 (before 0014) gets its postings from FTS5's
    index at `frontdesk db upgrade`: each search finds the same chunks with the same scores as
    the same articles added afresh; a downgrade gives FTS5's index back, whole."""
    chunks = [
        ChunkIn("Shipping", "Belgium", "Parcels to Belgium take two days by bpost.", 12),
        ChunkIn(
            "Shipping", "Belgium > Costs", "Shipping to Belgium costs 5 euros; free over 50.", 14
        ),
        ChunkIn("Returns", "", "Send shoes back within 30 days, in their box, for a refund.", 15),
    ]
    old = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_async_engine(old)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(migrations._config(sync), "0013"))
        source_id = await conn.scalar(
            insert(KbSource)
            .values(source="help.md", title="Help", url=None, content_hash="h", n_chunks=3,
                    n_bytes=0, updated_at=utcnow())
            .returning(KbSource.id)
        )  # fmt: skip
        await conn.execute(
            insert(KbChunk),
            [{"source_id": source_id, "position": i, "title": c.title, "headings": c.headings,
              "text": c.text, "n_tokens": c.n_tokens} for i, c in enumerate(chunks)],
        )  # fmt: skip
    await engine.dispose()
    migrated, fresh = Store(old), Store(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    await migrated.start(migrate=True)
    await fresh.start(migrate=True)
    try:
        await fresh.kb_replace(
            "help.md", title="Help", url=None, content_hash="h", n_bytes=0, chunks=chunks
        )
        for query in ("belgium", "how much is shipping to belgium", "refund for my shoes"):
            found = [(h.text, h.score) for h in await migrated.kb_search(query)]
            assert found and found == [(h.text, h.score) for h in await fresh.kb_search(query)]
        assert (await migrated.kb_search("parcels belgium"))[0].text == chunks[0].text
    finally:
        await migrated.stop()
        await fresh.stop()
    engine = create_async_engine(old)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(migrations._config(sync), "0013"))
        matched = await conn.execute(
            sql("SELECT rowid FROM kb_fts WHERE kb_fts MATCH 'belgium' ORDER BY rowid")
        )
        assert len(matched.all()) == 2
    await engine.dispose()


class PromptRecorder(FixedReplyBackend):
    """A fixed reply that records each prompt it is given."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.prompts: list[str] = []

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        self.prompts.append(prompt.text)
        yield Chunk(self.reply)
        yield Chunk("", Usage(prompt.n_tokens, 3, "stop"))


async def test_a_turn_gets_the_passage_in_its_user_turn_and_the_reply_lists_its_source(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings(engine="fixed", kb_url_base="https://help.example.com")
    backend = PromptRecorder("Send them back within 30 days.")
    async with pipeline(settings, backend) as p:
        write(tmp_path / "help", "returns.md", RETURNS)
        write(tmp_path / "help", "sizes.md", "# Size guide\n\nMeasure your foot.\n")
        await add_paths(p.store, [tmp_path / "help"])
        reply = await p.channel.say("I want to return my shoes, how?")
        assert reply is not None
        assert reply.text == (
            "Send them back within 30 days.\n\n"
            f"{texts.SOURCES}: [Returning an item](https://help.example.com/returns)"
        )
        system, user_turn = backend.prompts[0].split("<user>\n", 1)
        assert "30 days of delivery" in user_turn and "30 days of delivery" not in system
        assert user_turn.rstrip().endswith("I want to return my shoes, how?\n<assistant>")

        follow_up = await p.channel.say("and how long does the refund take?")
        assert follow_up is not None
        # the earlier turn as it was stored: no passages, and the reply without its sources
        earlier = backend.prompts[1].split("<user>\n")[1]
        assert earlier.startswith("I want to return my shoes, how?\n<assistant>\n")
        assert "Send them back within 30 days.\n<user>" in backend.prompts[1]
        [conv] = await p.store.list_conversations(limit=1)
        _c, messages = await p.store.conversation(conv.id)
        assert [s["source"] for s in messages[1].sources] == ["returns.md"]
        assert messages[1].content == reply.text  # stored as shown
    env = {"FRONTDESK_DATABASE_URL": settings.database_url, "PATH": ""}
    shown = await asyncio.to_thread(
        subprocess.run, [*CLI, "conversations", "show", str(conv.id), "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    given = json.loads(shown.stdout)["messages"][1]["sources"]
    assert [(g["source"], g["chunk_id"]) for g in given] == [
        ("returns.md", messages[1].sources[0]["chunk_id"])
    ]
    exported = await asyncio.to_thread(
        subprocess.run, [*CLI, "export", "--format", "jsonl"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [json.loads(r["kb_sources"])[0]["source"] for r in rows if r["kb_sources"]] == [
        "returns.md",
        "returns.md",
    ]


async def test_strict_mode_says_the_help_centre_does_not_cover_it_instead_of_guessing(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings(engine="fixed")
    backend = PromptRecorder("an improvised answer")
    async with pipeline(settings, backend) as p:
        write(tmp_path / "help", "returns.md", RETURNS)
        await add_paths(p.store, [tmp_path / "help"])
        uncovered = await p.channel.say("Can I pay with bitcoin?")
        assert uncovered is not None and uncovered.text == texts.NOT_COVERED
        assert backend.prompts == []  # the engine was not asked
        greeting = await p.channel.say("hi!")  # no words to search for: small talk
        assert greeting is not None and greeting.text == "an improvised answer"


async def test_with_retrieval_each_prompt_extends_the_previous_one_up_to_its_user_message(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings(engine="fixed", context_tokens=60_000)
    backend = PromptRecorder("Here is what our help centre says.")
    async with pipeline(settings, backend) as p:
        write(tmp_path / "help", "returns.md", RETURNS)
        await add_paths(p.store, [tmp_path / "help"])
        for i in range(10):
            await p.channel.say(f"question {i} about a refund for my parcel")
    for before, now in zip(backend.prompts, backend.prompts[1:], strict=False):
        shared = before[: before.rindex("<user>\n")]
        assert now.startswith(shared)


def test_the_cli_adds_lists_searches_as_json_and_exits_2_on_a_missing_path(
    tmp_path: Path,
) -> None:
    env = {"FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}", "PATH": ""}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    assert cli("db", "upgrade").returncode == 0
    write(tmp_path / "help", "returns.md", RETURNS)
    added = cli("kb", "add", str(tmp_path / "help"))
    assert added.returncode == 0 and "1 added" in added.stdout
    [hit] = json.loads(cli("kb", "search", "refund card", "--limit", "1", "--json").stdout)
    assert set(hit) >= {"source", "title", "text", "score", "chunk_id"}
    assert hit["source"] == "returns.md"
    [article] = json.loads(cli("kb", "list", "--json").stdout)
    assert article["title"] == "Returning an item"
    missing = cli("kb", "add", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no such file or folder: {tmp_path / 'nope'}"
    ]
    gone = cli("kb", "remove", "nope.md")
    assert gone.returncode == 3 and "Traceback" not in gone.stderr


def test_kb_add_of_a_large_file_shows_a_progress_bar_that_moves_within_it(
    tmp_path: Path,
) -> None:
    """Over 5 MB a bar shows how much is read, and moves while one large file is added; a
    small add shows none. (TTY_COMPATIBLE: rich draws the bar as on a terminal.)"""
    env = {
        "FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}",
        "TTY_COMPATIBLE": "1",
        "PATH": "",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    assert cli("db", "upgrade").returncode == 0
    section = "## Part {}\n\n" + " ".join(["refund parcel label store boot"] * 16) + "\n\n"
    write(tmp_path / "big", "big.md", "# Big\n\n" + "".join(map(section.format, range(11_000))))
    added = cli("kb", "add", str(tmp_path / "big"))
    assert added.returncode == 0 and "1 added" in added.stdout
    shown = {float(x) for x in re.findall(r"([0-9.]+)/5\.[0-9] MB", added.stderr)}
    assert any(0 < x < 5 for x in shown), shown  # part of the file read, while it was added
    write(tmp_path / "small", "returns.md", RETURNS)
    small = cli("kb", "add", str(tmp_path / "small"))
    assert small.returncode == 0 and "MB" not in small.stderr


async def test_the_console_shows_the_source_as_plain_text(make_settings, tmp_path: Path) -> None:
    import io

    from frontdesk.bots.console import ConsoleChannel

    settings = make_settings(engine="fixed")
    printed = io.StringIO()
    console = ConsoleChannel(stdin=io.StringIO(""), stdout=printed, user="ada")
    async with pipeline(settings, PromptRecorder("Within 30 days."), channels=[console]) as p:
        write(tmp_path / "help", "returns.md", RETURNS)
        await add_paths(p.store, [tmp_path / "help"])
        reply = await p.gateway.handle(console_message("how do I return my shoes"), console)
        assert reply is not None
        await reply
    assert printed.getvalue().endswith(
        f"Within 30 days.\n\n{texts.SOURCES}: Returning an item (https://help.example.com/returns)\n"
    )


def console_message(text: str) -> InboundMessage:
    return InboundMessage(
        platform="console",
        chat_id="ada",
        user_id="ada",
        user_name="ada",
        message_id="m1",
        text=text,
    )


async def test_a_huge_file_is_added_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}")
    await store.start(migrate=True)
    paragraph = ("Our couriers deliver parcels on weekdays and on Saturdays. " * 6).strip()
    huge = tmp_path / "huge.md"
    with huge.open("w") as f:
        f.write("# A very long manual\n\n")
        for i in range(20_000):
            if i % 50 == 0:
                f.write(f"## Chapter {i // 50}\n\n")
            f.write(f"{paragraph} ({i})\n\n")
    size = huge.stat().st_size
    tracemalloc.start()
    try:
        outcome = await add_paths(store, [huge])
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.stop()
    assert outcome.added == ["huge.md"] and outcome.chunks > 2_000
    assert size > 7_000_000 and peak < size / 2  # never the whole file, nor all its chunks


@pytest.mark.parametrize("rewrite", [True, False])
async def test_a_short_follow_up_is_searched_with_the_message_before_it(
    make_settings, tmp_path: Path, rewrite: bool
) -> None:
    settings = make_settings(engine="fixed", kb_rewrite=rewrite)
    backend = PromptRecorder("In 5 business days.")
    async with pipeline(settings, backend) as p:
        write(tmp_path / "help", "returns.md", RETURNS)
        write(tmp_path / "help", "sizes.md", "# Size guide\n\nMeasure your foot.\n")
        await add_paths(p.store, [tmp_path / "help"])
        first = await p.channel.say("how do refunds work")
        follow_up = await p.channel.say("and how quick is that?")
    assert first is not None and texts.SOURCES in first.text
    assert follow_up is not None
    if rewrite:  # found through the message before it
        assert follow_up.text.endswith(
            f"{texts.SOURCES}: [Returning an item](https://help.example.com/returns)"
        )
        assert (
            "5 business days after the parcel arrives" in backend.prompts[1].rsplit("<user>", 1)[1]
        )
    else:  # "and how quick is that?" alone matches nothing
        assert follow_up.text == texts.NOT_COVERED
