"""The queue's Redis commands packed by hiredis in one call: the same bytes as redis-py's own
packing, the same refusals, on every kind of connection a URL names."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

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
