"""The Telegram channel end to end: the real python-telegram-bot against the Bot API stand-in,
through the gateway, Redis, the worker and PostgreSQL, with the real model where the reply's
content does not matter to the assertion and a fixed reply where it does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from chatgpt_md_converter import telegram_format
from telegram import Update
from telegram.ext import ApplicationBuilder

from frontdesk import texts
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends import Backend
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.worker import Worker
from frontdesk.errors import FrontdeskError
from tests.fakes.telegram_api import FakeTelegram, parse_html
from tests.support import DiesMidway, PausesAfterTwoWords, Pipeline, SlowBackend, pipeline

ALICE = 1001


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def tg_settings(
    make_settings, fake: FakeTelegram, redis_url: str, queue_prefix: str, pg_database: str
):  # type: ignore[no-untyped-def]
    def build(**values: object):  # type: ignore[no-untyped-def]
        values = {
            "telegram_token": fake.token,
            "telegram_api_url": fake.base_url,
            "telegram_edit_interval": 0.5,
            "redis_url": redis_url,
            "queue_prefix": queue_prefix,
            "max_new_tokens": 48,
            "temperature": 0.0,
            **values,
        }
        return make_settings(**values)

    return build


@contextlib.asynccontextmanager
async def running(settings, backend: Backend) -> AsyncIterator[tuple[Pipeline, TelegramChannel]]:  # type: ignore[no-untyped-def]
    channel = TelegramChannel(settings)
    async with pipeline(settings, backend, channels=[channel]) as p:
        yield p, channel


async def settled(fake: FakeTelegram, p: Pipeline, chat_id: int, count: int = 1) -> list[dict]:
    """Wait until ``count`` bot messages are in the chat and no reply is still streaming."""
    await fake.wait_for(lambda f: len(f.messages_in(chat_id)) >= count and p.gateway.pending == 0)
    return fake.messages_in(chat_id)


async def test_update_in_gives_one_streamed_reply_out(
    fake: FakeTelegram, tg_settings, llama: LlamaCppBackend, pg_database: str
) -> None:
    # Each stand-in numbers messages from 1, so only this test uses the session's shared
    # PostgreSQL database; the others get a SQLite file of their own (same dedupe keys otherwise).
    settings = tg_settings(max_new_tokens=64, database_url=pg_database)
    async with running(settings, llama) as (p, _channel):
        fake.private_message("Tell me a short story about a brave cat.")
        [reply] = await settled(fake, p, ALICE)
        assert len(fake.calls_to("sendMessage", ALICE)) == 1  # one reply, posted once…
        edits = fake.calls_to("editMessageText", ALICE)
        assert edits and all(c.status == 200 for c in edits)  # …then grown by edits
        assert len(reply["texts"]) == len(edits) + 1
        assert fake.calls_to("sendChatAction", ALICE)  # "typing…" before the first text
        # what the user sees is what was stored
        [conv] = [
            c for c in await p.store.list_conversations(limit=200) if c.external_key == str(ALICE)
        ]
        _c, messages = await p.store.conversation(conv.id)
        assert messages[-1].role == "assistant"
        visible, _entities = parse_html(telegram_format(messages[-1].content))
        assert reply["text"] == visible.strip()
        assert {c["command"] for c in fake.commands} >= {"start", "help", "reset", "stop"}


async def test_duplicate_update_gets_no_second_reply_even_after_a_restart(
    fake: FakeTelegram, tg_settings
) -> None:
    """Updates are handled in order, so once the reply to a later message is in, the duplicate
    before it has been dealt with."""
    settings = tg_settings()
    async with running(settings, FixedReplyBackend("Only once.")) as (p, _channel):
        update = fake.private_message("hello")
        await settled(fake, p, ALICE)
        fake.push(update)  # Telegram delivers it again
        fake.private_message("marker one")
        await settled(fake, p, ALICE, count=2)
    async with running(settings, FixedReplyBackend("Only once.")) as (p, _channel):
        fake.push(update)  # and again, to a restarted gateway
        fake.private_message("marker two")
        await settled(fake, p, ALICE, count=3)
    # hello and the two markers (a restarted gateway may meet one 429 from the last one's pace)
    sent = [c for c in fake.calls_to("sendMessage", ALICE) if c.status == 200]
    assert len(sent) == 3
    [conv] = [
        c for c in await p.store.list_conversations(limit=200) if c.external_key == str(ALICE)
    ]
    _c, messages = await p.store.conversation(conv.id)
    assert [m.content for m in messages if m.role == "user"] == [
        "hello",
        "marker one",
        "marker two",
    ]


async def test_long_reply_is_split_into_messages_within_the_limit(
    fake: FakeTelegram, tg_settings
) -> None:
    paragraph = " ".join(f"Sentence number {i} of the answer." for i in range(25))
    reply = "\n\n".join(f"{n}. {paragraph}" for n in range(12))
    assert len(reply) > 10_000
    async with running(
        tg_settings(max_new_tokens=5000, context_tokens=8192), FixedReplyBackend(reply)
    ) as (p, _c):
        fake.private_message("Tell me everything")
        messages = await settled(fake, p, ALICE, count=3)
    assert len(messages) >= 3
    assert all(len(m["text"]) <= 4096 for m in messages)
    joined = " ".join(m["text"] for m in messages)
    assert joined.split() == reply.split()  # the whole text, in order, nothing lost or repeated
    assert fake.count_429() == 0


async def test_a_429_is_waited_out_and_the_reply_arrives(fake: FakeTelegram, tg_settings) -> None:
    fake.fail_next("sendMessage", retry_after=2)
    async with running(tg_settings(), FixedReplyBackend("Patience pays.")) as (p, channel):
        fake.private_message("hi")
        [message] = await settled(fake, p, ALICE)
    assert message["text"] == "Patience pays."
    sends = fake.calls_to("sendMessage", ALICE)
    assert [c.status for c in sends] == [429, 200]
    assert sends[1].at - sends[0].at >= 2.0  # retry_after was honoured
    assert channel.retries_after_429 == 1


async def test_group_answers_only_when_addressed(fake: FakeTelegram, tg_settings) -> None:
    group = -100200
    async with running(tg_settings(), FixedReplyBackend("Here to help.")) as (p, _channel):
        fake.group_message("just chatting among ourselves")
        fake.group_message("what are your hours?", mention_bot=True)
        [answer] = await settled(fake, p, group)
        fake.group_message("and on Sundays?", reply_to_bot_message_id=answer["message_id"])
        await settled(fake, p, group, count=2)
        fake.group_message("/help@someone_else_bot")
        fake.group_message("still chatting")
        # updates are handled in order: once this one is answered, the two above were seen
        fake.group_message("/reset@frontdesk_test_bot")
        await settled(fake, p, group, count=3)
        convs = [
            c for c in await p.store.list_conversations(limit=200) if c.external_key == str(group)
        ]
        _c, messages = await p.store.conversation(convs[-1].id)
    assert [m["text"] for m in fake.messages_in(group)] == [
        "Here to help.",
        "Here to help.",
        texts.RESET,  # the /command addressed to this bot, with its @name taken off
    ]
    assert [m.content for m in messages if m.role == "user"] == [
        "what are your hours?",  # the @mention is taken out of the turn's text
        "and on Sundays?",
    ]


async def test_webhook_checks_the_secret_token(fake: FakeTelegram, tg_settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = tg_settings(
        telegram_webhook_url=f"http://127.0.0.1:{port}/telegram/hook", http_port=port
    )
    secret = hashlib.sha256(fake.token.encode()).hexdigest()
    async with running(settings, FixedReplyBackend("Via webhook.")) as (p, _channel):
        assert fake.webhook is not None and fake.webhook.secret_token == secret
        update = fake.private_message("hello by webhook")
        assert await fake.post_webhook(update, secret="wrong") == 403
        assert await fake.post_webhook(update, secret=None) == 403
        assert p.gateway.pending == 0  # nothing was taken
        assert await fake.post_webhook(update, secret=secret) == 200
        [message] = await settled(fake, p, ALICE)
    assert message["text"] == "Via webhook."
    assert not fake.calls_to("getUpdates")  # webhook mode does not poll


async def test_unbalanced_markdown_still_arrives_readable(fake: FakeTelegram, tg_settings) -> None:
    reply = "**Bold that never closes, `code too, a <tag> & an _underscore\n```python\nx = 1 < 2"
    async with running(tg_settings(), FixedReplyBackend(reply)) as (p, _channel):
        fake.private_message("markdown please")
        [message] = await settled(fake, p, ALICE)
    for fragment in ("Bold that never closes", "<tag> & an", "x = 1 < 2"):
        assert fragment in message["text"]
    failed = [c for c in fake.calls if c.status >= 400]
    assert failed == []


async def test_user_outside_the_allowlist_is_refused_once(fake: FakeTelegram, tg_settings) -> None:
    settings = tg_settings(telegram_allowed_users=["@carol", "42"])
    async with running(settings, FixedReplyBackend("secret")) as (p, _channel):
        fake.private_message("let me in")
        fake.private_message("please?")
        fake.private_message("hi", user_id=42, username="dave")
        await settled(fake, p, 42)
        await fake.wait_for(lambda f: len(f.messages_in(ALICE)) == 1)
    assert [m["text"] for m in fake.messages_in(ALICE)] == [texts.NOT_ALLOWED]
    assert [m["text"] for m in fake.messages_in(42)] == ["secret"]
    stored = {c.external_key for c in await p.store.list_conversations(limit=200)}
    assert str(ALICE) not in stored  # nothing was queued for the refused user


async def test_polling_skips_an_update_it_cannot_read_and_answers_the_next(
    fake: FakeTelegram, tg_settings, caplog: pytest.LogCaptureFixture
) -> None:
    """One update in a shape the channel does not read (a newer Bot API, say) is skipped, by
    its id, without the batch's text in any log line; polling goes on."""
    async with running(tg_settings(), FixedReplyBackend("Still here.")) as (p, _channel):
        fake.push({"update_id": 900, "message": {"message_id": 1, "text": "secret words"}})
        fake.private_message("hello?")
        [message] = await settled(fake, p, ALICE)
    assert message["text"] == "Still here."
    assert "update 900 cannot be read" in caplog.text
    assert "secret words" not in caplog.text


async def test_non_text_and_edits(fake: FakeTelegram, tg_settings) -> None:
    async with running(tg_settings(), FixedReplyBackend("ok")) as (p, _channel):
        fake.private_message("first")
        await settled(fake, p, ALICE)
        fake.edited_message("first, edited")
        fake.non_text_message("sticker")
        await settled(fake, p, ALICE, count=2)
    assert [m["text"] for m in fake.messages_in(ALICE)] == ["ok", texts.NON_TEXT]


async def test_forum_topic_is_its_own_conversation(fake: FakeTelegram, tg_settings) -> None:
    group = -100300
    async with running(tg_settings(), FixedReplyBackend("In the topic.")) as (p, _channel):
        fake.group_message(
            "hi", chat_id=group, mention_bot=True, message_thread_id=7, is_topic_message=True
        )
        [message] = await settled(fake, p, group)
    assert message["message_thread_id"] == 7
    keys = {c.external_key for c in await p.store.list_conversations(limit=200)}
    assert f"{group}:7" in keys


async def test_text_that_came_within_the_edit_interval_shows_though_the_engine_then_goes_quiet(
    fake: FakeTelegram, tg_settings
) -> None:
    """ "Hello" shows at once, " there" comes within the edit interval after it: it shows while
    the engine is quiet (once it has been quiet an interval: the worker sends a Telegram reply's
    deltas at that pace), not only with the engine's next words."""
    settings = tg_settings(telegram_edit_interval=1.0)
    backend = PausesAfterTwoWords(0.3)
    async with running(settings, backend) as (p, _channel):
        fake.private_message("Say hello.")
        await fake.wait_for(
            lambda f: [m["text"] for m in f.messages_in(ALICE)] == ["Hello there"], timeout=10
        )
        backend.go_on.set()
        [reply] = await settled(fake, p, ALICE)
    assert reply["text"] == "Hello there, friend."
    assert reply["texts"][-2:] == ["Hello there", "Hello there, friend."]
    assert len(fake.calls_to("sendMessage", ALICE)) == 1


async def test_a_streamed_reply_s_deltas_come_no_faster_than_telegram_shows_them(
    fake: FakeTelegram, tg_settings
) -> None:
    """A reply is shown by edits at most every FRONTDESK_TELEGRAM_EDIT_INTERVAL (0.5 s here):
    the worker sends its deltas no faster (not every FRONTDESK_STREAM_FLUSH_MS for the gateway to
    merge), and the edits still show it growing."""
    settings = tg_settings(stream_flush_ms=20, max_new_tokens=1000)
    backend = SlowBackend(" ".join(f"w{i}" for i in range(75)), gap_s=0.02)  # 1.5 s
    async with running(settings, backend) as (p, _channel):
        started = time.monotonic()
        fake.private_message("Count for me.")
        [reply] = await settled(fake, p, ALICE)
        took = time.monotonic() - started
        assert isinstance(p.queue, RedisQueue)
        deltas = await p.queue.redis.xrange(p.queue.reply_prefix + p.gateway.id)
    assert reply["text"] == backend.reply
    assert len(fake.calls_to("editMessageText", ALICE)) >= 2  # grown as it streamed
    assert 3 <= len(deltas) <= 2 + took / 0.5


async def test_a_reply_cut_off_by_a_dead_engine_is_replaced_by_the_new_answer(
    fake: FakeTelegram, tg_settings
) -> None:
    """The first worker's reply ran to two messages before its engine died. The second worker's
    short answer takes the first message's place, and the second message goes."""
    settings = tg_settings(queue_claim_idle_ms=300)
    cut_off = "The first half of a long story. " * 160  # 5,120 characters: two messages
    async with running(settings, DiesMidway(cut_off)) as (p, _channel):
        fake.private_message("Tell me everything.")
        assert p.worker is not None and p.worker.dead is not None
        await asyncio.wait_for(asyncio.shield(p.worker.dead), 10)  # shown part of it, then died
        await fake.wait_for(lambda f: len(f.messages_in(ALICE)) == 2)
        second = Worker(settings, p.queue, p.store, FixedReplyBackend("The whole answer."))
        await second.start()
        try:
            await fake.wait_for(
                lambda f: (
                    p.gateway.pending == 0
                    and f.messages_in(ALICE)[0]["text"] == "The whole answer."
                )
            )
        finally:
            await second.stop()
    [reply] = fake.messages_in(ALICE)  # the first message, edited; the second deleted
    assert reply["texts"][0].startswith("The first half")
    assert len(fake.calls_to("sendMessage", ALICE)) == 2
    assert len(fake.calls_to("deleteMessage", ALICE)) == 1


async def test_start_sends_the_configured_greeting(fake: FakeTelegram, tg_settings) -> None:
    settings = tg_settings(greeting="Welcome to Acme support!")
    async with running(settings, FixedReplyBackend("ok")) as (p, _channel):
        fake.private_command("start")
        fake.private_command("help")
        await settled(fake, p, ALICE, count=2)
    assert [m["text"] for m in fake.messages_in(ALICE)] == ["Welcome to Acme support!", texts.HELP]


async def test_frontdesk_gateway_runs_the_telegram_channel_when_a_token_is_set(
    fake: FakeTelegram, redis_url: str, queue_prefix: str, tmp_path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_TELEGRAM_TOKEN": fake.token,
        "FRONTDESK_TELEGRAM_API_URL": fake.base_url,
        "FRONTDESK_REDIS_URL": redis_url,
        "FRONTDESK_QUEUE_PREFIX": queue_prefix,
        "FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}",
        "FRONTDESK_ENGINE": "fixed",
        "FRONTDESK_FIXED_REPLY": "From separate processes.",
    }
    cli = [sys.executable, "-m", "frontdesk.cli"]
    upgrade = await asyncio.create_subprocess_exec(*cli, "db", "upgrade", env=env)
    assert await upgrade.wait() == 0
    procs = [
        await asyncio.create_subprocess_exec(*cli, role, env=env, stderr=asyncio.subprocess.PIPE)
        for role in ("gateway", "worker")
    ]
    try:
        fake.private_message("hello")
        await fake.wait_for(lambda f: bool(f.messages_in(ALICE)), timeout=60)
        assert fake.messages_in(ALICE)[0]["text"] == "From separate processes."
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0, 0]  # both stop cleanly on SIGTERM
    for proc in procs:
        assert proc.stderr is not None
        assert b"Traceback" not in await proc.stderr.read()


async def test_a_start_that_fails_halfway_shuts_python_telegram_bot_down(
    fake: FakeTelegram, tg_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """setMyCommands fails after getMe succeeded: the channel's start raises one clear error,
    and the Application it initialized is shut down again (no session left open), so a retry
    of the start, or the process's exit, finds nothing running."""
    built: list[Any] = []
    build = ApplicationBuilder.build

    def keep(self: ApplicationBuilder) -> Any:  # type: ignore[type-arg]
        built.append(build(self))
        return built[-1]

    monkeypatch.setattr(ApplicationBuilder, "build", keep)
    fake.fail_next("setMyCommands", retry_after=1)
    channel = TelegramChannel(tg_settings())
    with pytest.raises(FrontdeskError, match="cannot reach the Telegram Bot API"):
        async with pipeline(tg_settings(), None, channels=[channel]):
            pass
    [app] = built
    assert fake.calls_to("getMe")  # it got as far as initializing
    assert not app.running and not app._initialized  # and shut that down again
    assert channel.app is None


async def test_a_failed_update_is_logged_by_id_and_kind_never_its_text(
    tg_settings, caplog: pytest.LogCaptureFixture
) -> None:
    channel = TelegramChannel(tg_settings())
    update = Update.de_json(FakeTelegram().private_message("my secret question Zq9"), None)
    context = type("Context", (), {"error": RuntimeError("handler broke")})()
    with caplog.at_level("DEBUG"):
        await channel._on_error(update, context)  # type: ignore[arg-type]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"telegram update {update.update_id} (message) failed" in logged
    assert "secret question" not in caplog.text


async def test_a_reply_from_the_knowledge_base_links_its_source(
    fake: FakeTelegram, tg_settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from frontdesk.engine.knowledge.ingest import add_paths

    (tmp_path / "help").mkdir()
    (tmp_path / "help" / "returns.md").write_text(
        "---\nurl: https://help.example.com/returns\n---\n# Returning an item\n\n"
        "Send shoes back within 30 days for a refund.\n"
    )
    async with running(tg_settings(), FixedReplyBackend("Within 30 days.")) as (p, _channel):
        await add_paths(p.store, [tmp_path / "help"])
        fake.private_message("how do I return my shoes")
        [message] = await settled(fake, p, ALICE)
    assert message["text"] == f"Within 30 days.\n\n{texts.SOURCES}: Returning an item"
    [link] = [e for e in message["entities"] if e["type"] == "text_link"]
    assert link["url"] == "https://help.example.com/returns"
