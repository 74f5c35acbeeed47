"""``openai``: any OpenAI-compatible chat server (``vllm serve``, llama.cpp's server and others).

The server applies the model's chat template, so ``render`` only packs the messages; its token
count is an estimate (a token per three characters, rounded up, plus a few per message, which
over-counts English), since the tokenizer lives on the server. Replies stream over server-sent
events from ``/v1/chat/completions``.

Several base URLs are balanced by fewest requests in flight. A request that fails before its first
token (the connection refused or dropped, a timeout, a 5xx) is retried with backoff on the next
replica, and the one that failed is skipped for a cool-down. Once text has gone out nothing is
retried, as that would repeat it; the error goes to the worker. A cancel closes the stream, which
makes the server abort the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from frontdesk.errors import ConfigError, EngineUnavailable
from frontdesk.settings import Settings
from frontdesk.wire import ChatMessage

from . import Chunk, GenerationParams, Prompt, Usage

log = logging.getLogger(__name__)

ATTEMPTS = 4
BACKOFF_S = 0.2  # doubled after each failed attempt
COOL_DOWN_S = 10.0
IN_FLIGHT_PER_REPLICA = 32  # the worker's default concurrency: servers like vLLM batch this many
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 6


class _Retryable(Exception):
    """A failure before the first token: safe to try again elsewhere."""


@dataclass
class Replica:
    url: str  # the base URL, ending in /v1
    in_flight: int = 0
    cool_until: float = 0.0
    failures: int = 0


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        if not base_urls:
            raise ConfigError("the openai engine needs FRONTDESK_OPENAI_BASE_URLS")
        self.replicas = [Replica(_v1(url)) for url in base_urls]
        self.max_in_flight = IN_FLIGHT_PER_REPLICA * len(self.replicas)
        self.model = model or ""
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._responses: dict[str, aiohttp.ClientResponse] = {}
        self._cancelled: set[str] = set()
        self._turn = 0  # round-robin among equally loaded replicas

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIBackend:
        return cls(
            settings.openai_base_urls,
            model=settings.openai_model,
            api_key=settings.openai_api_key,
            connect_timeout_s=settings.openai_connect_timeout_s,
            read_timeout_s=settings.openai_read_timeout_s,
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        if self.model:
            return
        # No model named: use the first one a replica serves
        for replica in self.replicas:
            try:
                async with self._session.get(f"{replica.url}/models") as response:
                    response.raise_for_status()
                    self.model = (await response.json())["data"][0]["id"]
                    return
            except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, ValueError) as exc:
                log.warning("cannot list models at %s: %s", replica.url, exc)
        await self.stop()
        urls = ", ".join(r.url for r in self.replicas)
        raise EngineUnavailable(f"no OpenAI-compatible server answered at {urls}")

    async def ready(self) -> None:
        """Raise EngineUnavailable unless some replica answers its model list now (a worker's
        /readyz)."""
        session = self._session
        if session is None:
            raise EngineUnavailable("the openai engine is not started")
        for replica in self.replicas:
            try:
                async with session.get(f"{replica.url}/models") as response:
                    if response.status < 400:
                        return
            except (aiohttp.ClientError, TimeoutError):
                continue
        raise EngineUnavailable("no OpenAI-compatible server answers")

    async def stop(self) -> None:
        for response in self._responses.values():
            response.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        packed = [{"role": m.role, "content": m.content} for m in messages]
        chars = sum(len(m.content) for m in messages)
        estimate = math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)
        return Prompt(text=json.dumps(packed, ensure_ascii=False), n_tokens=estimate)

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        if self._session is None:
            raise EngineUnavailable("the openai backend is not started")
        body = {
            "model": self.model,
            "messages": json.loads(prompt.text),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        wait = BACKOFF_S
        for attempt in range(1, ATTEMPTS + 1):
            replica = self._pick()
            replica.in_flight += 1
            sent_any = False
            try:
                async for chunk in self._request(replica, body, params, prompt):
                    sent_any = True
                    yield chunk
                replica.failures = 0
                return
            except _Retryable as exc:
                replica.failures += 1
                replica.cool_until = time.monotonic() + COOL_DOWN_S
                if sent_any or attempt == ATTEMPTS or params.request_id in self._cancelled:
                    raise EngineUnavailable(f"{replica.url}: {exc}") from exc
                log.warning("%s failed before the first token (%s); retrying", replica.url, exc)
                await asyncio.sleep(wait)
                wait *= 2
            finally:
                replica.in_flight -= 1
                self._cancelled.discard(params.request_id)

    async def _request(
        self, replica: Replica, body: dict[str, Any], params: GenerationParams, prompt: Prompt
    ) -> AsyncIterator[Chunk]:
        assert self._session is not None
        produced = 0
        counted: dict[str, int] = {}  # the server's own usage figures, when it sends them
        finish: str | None = None
        first = True
        try:
            async with self._session.post(f"{replica.url}/chat/completions", json=body) as resp:
                if resp.status >= 500:
                    raise _Retryable(f"HTTP {resp.status}")
                if resp.status >= 400:
                    detail = (await resp.text())[:300]
                    raise EngineUnavailable(f"{replica.url} refused the request: {detail}")
                self._responses[params.request_id] = resp
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    counted.update(event.get("usage") or {})
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            produced += 1
                            first = False
                            yield Chunk(text)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if params.request_id not in self._cancelled:
                if first:
                    raise _Retryable(str(exc) or type(exc).__name__) from exc
                raise EngineUnavailable(f"{replica.url} failed mid-reply: {exc}") from exc
        finally:
            self._responses.pop(params.request_id, None)
        if params.request_id in self._cancelled:
            finish = "cancelled"
        usage = Usage(
            counted.get("prompt_tokens", prompt.n_tokens),
            counted.get("completion_tokens", produced),
            finish or "stop",
        )
        yield Chunk("", usage)

    def _pick(self) -> Replica:
        """The replica with fewest requests in flight, among those not cooling down (all of
        them if every one is)."""
        now = time.monotonic()
        ready = [r for r in self.replicas if r.cool_until <= now] or self.replicas
        self._turn += 1
        order = ready[self._turn % len(ready) :] + ready[: self._turn % len(ready)]
        return min(order, key=lambda r: r.in_flight)

    async def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)
        response = self._responses.get(request_id)
        if response is not None:
            response.close()  # the server sees the connection go and aborts the request


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"
