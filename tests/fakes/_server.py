"""What every platform stand-in shares: an aiohttp server on a free loopback port, the record of
calls, forced 429s, polling until a condition holds, closing open websockets on stop, and no
pauses of Python's cyclic garbage collector while it serves."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any, Self

from aiohttp import WSCloseCode, web


class FakeServer:
    """Base of the stand-ins. A subclass sets ``ROUTE`` (an aiohttp route with ``{method}``),
    implements ``_handle``, appends to ``calls`` and describes a call in ``_describe``. One that
    serves websockets adds their routes in ``_add_routes`` and keeps each open one in
    ``_websockets``, so that ``stop`` can close them."""

    ROUTE = "/{method}"

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._fail_next: dict[str, list[int]] = {}
        self._answered_429 = 0
        self._websockets: set[web.WebSocketResponse] = set()
        self._collecting = False  # whether the collector was on when this one started serving

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", self.ROUTE, self._handle)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        # The runner's cleanup waits for every handler, and a websocket's lasts until it closes
        for ws in list(self._websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        self._websockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        # A platform's clock does not stop, and a stand-in's must not either: late in a test
        # session this process's cyclic collections pause it for 150-430 ms (measured), and a
        # stand-in paused that long takes the calls that waited meanwhile at one moment: 31 in
        # Telegram's second where 25 a second were sent, and a 429 (seen in a full run, never
        # when the test ran alone: the gateways under test were right). So the collector is off
        # while one serves (reference counting still frees what it can), and as it was after.
        self._collecting = gc.isenabled()
        gc.disable()
        try:
            await self.start()
        except BaseException:
            self._restore_collector()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.stop()
        finally:
            self._restore_collector()

    def _restore_collector(self) -> None:
        if self._collecting:
            gc.enable()

    def _add_routes(self, app: web.Application) -> None:
        """Routes beyond ``ROUTE``; none by default."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def _method_key(self, method: str) -> str:
        """How method names compare (Telegram's are case-insensitive)."""
        return method

    def _describe(self, call: Any) -> str:
        return f"{call.method} -> {call.status}"

    def fail_next(self, method: str, *, retry_after: int) -> None:
        """The next call of ``method`` answers 429 with this retry-after, whatever the limits."""
        self._fail_next.setdefault(self._method_key(method), []).append(retry_after)

    def count_429(self) -> int:
        return self._answered_429

    async def wait_for(
        self,
        predicate: Callable[[Any], bool],
        timeout: float = 30,  # noqa: ASYNC109 - a plain number is this helper's contract
    ) -> None:
        """Poll until predicate(self) holds; on timeout fail with the last calls recorded."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                summary = "\n".join(f"  {self._describe(c)}" for c in self.calls[-25:])
                raise AssertionError(f"condition not met in {timeout}s; last calls:\n{summary}")
            await asyncio.sleep(0.02)
