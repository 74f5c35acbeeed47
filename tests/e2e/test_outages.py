"""Redis or the database going away mid-run: users get polite replies, nothing stored is lost, and
service resumes by itself when the dependency comes back."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from frontdesk import texts
from frontdesk.engine.backends.fixed import FixedReplyBackend
from tests.fakes.tcp_proxy import TcpProxy
from tests.support import RecordingChannel, free_port, pipeline


class PrivateRedis:
    """A redis-server of this test's own, so it can be killed without touching anyone else's."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

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
                "--appendonly",
                "no",
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
        down = await p.channel.say("ping while down")
        assert down is not None and down.text == texts.QUEUE_DOWN

        private_redis.start()  # back, empty: no streams, no consumer group
        assert await eventually_answered(p.channel, "ping after") == "pong"

        [conv] = await p.store.list_conversations(limit=1)
        _c, messages = await p.store.conversation(conv.id)
        users = [m.content for m in messages if m.role == "user"]
        assert users[:2] == ["ping 1", "ping while down"]  # the message sent while down is kept
        assert users[-1] == "ping after"


async def test_database_going_away_mid_run(make_settings, pg_database: str) -> None:
    url = urlsplit(pg_database.replace("+asyncpg", ""))
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = pg_database.replace(f"{url.hostname}:{url.port or 5432}", f"127.0.0.1:{proxy.port}")
    if proxied == pg_database:
        proxied = pg_database.replace(f"@{url.hostname}/", f"@127.0.0.1:{proxy.port}/")
    settings = make_settings(database_url=proxied, engine="fixed")
    try:
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
    finally:
        await proxy.stop()
