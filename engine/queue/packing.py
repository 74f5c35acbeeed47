"""Redis commands packed by hiredis in one call each.

redis-py hands each command to hiredis's packer only after checking and encoding every argument
in Python, one generator step and several type checks an argument: about 40 µs of CPU for the
50-odd arguments of a turn's commands, a twentieth of a turn at 64 in flight
(``bench/pipeline.py --packing``). hiredis encodes ``str``, ``bytes``, ``int`` and ``float``
arguments itself, to the same bytes (UTF-8, and ``repr`` for numbers). A command with anything
else (``None``, ``bool``, a ``bytearray``) is packed by redis-py as before, which refuses what it
refuses (``DataError``), as are commands whose name holds more than one word (``"CLIENT
SETNAME"``, which redis-py splits) and those of connections set to another encoding than strict
UTF-8."""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection


class _PackedByHiredis(AbstractConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        encoder = self.encoder
        self._hiredis_packs = encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"

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
