"""Redis or the database going away mid-run: users get polite replies, nothing stored is lost, and
service resumes by itself when the dependency comes back."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from frontdesk import texts
from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends import Chunk, GenerationParams, Prompt
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.storage import Store
from tests.fakes.slack_api import FakeSlack
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram_api import FakeTelegram
from tests.support import RecordingChannel, free_port, pipeline, until


class PrivateRedis:
    """A redis-server of this test's own, so it can be killed without touching anyone else's."""

    def __init__(self, aof_dir: Path | None = None) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.aof_dir = aof_dir  # set: AOF on, fsync every second, as the README advises

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(
                    ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.aof_dir)]
                    if self.aof_dir
                    else ["--appendonly", "no"]
                ),
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            subprocess.run(["sleep", "0.05"])
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """A clean restart (SIGTERM, as a deploy does): with AOF, the data comes back."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait()
        self.start()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


async def eventually_answered(channel: RecordingChannel, text: str, seconds: float = 20) -> str:
    """Say ``text`` until a real answer comes back (each try is a new message)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        reply = await channel.say(text, wait_s=seconds)
        assert reply is not None
        apology = reply.error or reply.text
        if apology not in (texts.QUEUE_DOWN, texts.STORAGE_DOWN, texts.TIMED_OUT):
            return reply.text
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still failing: {apology}")
        await asyncio.sleep(0.3)


async def test_redis_going_away_mid_run(make_settings, private_redis: PrivateRedis) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{private_redis.port}/0",
        engine="fixed",
        reply_timeout_s=5,
    )
    async with pipeline(settings, FixedReplyBackend("pong")) as p:
        assert (await p.channel.say("ping 1")).text == "pong"  # type: ignore[union-attr]

        private_redis.kill()
        # stored, not queued: the gateway keeps trying, and the reply comes once Redis is back
        down = asyncio.create_task(p.channel.say("ping while down"))
        await asyncio.sleep(1.5)
        assert not down.done()

        private_redis.start()  # back, empty: no streams, no consumer group
        answered = await down
        assert answered is not None and answered.text == "pong"
        assert await eventually_answered(p.channel, "ping after") == "pong"

        [conv] = await p.store.list_conversations(limit=1)
        _c, messages = await p.store.conversation(conv.id)
        users = [m.content for m in messages if m.role == "user"]
        assert users[:2] == ["ping 1", "ping while down"]  # the message sent while down is kept
        assert users[-1] == "ping after"


async def test_database_going_away_mid_run(make_settings, pg_database: str) -> None:
    async with paused_database(pg_database) as (proxied, proxy):
        settings = make_settings(database_url=proxied, engine="fixed")
        async with pipeline(settings, FixedReplyBackend("stored")) as p:
            chat = p.channel.chat
            first = await p.channel.say("before")
            assert first is not None and first.text == "stored"

            proxy.pause()
            down = await p.channel.say("during")
            assert down is not None and down.text == texts.STORAGE_DOWN

            proxy.resume()
            assert await eventually_answered(p.channel, "after") == "stored"

            convs = await p.store.list_conversations(limit=100)
            [conv] = [c for c in convs if c.external_key == chat]
            _c, messages = await p.store.conversation(conv.id)
            # "during" was refused with an apology, not half-stored; the rest is all there
            assert [m.content for m in messages] == ["before", "stored", "after", "stored"]


class Slow(FixedReplyBackend):
    """Streams its reply in five pieces over about a second: turns are in flight for a while."""

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        for piece in self.reply.split(" "):
            await asyncio.sleep(0.2)
            yield Chunk(piece + " ")


@pytest.mark.parametrize("aof", [True, False], ids=["restart-with-aof", "data-lost-without-aof"])
async def test_a_redis_restart_with_turns_in_flight_loses_none_and_answers_none_twice(
    make_settings, tmp_path: Path, aof: bool
) -> None:
    redis = PrivateRedis(tmp_path if aof else None)
    redis.start()
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        queue_claim_idle_ms=1000,
        sweep_every_s=0.5,
        sweep_after_s=2,
        worker_concurrency=2,  # the rest of the turns wait in the stream when Redis goes
    )
    reply = "one two three four five"
    try:
        async with pipeline(settings, Slow(reply)) as p:
            chats = [f"{p.channel.chat}-{i}" for i in range(6)]
            msgs = [p.channel.message("hello", chat=chat) for chat in chats]
            asked = [await p.gateway.handle(msg, p.channel) for msg in msgs]
            await asyncio.wait_for(p.channel.streaming.wait(), 10)
            await asyncio.sleep(1.1)  # AOF syncs every second
            if aof:
                redis.restart()
            else:
                redis.kill()
                redis.start()
            await asyncio.wait_for(asyncio.gather(*(t for t in asked if t)), 60)
            await asyncio.sleep(2.5)  # a sweep more: a second answer would be stored by now
            assert [r.text.split() for r in p.channel.delivered] == [reply.split()] * 6
            for chat in chats:
                conv = [
                    c for c in await p.store.list_conversations(limit=50) if c.external_key == chat
                ]
                _c, messages = await p.store.conversation(conv[0].id)
                assert [(m.role, m.status) for m in messages] == [
                    ("user", "ok"),
                    ("assistant", "ok"),
                ]
    finally:
        if redis.proc and redis.proc.poll() is None:
            redis.kill()


@contextlib.asynccontextmanager
async def paused_database(pg_database: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    """The database behind a proxy the test can pause (PostgreSQL stops answering)."""
    url = urlsplit(pg_database.replace("+asyncpg", ""))
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    host = f"{url.hostname}:{url.port or 5432}"
    proxied = pg_database.replace(host, f"127.0.0.1:{proxy.port}")
    if proxied == pg_database:
        proxied = pg_database.replace(f"@{url.hostname}/", f"@127.0.0.1:{proxy.port}/")
    try:
        yield proxied, proxy
    finally:
        await proxy.stop()


async def test_while_postgres_is_down_platform_messages_stay_unacked_and_are_answered_once(
    make_settings, pg_fresh: str, redis_url: str, queue_prefix: str
) -> None:
    """Telegram polling stops taking updates; a Slack event is not acked (Slack sends it
    again); neither user gets an apology for a message they then have to send again."""
    async with (
        paused_database(pg_fresh) as (database_url, proxy),
        FakeTelegram() as telegram,
        FakeSlack() as slack,
    ):
        port = free_port()
        settings = make_settings(
            database_url=database_url,
            redis_url=redis_url,
            queue_prefix=queue_prefix,
            telegram_token=telegram.token,
            telegram_api_url=telegram.base_url,
            slack_bot_token=slack.bot_token,
            slack_signing_secret=slack.signing_secret,
            slack_api_url=slack.base_url,
            http_port=port,
            queue_claim_idle_ms=1000,  # a turn that failed on the outage is retried soon after
        )
        store = Store(pg_fresh)
        await store.start(migrate=True)
        channels = [TelegramChannel(settings), SlackChannel(settings)]
        try:
            async with pipeline(settings, FixedReplyBackend("stored"), channels=channels) as p:
                url = f"http://127.0.0.1:{port}/slack/events"
                telegram.private_message("before")
                await telegram.wait_for(lambda t: len(t.messages_in(1001)) == 1)
                await until(lambda: p.gateway.pending == 0)  # answered and stored

                proxy.pause()
                telegram.private_message("while down")
                event = slack.dm("while down")
                status, _took = await slack.post_event(url, event)
                assert status >= 500  # not acked: Slack sends it again
                await asyncio.sleep(10)  # PostgreSQL stays away for 10 s
                assert len(telegram.messages_in(1001)) == 1  # no apology, no answer yet
                assert slack.messages_in("D0ALICE") == []

                proxy.resume()
                status, _took = await slack.post_event(url, event, retry_num=1)
                assert status == 200
                await telegram.wait_for(lambda t: len(t.messages_in(1001)) == 2, timeout=30)
                await slack.wait_for(lambda s: len(s.messages_in("D0ALICE")) == 1, timeout=30)
                telegram.private_message("after")  # polling goes on
                await telegram.wait_for(lambda t: len(t.messages_in(1001)) == 3, timeout=30)
                # the last answer gets its rating buttons a paced second after it is sent
                await until(lambda: p.gateway.pending == 0, within=10)
            assert [m["text"] for m in telegram.messages_in(1001)] == ["stored"] * 3
            assert [m["text"] for m in slack.messages_in("D0ALICE")] == ["stored"]
            stored = {}
            for conv in await store.list_conversations(limit=10):
                _c, messages = await store.conversation(conv.id)
                users = [m.content for m in messages if m.role == "user"]
                replies = [m.content for m in messages if m.role == "assistant"]
                stored[conv.platform] = (users, replies)
            # each stored once, each answered once
            assert stored["telegram"] == (["before", "while down", "after"], ["stored"] * 3)
            assert stored["slack"] == (["while down"], ["stored"])
        finally:
            await store.stop()
