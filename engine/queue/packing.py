"""The queue's Redis connections: commands packed by hiredis in one call each, and replies read
with a timer only while the process waits for Redis's bytes.

redis-py hands each command to hiredis's packer only after checking and encoding every argument
in Python, one generator step and several type checks an argument: about 40 µs of CPU for the
50-odd arguments of a turn's commands, a twentieth of a turn at 64 in flight
(``bench/pipeline.py --packing``). hiredis encodes ``str``, ``bytes``, ``int`` and ``float``
arguments itself, to the same bytes (UTF-8, and ``repr`` for numbers). A command with anything
else (``None``, ``bool``, a ``bytearray``) is packed by redis-py as before, which refuses what it
refuses (``DataError``), as are commands whose name holds more than one word (``"CLIENT
SETNAME"``, which redis-py splits) and those of connections set to another encoding than strict
UTF-8.

redis-py bounds the read of every reply by the connection's ``socket_timeout`` with a timer of
its own (an ``asyncio.timeout``, about 3 µs to arm and cancel): five a turn, one for each reply
of the turn's pipelined commands, though after the first the others are most often read already
and wait for nothing. Here the timer bounds each wait for bytes from the socket instead (the
parser's ``read_from_socket``), by the same ``socket_timeout``: a reply found whole in what was
read already arms none, and a Redis that stops answering fails the read as before (redis-py's
``TimeoutError``, the connection dropped). A read given a timeout of its own (PubSub's) is
redis-py's as before.

On Python 3.11 redis-py bounds each write by ``socket_timeout`` with ``asyncio.wait_for``, which
there runs the write as a task of its own, with a future and a timer besides: two more turns of the
event loop before the command leaves, for each of a turn's round trips to Redis. Here the write is
bounded by ``asyncio.timeout`` instead, in the caller's task (what ``wait_for`` itself does from
3.12 on), and fails as redis-py's does: its ``TimeoutError`` when the bound passes, its
``ConnectionError`` on an error of the socket, the connection dropped either way."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterable
from typing import Any

import hiredis
from redis._parsers import _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Python 3.11's asyncio.wait_for wraps what it waits for in a task; 3.12's is asyncio.timeout
_WAIT_FOR_TASKS = sys.version_info < (3, 12)


class _TimedReads(_AsyncHiredisParser):
    """hiredis's parser, each wait for the socket's bytes bounded by ``bound_s`` while set."""

    bound_s: float | None = None

    async def read_from_socket(self) -> bool:
        if self.bound_s is None:
            return bool(await super().read_from_socket())
        waited = asyncio.timeout(self.bound_s)
        try:
            async with waited:
                return bool(await super().read_from_socket())
        except TimeoutError:
            if waited.expired():
                raise RedisTimeoutError("Timeout reading from Redis") from None
            raise  # the OS's (ETIMEDOUT): redis-py makes it a ConnectionError


class _PackedByHiredis(AbstractConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", _TimedReads)
        super().__init__(*args, **kwargs)
        encoder = self.encoder
        self._hiredis_packs = encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (redis-py's signature)
        **kwargs: Any,
    ) -> Any:
        parser = self._parser
        if timeout is not None or not self.socket_timeout or not isinstance(parser, _TimedReads):
            return await super().read_response(disable_decoding, timeout, **kwargs)
        parser.bound_s = self.socket_timeout  # the socket's waits are timed, not the whole read
        try:
            return await super().read_response(disable_decoding, math.inf, **kwargs)
        finally:
            parser.bound_s = None

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        bound_s = self.socket_timeout
        if not (_WAIT_FOR_TASKS and bound_s and self.is_connected):
            return await super().send_packed_command(command, check_health)
        if check_health:
            await self.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        bound = asyncio.timeout(bound_s)
        try:
            async with bound:
                await self._send_packed_command(command)
        except BaseException as exc:
            await self.disconnect(nowait=True)  # part of a command may be written: not reusable
            if isinstance(exc, TimeoutError) and bound.expired():
                raise RedisTimeoutError("Timeout writing to socket") from None
            if isinstance(exc, OSError):  # the OS's ETIMEDOUT among them: the connection is dead
                raise RedisConnectionError(
                    f"Error {exc.errno or 'UNKNOWN'} while writing to socket. {exc.strerror or exc}."
                ) from exc
            raise

    def pack_command(self, *args: Any) -> list[bytes]:
        name: Any = args[0] if args else None
        if self._hiredis_packs and type(name) in (str, bytes) and name.isalpha():
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # an argument hiredis does not take: redis-py's way below
                pass
        return super().pack_command(*args)


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packed_by_hiredis(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (a redis-py asyncio connection class: TCP, TLS or Unix socket) with its commands
    packed by hiredis in one call; one class for each ``base``."""
    if base not in _PACKED:
        _PACKED[base] = type(f"HiredisPacked{base.__name__}", (_PackedByHiredis, base), {})
    return _PACKED[base]
