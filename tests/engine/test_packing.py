"""The queue's Redis commands packed by hiredis in one call: the same bytes as redis-py's own
packing, the same refusals, on every kind of connection a URL names."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.asyncio.connection as redis_connection
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.queue.packing import packed_by_hiredis

Packed = packed_by_hiredis(Connection)

ARGUMENTS = st.one_of(
    st.text(),  # surrogates among them, which neither packing can encode
    st.binary(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.booleans(),  # refused
    st.none(),  # refused
    st.binary().map(bytearray),
    st.binary().map(memoryview),
)
NAMES = st.one_of(
    st.sampled_from(["EVALSHA", "XADD", b"HSET", "CLIENT SETNAME", b"CONFIG GET", "get"]),
    st.text(min_size=1),
    st.binary(min_size=1),
)


def packing(connection: Connection, args: tuple[Any, ...]) -> bytes | type[BaseException]:
    try:
        return b"".join(bytes(chunk) for chunk in connection.pack_command(*args))
    except (DataError, UnicodeEncodeError) as exc:
        return type(exc)


@settings(max_examples=500, deadline=None)
@given(name=NAMES, args=st.lists(ARGUMENTS, max_size=12))
def test_hiredis_packs_a_command_to_redis_py_s_bytes_or_refuses_it_as_redis_py_does(
    name: str | bytes, args: list[Any]
) -> None:
    command = (name, *args)
    assert packing(Packed(), command) == packing(Connection(), command)


def test_a_command_of_plain_arguments_is_packed_by_hiredis_in_one_call(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import hiredis

    calls: list[tuple[Any, ...]] = []
    pack = hiredis.pack_command

    def counted(args: tuple[Any, ...]) -> bytes:
        calls.append(args)
        return pack(args)

    command = ("XADD", "s", "*", "text", "Grüße 😀", "n", 3, "x", 1.5)
    expected = Connection().pack_command(*command)
    monkeypatch.setattr(hiredis, "pack_command", counted)

    def encoded_in_python(self: Encoder, value: Any) -> bytes:
        raise AssertionError(f"{value!r} encoded by redis-py")

    monkeypatch.setattr(Encoder, "encode", encoded_in_python)
    assert Packed().pack_command(*command) == expected
    assert calls == [command]


def test_a_connection_set_to_another_encoding_packs_as_redis_py_does() -> None:
    latin = packed_by_hiredis(Connection)(encoding="latin-1")
    assert latin.pack_command("SET", "k", "é") == [b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///run/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_the_queue_s_connections_are_of_the_url_s_kind_and_packed_by_hiredis(
    url: str, kind: type[Connection]
) -> None:
    queue = RedisQueue(url, consumer="w", prefix="fdtest")
    made = queue.redis.connection_pool.connection_class
    assert made is packed_by_hiredis(kind)  # on the URL's own class, not another kind's
    assert made.__bases__[1] is kind and made.pack_command is Packed.pack_command


async def test_commands_packed_by_hiredis_reach_redis_whole(
    redis_url: str, queue_prefix: str
) -> None:
    queue = RedisQueue(redis_url, consumer="w", prefix=queue_prefix)
    await queue.start(warm=False)
    try:
        key = f"{queue_prefix}:packed"
        await queue.redis.hset(key, mapping={"text": "Grüße 😀", "n": 3, "x": 1.5})
        assert await queue.redis.hgetall(key) == {"text": "Grüße 😀", "n": "3", "x": "1.5"}
        await queue.redis.client_setname("frontdesk-test")  # a command of two words
        assert await queue.redis.client_getname() == "frontdesk-test"
        with pytest.raises(DataError):
            await queue.redis.set(key, None)  # type: ignore[arg-type]
        await queue.redis.delete(key)
    finally:
        await queue.stop()


class _SilentRedis:
    """A Redis stand-in that answers +OK to everything but ``GET silent`` (no reply at all) and
    ``GET cut`` (the first bytes of a reply, then nothing): a Redis that stopped answering."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hiredis

        commands = hiredis.Reader()
        while data := await reader.read(65536):
            commands.feed(data)
            while (command := commands.gets()) is not False:
                if command == [b"GET", b"silent"]:
                    continue
                if command[0] == b"HELLO":  # a Redis of RESP2 only, as redis-py then talks
                    writer.write(b"-ERR unknown command 'HELLO'\r\n")
                else:
                    writer.write(b"$11\r\nhello" if command == [b"GET", b"cut"] else b"+OK\r\n")
            await writer.drain()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("key", ["silent", "cut"])
async def test_a_redis_that_stops_answering_fails_the_read_after_the_socket_timeout(
    key: str,
) -> None:
    """The queue's connections time their waits for bytes, not each reply: a reply that never
    comes, or stops coming half-way, still fails the command after ``socket_timeout``."""
    async with _SilentRedis() as port:
        pool = aioredis.ConnectionPool(
            connection_class=Packed, host="127.0.0.1", port=port, socket_timeout=0.3
        )
        client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        try:
            assert await client.set("k", "v")
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(client.get(key), 10)
            assert 0.25 < time.monotonic() - started < 3
            assert await client.set("k", "v")  # on a new connection: the stalled one was dropped
        finally:
            await client.aclose()


async def test_the_replies_of_a_pipeline_read_together_arm_one_timer_not_one_each(
    redis_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py arms a timer (``socket_timeout``) for each reply it reads; the queue's connections
    only while they wait for Redis's bytes: five replies that came in one read arm one (and, on
    Python 3.11, one more bounds the pipeline's write: redis-py's is ``wait_for``, not counted)."""
    armed: list[float | None] = []

    def counted(delay: float | None) -> asyncio.Timeout:
        armed.append(delay)
        return asyncio.Timeout(None if delay is None else asyncio.get_running_loop().time() + delay)

    monkeypatch.setattr(redis_connection, "async_timeout", counted)  # redis-py's, a reply each
    monkeypatch.setattr(asyncio, "timeout", counted)  # the queue connection's, a wait each
    key = f"{queue_prefix}:timers"
    written = 1 if sys.version_info < (3, 12) else 0
    for kind, expected in ((Connection, 5), (Packed, 1 + written)):
        client = aioredis.from_url(redis_url, connection_class=kind, socket_timeout=5)
        try:
            await client.delete(key)
            armed.clear()
            async with client.pipeline(transaction=False) as pipe:
                for n in range(5):
                    pipe.hset(key, str(n), n)
                assert await pipe.execute() == [1, 1, 1, 1, 1]
            assert len(armed) == expected, kind
            assert armed == [5] * expected
        finally:
            await client.delete(key)
            await client.aclose()


async def test_a_queue_connection_listening_to_a_channel_waits_past_the_socket_timeout(
    redis_url: str, queue_prefix: str
) -> None:
    """PubSub's listening (the cancel channel's) gives its reads no timeout: they stay so."""
    client = aioredis.from_url(redis_url, connection_class=Packed, socket_timeout=0.3)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    channel = f"{queue_prefix}:channel"
    try:
        await pubsub.subscribe(channel)

        async def later() -> None:
            await asyncio.sleep(1.0)
            await client.publish(channel, "stop t1")

        sender = asyncio.create_task(later())
        async for message in pubsub.listen():
            assert message["data"] == b"stop t1"
            break
        await sender
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.parametrize("kind", [Connection, Packed])
async def test_a_write_redis_does_not_take_fails_after_the_socket_timeout(kind: type) -> None:
    """A Redis that stops reading (the socket's buffers full): the write of a command fails with
    redis-py's ``TimeoutError`` after ``socket_timeout``, on redis-py's connections and on the
    queue's alike, and the connection is dropped (part of the command may be written)."""
    stalled: list[asyncio.StreamWriter] = []

    async def never_reads(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = kind(host="127.0.0.1", port=port, socket_timeout=0.3, protocol=2)
    try:
        connection.on_connect_check_health = lambda **_: asyncio.sleep(0)  # no HELLO to answer
        await connection.connect()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="writing"):
            await asyncio.wait_for(connection.send_command("SET", "k", "x" * (64 << 20)), 10)
        assert 0.25 < time.monotonic() - started < 3
        assert not connection.is_connected
    finally:
        await connection.disconnect()
        server.close()
        for writer in stalled:
            writer.close()


async def test_the_queue_s_connections_write_a_command_without_a_task_of_its_own(
    redis_url: str, queue_prefix: str
) -> None:
    """On Python 3.11 redis-py bounds each write with ``asyncio.wait_for``, which runs it as a
    task (two turns of the event loop before the command leaves); the queue's connections
    bound it by ``asyncio.timeout``, in the caller's task. From 3.12 on neither makes one."""
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    key = f"{queue_prefix}:tasks"
    expected = {Connection: 10 if sys.version_info < (3, 12) else 0, Packed: 0}
    for kind, tasks in expected.items():
        client = aioredis.from_url(redis_url, connection_class=kind, socket_timeout=5)
        try:
            await client.set(key, "warm")  # connected: its handshake is not counted
            loop.set_task_factory(counting)
            made.clear()
            try:
                for n in range(10):
                    assert await client.set(key, n)
            finally:
                loop.set_task_factory(None)
            assert len(made) == tasks, kind
            assert await client.get(key) == b"9"
        finally:
            await client.delete(key)
            await client.aclose()
