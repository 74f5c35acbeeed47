"""A local stand-in for an OpenAI-compatible chat server, for tests that need an engine to fail on
cue: `FakeOpenAI` answers ``/v1/models`` and streams ``/v1/chat/completions`` as server-sent
events, the way vLLM's and llama.cpp's servers do, and answers every completion with ``failing``'s
HTTP status (503: overloaded) until a test sets ``failing = None``. ``word_delay_s`` paces the
stream, word by word, for tests that need a reply still streaming when they strike; with
``pause_after``, every stream stops after that many words until the test calls ``go_on()``, so
that a reply is surely unfinished when the test strikes, however slow the machine."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ._server import FakeServer


@dataclass
class Call:
    method: str
    status: int
    body: dict[str, Any]


class FakeOpenAI(FakeServer):
    ROUTE = "/v1/{method:.*}"

    def __init__(
        self,
        reply: str = "Here is the real answer.",
        failing: int | None = 503,
        word_delay_s: float = 0.0,
        echo: bool = False,
        models_delay_s: float = 0.0,
        pause_after: int | None = None,
    ) -> None:
        super().__init__()
        self.reply = reply
        self.echo = echo  # answer "You said: <the last user message>" instead of ``reply``
        self.failing = failing
        self.word_delay_s = word_delay_s
        # the first /v1/models answers this late (a server still loading its model)
        self.models_delay_s = models_delay_s
        self.pause_after = pause_after
        self._going_on = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def go_on(self) -> None:
        """Let the streams paused at ``pause_after`` words (and every later one) go on."""
        self._going_on.set()

    def completions(self, status: int = 200) -> list[Call]:
        return [c for c in self.calls if c.method == "chat/completions" and c.status == status]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if method == "models":
            delay, self.models_delay_s = self.models_delay_s, 0.0
            await asyncio.sleep(delay)
            self.calls.append(Call(method, 200, {}))
            return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})
        body = await request.json()
        if self.failing is not None:
            self.calls.append(Call(method, self.failing, body))
            return web.json_response({"error": {"message": "overloaded"}}, status=self.failing)
        self.calls.append(Call(method, 200, body))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        reply = self.reply
        if self.echo:
            reply = (
                "You said: " + [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            )
        for i, word in enumerate(reply.split(" ")):
            if i == self.pause_after:
                await self._going_on.wait()
            piece = word if i == 0 else " " + word
            await self._event(response, {"choices": [{"delta": {"content": piece}}]})
            if self.word_delay_s:
                await asyncio.sleep(self.word_delay_s)
        usage = {"prompt_tokens": 12, "completion_tokens": len(reply.split(" "))}
        await self._event(response, {"choices": [{"delta": {}, "finish_reason": "stop"}]})
        await self._event(response, {"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(data)}\n\n".encode())

    def _describe(self, call: Call) -> str:
        return f"{call.method} -> {call.status}"
