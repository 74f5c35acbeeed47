"""The repository API on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError

from frontdesk.errors import NotFound, StorageUnavailable
from frontdesk.storage import ReplyFigures, Store, TurnContext
from frontdesk.storage.conversations import ALONE_AT_ONCE
from frontdesk.wire import InboundMessage


def message(text: str, *, chat: str, message_id: str | None = None) -> InboundMessage:
    return InboundMessage(
        platform="test",
        chat_id=chat,
        user_id="u-1",
        user_name="Ada",
        message_id=message_id or uuid.uuid4().hex,
        text=text,
    )


def awaiting_of(context: TurnContext) -> list[tuple[str, bool]]:
    """Each message of a turn's history, and whether it awaits its reply."""
    waiting = set(context.awaiting)
    return [(m.content, i in waiting) for m, i in zip(context.history, context.ids, strict=True)]


def counted_statements(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the SQL of every statement ``store`` runs on asyncpg itself (PostgreSQL)."""
    statements: list[str] = []
    driver_rows = store.driver_rows

    async def counted(statement: Any, params: Any) -> Any:
        statements.append(statement.sql)
        return await driver_rows(statement, params)

    monkeypatch.setattr(store, "driver_rows", counted)
    return statements


async def migrate(url: str) -> None:
    """The schema made, by a store of its own."""
    migrated = Store(url)
    await migrated.start(migrate=True)
    await migrated.stop()


def counted_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the kind of every SQLAlchemy element compiled."""
    from sqlalchemy.sql.elements import CompilerElement

    compiled: list[str] = []
    compile_ = CompilerElement.compile

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(type(self).__name__)
        return compile_(self, *args, **kwargs)

    monkeypatch.setattr(CompilerElement, "compile", counting)
    return compiled


@contextlib.contextmanager
def through_sqlalchemy(store: Store) -> Iterator[list[str]]:
    """The SQL of every statement ``store`` runs through SQLAlchemy meanwhile."""
    executed: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        executed.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
    try:
        yield executed
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", seen)


@pytest.fixture
def chat() -> str:
    return uuid.uuid4().hex  # the PostgreSQL database is shared: each test its own chat


async def test_message_and_reply_round_trip(store: Store, chat: str) -> None:
    first = await store.record_user_message(message("Hello, ünïcødé 👋", chat=chat))
    assert first is not None
    figures = ReplyFigures(tokens_in=12, tokens_out=5, ttft_ms=40.5, latency_ms=120.0, model="m")
    reply_id = await store.record_reply(first.conversation_id, first.message_id, "Hi!", figures)
    second = await store.record_user_message(message("And now?", chat=chat))
    assert second is not None and second.conversation_id == first.conversation_id

    _conv, history = await store.conversation(first.conversation_id)
    assert [(m.role, m.content) for m in history] == [
        ("user", "Hello, ünïcødé 👋"),
        ("assistant", "Hi!"),
        ("user", "And now?"),
    ]
    reply = history[1]
    assert reply.id == reply_id
    assert (reply.tokens_in, reply.tokens_out, reply.ttft_ms, reply.latency_ms, reply.model) == (
        12,
        5,
        40.5,
        120.0,
        "m",
    )
    conv, messages = await store.conversation(first.conversation_id)
    assert conv.message_count == 3 and conv.user_name == "Ada" and len(messages) == 3


async def test_replayed_platform_message_is_a_no_op(store: Store, chat: str) -> None:
    original = message("once", chat=chat, message_id="42")
    first = await store.record_user_message(original)
    assert first is not None
    assert await store.record_user_message(original) is None
    conv, messages = await store.conversation(first.conversation_id)
    assert conv.message_count == 1 and [m.content for m in messages] == ["once"]


async def test_history_stops_at_the_turn_and_leaves_out_failed_replies(
    store: Store, chat: str
) -> None:
    a = await store.record_user_message(message("a", chat=chat))
    assert a is not None
    await store.record_reply(a.conversation_id, a.message_id, "", ReplyFigures(), error="boom")
    b = await store.record_user_message(message("b", chat=chat))
    c = await store.record_user_message(message("c", chat=chat))
    assert b is not None and c is not None
    context = await store.turn_context(a.conversation_id, b.message_id)
    assert [m.content for m in context.history] == ["a", "b"]
    assert context.ids == [a.message_id, b.message_id]
    newest = await store.turn_context(a.conversation_id, c.message_id, limit=2)
    assert [m.content for m in newest.history] == ["b", "c"]
    assert newest.ids == [b.message_id, c.message_id]


async def test_a_reply_stored_after_newer_messages_comes_right_after_its_question(
    store: Store, chat: str
) -> None:
    """Three messages sent at once: each is stored before the first reply, so the replies' ids
    come after them; each prompt still holds the earlier questions with their answers."""
    one, two, three = [await store.record_user_message(message(t, chat=chat)) for t in "123"]
    assert one is not None and two is not None and three is not None
    conv = one.conversation_id
    answer_1 = await store.record_reply(conv, one.message_id, "answer 1", ReplyFigures())
    context = await store.turn_context(conv, two.message_id)
    assert [m.content for m in context.history] == ["1", "answer 1", "2"]
    answer_2 = await store.record_reply(conv, two.message_id, "answer 2", ReplyFigures())
    context = await store.turn_context(conv, three.message_id)
    assert context.reply is None
    assert [m.content for m in context.history] == ["1", "answer 1", "2", "answer 2", "3"]
    assert [m.role for m in context.history] == ["user", "assistant"] * 2 + ["user"]
    assert context.ids == [one.message_id, answer_1, two.message_id, answer_2, three.message_id]
    newest = await store.turn_context(conv, three.message_id, limit=3)
    assert [m.content for m in newest.history] == ["2", "answer 2", "3"]
    assert newest.ids == [two.message_id, answer_2, three.message_id]
    reply = (await store.turn_context(conv, two.message_id)).reply
    assert reply is not None and reply.content == "answer 2"  # a redelivery finds its reply


async def test_turn_contexts_asked_together_are_each_what_it_is_alone(
    store: Store, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turns a worker received together ask at once: on PostgreSQL one statement reads all
    their contexts, and each turn gets the same reply and history as when it asks alone."""
    one, two, three = [await store.record_user_message(message(t, chat=chat)) for t in "123"]
    other = await store.record_user_message(message("elsewhere", chat=f"{chat}-other"))
    assert one is not None and two is not None and three is not None and other is not None
    conv = one.conversation_id
    await store.record_reply(conv, one.message_id, "answer 1", ReplyFigures())
    await store.record_reply(conv, two.message_id, "answer 2", ReplyFigures())
    asked = [
        (conv, three.message_id, 200),
        (conv, two.message_id, 200),  # a redelivery: its reply was stored after message 3
        (other.conversation_id, other.message_id, 200),
        (conv, three.message_id, 3),
        (conv, one.message_id, 200),
    ]
    alone = [await store.turn_context(c, m, limit=n) for c, m, n in asked]
    statements = counted_statements(store, monkeypatch)
    together = await asyncio.gather(*(store.turn_context(c, m, limit=n) for c, m, n in asked))
    assert together == alone
    assert [m.content for m in together[0].history] == ["1", "answer 1", "2", "answer 2", "3"]
    assert together[1].reply is not None and together[1].reply.content == "answer 2"
    assert [m.content for m in together[2].history] == ["elsewhere"]
    assert [m.content for m in together[3].history] == ["2", "answer 2", "3"]
    if store.dialect == "postgresql":
        assert len(statements) == 1 and "unnest" in statements[0]


async def test_messages_stored_together_are_each_stored_as_alone(
    store: Store, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messages a gateway takes at about the same moment are stored at once: on PostgreSQL
    one statement stores one message of each chat, each in its chat's conversation and
    awaiting its reply; a chat's second message is stored after its first (a higher id), a
    platform's second delivery of a message is a duplicate (None), a chat with no conversation
    gets one (on PostgreSQL without a write of SQLAlchemy's), and a conversation a person has
    takes its message without a reply route."""
    chats = [f"{chat}-{n}" for n in range(3)]
    opened = [await store.record_user_message(message("hello", chat=c)) for c in chats]
    assert all(m is not None for m in opened)
    handed = opened[2]
    assert handed is not None
    await store.open_handoff(handed.conversation_id, reason="asked", route={}, desk="d")
    statements = counted_statements(store, monkeypatch)
    route = {"platform": "test", "chat_id": chat, "gateway": "gw"}
    twice = message("twice", chat=chats[1])
    asked = [
        message("first of 0", chat=chats[0]),
        twice,
        message("second of 0", chat=chats[0]),
        twice,  # delivered again by its platform
        message("to a person", chat=chats[2]),
        message("new chat", chat=f"{chat}-new"),
    ]
    with through_sqlalchemy(store) as executed:
        stored = await asyncio.gather(*(store.record_user_message(m, route) for m in asked))
    if store.dialect == "postgresql":
        assert "unnest" in statements[0] and sum("unnest" in s for s in statements) == 1
        # the new chat's conversation opened by asyncpg's statements too (the duplicate alone
        # is looked up through SQLAlchemy)
        assert not [s for s in executed if not s.lstrip().startswith("SELECT")]
    first, once, second, again, to_person, new = stored
    assert (once is None) != (again is None)  # one of the two deliveries is stored
    once = once or again
    assert once is not None and not once.handed_off
    assert first is not None and second is not None and second.message_id > first.message_id
    assert first.conversation_id == second.conversation_id == opened[0].conversation_id  # type: ignore[union-attr]
    assert once.conversation_id == opened[1].conversation_id  # type: ignore[union-attr]
    assert to_person is not None and to_person.handed_off
    assert new is not None and new.conversation_id not in {m.conversation_id for m in opened if m}
    context = await store.turn_context(first.conversation_id, second.message_id)
    assert awaiting_of(context) == [
        ("hello", False), ("first of 0", True), ("second of 0", True),
    ]  # fmt: skip
    context = await store.turn_context(once.conversation_id, once.message_id)
    assert [m.content for m in context.history] == ["hello", "twice"]
    context = await store.turn_context(to_person.conversation_id, to_person.message_id)
    assert awaiting_of(context) == [("hello", False), ("to a person", False)]


async def test_a_chat_s_first_message_opens_its_conversation_on_postgresql_in_one_statement(
    store: Store, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chat's first message opens its conversation (the user's id and name on it) and is
    stored in it, awaiting its reply; on PostgreSQL by one statement, and none of SQLAlchemy's."""
    statements = counted_statements(store, monkeypatch)
    route = {"platform": "test", "chat_id": chat, "gateway": "gw"}
    with through_sqlalchemy(store) as executed:
        first = await store.record_user_message(message("hello", chat=chat), route)
    if store.dialect == "postgresql":
        assert len(statements) == 1 and executed == []
    assert first is not None and not first.handed_off
    conv, messages = await store.conversation(first.conversation_id)
    opened = (conv.external_key, conv.user_id, conv.user_name, conv.status, conv.message_count)
    assert opened == (chat, "u-1", "Ada", "active", 1)
    assert [(m.id, m.content) for m in messages] == [(first.message_id, "hello")]
    context = await store.turn_context(first.conversation_id, first.message_id)
    assert awaiting_of(context) == [("hello", True)]


async def test_a_message_stored_before_opens_no_conversation_when_its_chat_has_none(
    store: Store, chat: str
) -> None:
    """A platform's second delivery of a message whose conversation was closed since is a
    duplicate: nothing is stored and no conversation is opened for it."""
    original = message("once", chat=chat, message_id="7")
    first = await store.record_user_message(original)
    assert first is not None
    assert await store.reset_conversation("test", chat) is True
    assert await store.record_user_message(original) is None
    async with store.connect() as conn:
        count = sql("SELECT count(*) FROM conversations WHERE external_key = :chat")
        assert await conn.scalar(count, {"chat": chat}) == 1
    later = await store.record_user_message(message("later", chat=chat))
    assert later is not None and later.conversation_id != first.conversation_id


async def test_gateways_opening_one_chat_s_conversation_at_once_store_every_message_in_it(
    database_url: str, chat: str
) -> None:
    """Two gateways (each its own store) take a new chat's first messages at the same moment:
    one conversation is opened, and every message is stored in it, none lost as a duplicate."""
    stores = [Store(database_url) for _ in range(2)]
    for each in stores:
        await each.start(migrate=True)
    try:
        asked = [message(f"m{n}", chat=chat) for n in range(8)]
        stored = await asyncio.gather(
            *(stores[n % 2].record_user_message(m) for n, m in enumerate(asked))
        )
        assert all(s is not None for s in stored)
        conversations = {s.conversation_id for s in stored if s is not None}
        assert len(conversations) == 1
        conv, messages = await stores[0].conversation(conversations.pop())
        assert conv.message_count == 8
        assert sorted(m.content for m in messages) == sorted(m.text for m in asked)
    finally:
        for each in stores:
            await each.stop()


async def test_a_new_chat_s_first_message_does_not_wait_behind_another_chat_s_held_up(
    pg_database: str, chat: str
) -> None:
    """New chats' first messages that come at the same moment are stored side by side: while
    one chat's conversation cannot be opened yet (another session is opening it and has not
    committed), the others' are stored, a chat's two messages in the order they came; the
    held-up one is stored once the way is clear."""
    store = Store(pg_database)
    await store.start(migrate=True)
    holder = await asyncpg.connect(pg_database.replace("postgresql+asyncpg", "postgresql"))
    try:
        held = f"{chat}-held"
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "INSERT INTO conversations (platform, external_key, user_id, user_name, status, "
            "message_count, created_at, last_activity_at) "
            "VALUES ('test', $1, 'u-2', 'Bo', 'active', 0, now(), now())",
            held,
        )
        asked = [
            message("held up", chat=held),
            message("first", chat=f"{chat}-a"),
            message("second", chat=f"{chat}-a"),
            message("other", chat=f"{chat}-b"),
        ]
        tasks = [asyncio.create_task(store.record_user_message(m)) for m in asked]
        others = await asyncio.wait_for(asyncio.gather(*tasks[1:]), 10)
        assert not tasks[0].done()  # still waiting for the other session
        first, second, other = others
        assert first is not None and second is not None and other is not None
        assert first.conversation_id == second.conversation_id != other.conversation_id
        assert second.message_id > first.message_id
        context = await store.turn_context(first.conversation_id, second.message_id)
        assert [m.content for m in context.history] == ["first", "second"]
        await transaction.rollback()
        stored = await asyncio.wait_for(tasks[0], 10)
        assert stored is not None
        conv, messages = await store.conversation(stored.conversation_id)
        assert (conv.external_key, [m.content for m in messages]) == (held, ["held up"])
    finally:
        await holder.close()
        await store.stop()


async def test_new_chats_first_messages_at_once_take_a_bounded_share_of_the_pool(
    pg_database: str, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty new chats' first messages at the same moment: each opens its own conversation,
    their statements run side by side but never more than ``ALONE_AT_ONCE`` at a time (the
    rest of the pool stays free for the turns' other statements)."""
    store = Store(pg_database)
    await store.start(migrate=True)
    running, most = 0, 0
    driver_rows = store.driver_rows

    async def counted(statement: Any, params: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.01)  # long enough for the others to start, if they may
            return await driver_rows(statement, params)
        finally:
            running -= 1

    monkeypatch.setattr(store, "driver_rows", counted)
    try:
        asked = [message(f"hello {n}", chat=f"{chat}-{n}") for n in range(20)]
        stored = await asyncio.gather(*(store.record_user_message(m) for m in asked))
        assert all(s is not None for s in stored)
        assert len({s.conversation_id for s in stored if s is not None}) == 20
        assert most == ALONE_AT_ONCE
    finally:
        await store.stop()


async def test_replies_stored_together_are_each_stored_as_alone(
    store: Store, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turns a worker answered together store their replies at once: on PostgreSQL one
    statement stores them all, each message stops awaiting its reply, a stored failure is
    replaced and a good reply kept, as alone. A reply that cannot be stored (its conversation
    is gone) fails its own caller only: the others are stored all the same."""
    route = {"platform": "test", "chat_id": chat, "gateway": "gw"}
    asked = [await store.record_user_message(message(t, chat=chat), route) for t in "1234"]
    assert all(m is not None for m in asked)
    conv = asked[0].conversation_id  # type: ignore[union-attr]
    one, two, three, four = (m.message_id for m in asked)  # type: ignore[union-attr]
    failed = await store.record_reply(conv, two, "", ReplyFigures(), error="boom")
    kept = await store.record_reply(conv, three, "kept", ReplyFigures())
    statements = counted_statements(store, monkeypatch)
    figures = ReplyFigures(tokens_in=3, tokens_out=2, model="m")
    stored = await asyncio.gather(
        store.record_reply(conv, one, "answer 1", figures),
        store.record_reply(conv, two, "answer 2", figures),  # replaces the failure
        store.record_reply(conv, three, "again", figures),  # the good reply stays
        store.record_reply(
            conv, four, "answer 4", figures, sources=[{"chunk_id": 1}], body_chars=5
        ),  # a reply that lists its sources after its own text
    )
    if store.dialect == "postgresql":
        assert len(statements) == 1 and "unnest" in statements[0]
    assert stored[1] == failed and stored[2] == kept
    replies = [await store.reply_to(m) for m in (one, two, three, four)]
    assert [(r.id, r.content, r.status) for r in replies if r is not None] == [
        (stored[0], "answer 1", "ok"),
        (stored[1], "answer 2", "ok"),
        (stored[2], "kept", "ok"),
        (stored[3], "answer 4", "ok"),
    ]
    assert (replies[0].tokens_in, replies[0].model) == (3, "m")  # type: ignore[union-attr]
    assert replies[3].sources == [{"chunk_id": 1}]  # type: ignore[union-attr]
    context = await store.turn_context(conv, four)
    assert context.awaiting == []
    assert [m.role for m in context.history] == ["user", "assistant"] * 3 + ["user"]
    assert context.history[-1].content == "4"

    five = await store.record_user_message(message("5", chat=chat), route)
    six = await store.record_user_message(message("6", chat=chat), route)
    assert five is not None and six is not None
    statements.clear()
    results = await asyncio.gather(
        store.record_reply(conv + 10_000, six.message_id, "nowhere", figures),
        store.record_reply(conv, five.message_id, "answer 5", figures),
        return_exceptions=True,
    )
    assert isinstance(results[0], IntegrityError) and isinstance(results[1], int)
    if store.dialect == "postgresql":  # the batch, then each alone
        assert len(statements) == 3
    reply = await store.reply_to(five.message_id)
    assert reply is not None and reply.id == results[1] and reply.content == "answer 5"
    assert await store.reply_to(six.message_id) is None


async def test_a_store_compiles_its_turn_statements_at_first_use_not_when_opened(
    pg_database: str, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL Store compiles its hot statements (asyncpg's) at their first use: opening
    one and reading, as an admin command does, compiles none of them; a gateway's first message
    compiles the message's statement, and it is compiled once."""
    await migrate(pg_database)  # the schema's DDL is compiled here, not counted
    compiled = counted_compiles(monkeypatch)
    store = Store(pg_database)
    await store.start()
    try:
        await store.list_conversations(limit=5)
        assert compiled == []
        first = await store.record_user_message(message("hi", chat=chat))
        made = len(compiled)
        second = await store.record_user_message(message("again", chat=chat))
        assert first is not None and second is not None
        assert made >= 1 and len(compiled) == made
    finally:
        await store.stop()


async def test_a_gateway_s_or_worker_s_store_is_ready_for_its_first_turns_when_started(
    pg_database: str, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL store started ``warm`` (a gateway's or a worker's) compiles its hot
    statements as it starts, so that its first turns, alone or together, compile nothing; and
    its idle connections hold no transaction open, before its turns or after (a migration
    locking the tables goes ahead at once)."""
    await migrate(pg_database)

    async def tables_lock_at_once() -> None:
        admin = await asyncpg.connect(pg_database.replace("+asyncpg", ""))
        try:
            await admin.execute("SET lock_timeout = '2s'")
            async with admin.transaction():
                await admin.execute("LOCK TABLE conversations, messages")
        finally:
            await admin.close()

    compiled = counted_compiles(monkeypatch)
    store = Store(pg_database, pool_size=3)
    await store.start(warm=True)
    try:
        assert len(compiled) >= 5  # the turn's statements, one and several at a time
        compiled.clear()
        await tables_lock_at_once()
        route = {"platform": "test", "chat_id": chat, "gateway": "gw"}
        other = {**route, "chat_id": chat + "-2"}
        first, second = await asyncio.gather(
            store.record_user_message(message("hi", chat=chat), route),
            store.record_user_message(message("hello", chat=chat + "-2"), other),
        )
        assert first is not None and second is not None
        asked = [first, second]
        await asyncio.gather(*(store.turn_context(m.conversation_id, m.message_id) for m in asked))
        replies = (
            store.record_reply(m.conversation_id, m.message_id, "Hi!", ReplyFigures())
            for m in asked
        )
        await asyncio.gather(*replies)
        third = await store.record_user_message(message("and you?", chat=chat), route)
        assert third is not None
        await store.turn_context(third.conversation_id, third.message_id)
        await store.record_reply(third.conversation_id, third.message_id, "Fine.", ReplyFigures())
        assert compiled == []
        await tables_lock_at_once()
    finally:
        await store.stop()


async def test_the_store_a_gateway_or_worker_opens_compiles_its_turn_statements_at_start(
    pg_database: str, chat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``frontdesk.runtime.open_store``, which the gateway, the worker and the shell start their
    store with, starts it warm: its first message compiles nothing."""
    from frontdesk.runtime import open_store
    from frontdesk.settings import Settings

    await migrate(pg_database)
    compiled = counted_compiles(monkeypatch)
    settings = Settings(
        _env_file=None,
        database_url=pg_database,
        database_pool_size=2,
    )
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(stack, settings)
        compiled.clear()
        assert await store.record_user_message(message("hi", chat=chat)) is not None
        assert compiled == []


async def test_one_turn_at_a_time_runs_on_the_connection_used_last(pg_database: str) -> None:
    """A pool hands out the connection used last (most recent first): at a quiet hour the
    turns run on one warm connection, not on each of the pool's in turn."""
    store = Store(pg_database, pool_size=5)
    await store.start()
    try:
        pids = []
        for _ in range(4):
            async with store.connect() as conn:
                pids.append((await conn.execute(sql("SELECT pg_backend_pid()"))).scalar_one())
        assert len(set(pids)) == 1
    finally:
        await store.stop()


async def test_a_chats_message_finds_its_conversation_by_the_active_chats_index(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a connection has run a statement a few times, PostgreSQL may plan it generically,
    without its values. Even so, the statements that store a chat's messages (its first, its
    next, several at once) and the desk's look-up of a chat look the chat's active conversation
    up in the unique index of active chats, by its key. With the status bound as a value they
    could not use that index, and on a table without statistics they read every conversation of
    the platform for each message; several messages at once were joined to every active
    conversation."""
    store = Store(pg_database)
    await store.start(migrate=True)
    statements = counted_statements(store, monkeypatch)
    chat = uuid.uuid4().hex
    try:
        with through_sqlalchemy(store) as executed:
            assert await store.record_user_message(message("first", chat=chat)) is not None
            assert await store.record_user_message(message("next", chat=chat)) is not None
            together = [message(f"m{n}", chat=f"{chat}-{n}") for n in range(3)]
            for opened in together:  # their conversations open first, then the three come at once
                assert await store.record_user_message(opened) is not None
            stored = await asyncio.gather(
                *(store.record_user_message(message("again", chat=m.chat_id)) for m in together)
            )
            assert all(stored)
            assert await store.chat_customer("test", chat) is not None
    finally:
        await store.stop()
    finding = {s for s in [*statements, *executed] if "conversations.external_key" in s}
    # a chat's first message; its next ones, alone or several at once (one statement); the desk's
    assert len(finding) == 3
    conn = await asyncpg.connect(pg_database.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for n, statement in enumerate(sorted(finding)):
            await conn.execute(f"PREPARE finding_{n} AS {statement}")
            params = await conn.fetchval(
                "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = $1",
                f"finding_{n}",
            )
            nulls = ", ".join(["NULL"] * params)
            plan = "\n".join(
                r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE finding_{n}({nulls})")
            )
            lines = plan.splitlines()
            scans = [
                i for i, line in enumerate(lines) if "Scan" in line and " on conversations" in line
            ]
            assert scans, plan
            for i in scans:  # a look-up of the chat's own row, not a scan of many
                assert "Index Scan using uq_conversations_active" in lines[i], plan
                assert "external_key" in lines[i + 1] and "Index Cond" in lines[i + 1], plan
    finally:
        await conn.close()


async def test_a_message_awaits_its_reply_until_one_is_stored(store: Store, chat: str) -> None:
    from datetime import UTC, datetime, timedelta

    route = {"platform": "test", "chat_id": chat, "gateway": "gw", "anywhere": True}
    a = await store.record_user_message(message("a", chat=chat), route)
    b_message = message("b", chat=chat)
    b = await store.record_user_message(b_message, route)
    untracked = await store.record_user_message(message("c", chat=chat))  # no route: not swept
    assert a is not None and b is not None and untracked is not None
    later = datetime.now(UTC) + timedelta(seconds=1)
    mine = [m for m in await store.awaiting_replies(later, 1000) if m.route["chat_id"] == chat]
    assert [(m.message_id, m.route) for m in mine] == [(a.message_id, route), (b.message_id, route)]
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    young = await store.awaiting_replies(an_hour_ago, 1000)
    assert all(m.route.get("chat_id") != chat for m in young)  # too young for a sweep
    context = await store.turn_context(a.conversation_id, b.message_id)
    assert awaiting_of(context) == [("a", True), ("b", True)]

    await store.record_reply(a.conversation_id, a.message_id, "", ReplyFigures(), error="boom")
    mine = [m for m in await store.awaiting_replies(later, 1000) if m.route["chat_id"] == chat]
    assert [m.message_id for m in mine] == [b.message_id]  # a failure told the user: answered
    assert await store.awaiting_reply(message("x", chat=chat).dedupe_key) is None
    again = await store.awaiting_reply(b_message.dedupe_key)  # a platform's retry of b
    assert again is not None and again.message_id == b.message_id
    context = await store.turn_context(a.conversation_id, b.message_id)
    assert awaiting_of(context) == [("a", False), ("b", True)]


async def test_second_reply_to_one_message_is_refused(store: Store, chat: str) -> None:
    a = await store.record_user_message(message("q", chat=chat))
    assert a is not None
    first = await store.record_reply(a.conversation_id, a.message_id, "one", ReplyFigures())
    again = await store.record_reply(a.conversation_id, a.message_id, "two", ReplyFigures())
    assert again == first
    existing = await store.reply_to(a.message_id)
    assert existing is not None and existing.content == "one"
    _conv, messages = await store.conversation(a.conversation_id)
    assert [m.content for m in messages] == ["q", "one"]


async def test_reset_opens_a_new_conversation_and_keeps_the_old(store: Store, chat: str) -> None:
    old = await store.record_user_message(message("before", chat=chat))
    assert old is not None
    assert await store.reset_conversation("test", chat) is True
    new = await store.record_user_message(message("after", chat=chat))
    assert new is not None and new.conversation_id != old.conversation_id
    old_conv, old_messages = await store.conversation(old.conversation_id)
    assert old_conv.status == "closed" and [m.content for m in old_messages] == ["before"]
    listed = {c.id: c for c in await store.list_conversations(limit=1000)}
    assert listed[new.conversation_id].status == "active"
    assert listed[new.conversation_id].last_message == "after"
    assert old.conversation_id in listed


async def test_list_is_ordered_by_last_activity(store: Store) -> None:
    chats = [uuid.uuid4().hex for _ in range(3)]
    ids = []
    for chat in chats:
        recorded = await store.record_user_message(message("hi", chat=chat))
        assert recorded is not None
        ids.append(recorded.conversation_id)
    await store.record_user_message(message("bump", chat=chats[0]))
    listed = [c.id for c in await store.list_conversations(limit=3)]
    assert listed == [ids[0], ids[2], ids[1]]


async def test_unknown_conversation_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.conversation(987654321)


async def test_unmigrated_database_is_refused_with_the_fix(tmp_path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StorageUnavailable, match="frontdesk db upgrade"):
        await store.start()
    await store.upgrade()
    await store.start()  # now current
    await store.stop()


async def test_unreachable_database_is_one_clear_error() -> None:
    store = Store("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StorageUnavailable, match="cannot reach the database"):
        await store.start()
    await store.stop()


async def test_a_connection_lost_under_a_turns_statements_is_storage_unavailable_then_healed(
    pg_database: str, chat: str
) -> None:
    """The statements of every turn (message in, turn context, reply out) run on asyncpg
    itself on PostgreSQL: a pooled connection that the server dropped fails that one call with
    StorageUnavailable (the worker postpones such a turn), and the next call reconnects."""
    store = Store(pg_database, pool_size=1)  # one connection: every call below uses it
    await store.start(migrate=True)
    try:
        first = await store.record_user_message(message("hello", chat=chat))
        assert first is not None
        calls = [
            lambda: store.record_user_message(message("again", chat=chat)),
            lambda: store.turn_context(first.conversation_id, first.message_id),
            lambda: store.record_reply(
                first.conversation_id, first.message_id, "Hi!", ReplyFigures()
            ),
        ]
        for call in calls:
            async with store.connect() as conn:
                pid = (await conn.execute(sql("SELECT pg_backend_pid()"))).scalar_one()
            admin = await asyncpg.connect(pg_database.replace("+asyncpg", ""))
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await admin.close()
            with pytest.raises(StorageUnavailable, match="cannot reach the database"):
                await call()
            await call()  # a new connection
        context = await store.turn_context(first.conversation_id, first.message_id + 10)
        assert [m.content for m in context.history] == ["hello", "again", "Hi!"]  # by id
    finally:
        await store.stop()


async def test_a_turn_statement_cancelled_midway_gives_its_connection_back_to_the_pool(
    pg_database: str, chat: str
) -> None:
    """A turn cancelled (a stopping worker) while its statement runs on asyncpg itself: the
    connection goes back to the pool, so the next statement runs on it."""
    store = Store(pg_database, pool_size=1)
    await store.start(migrate=True)
    try:
        slow = store.driver_statement(sql("SELECT pg_sleep(5)"))
        assert slow is not None
        running = asyncio.create_task(store.driver_rows(slow, {}))
        await asyncio.sleep(0.3)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert store.engine.sync_engine.pool.checkedout() == 0  # given back, not left to gc
        first = await asyncio.wait_for(store.record_user_message(message("hi", chat=chat)), 10)
        assert first is not None
        context = await asyncio.wait_for(
            store.turn_context(first.conversation_id, first.message_id), 10
        )
        assert [m.content for m in context.history] == ["hi"]
    finally:
        await store.stop()


async def test_a_reply_to_a_purged_conversation_is_refused_as_an_integrity_error(
    store: Store, chat: str
) -> None:
    """On both databases alike (PostgreSQL's through asyncpg itself): nothing is stored."""
    first = await store.record_user_message(message("hello", chat=chat))
    assert first is not None
    with pytest.raises(IntegrityError):
        await store.record_reply(
            first.conversation_id + 10_000, first.message_id, "x", ReplyFigures()
        )
    assert await store.reply_to(first.message_id) is None
