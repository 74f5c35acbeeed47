"""The llama.cpp backend: streams without blocking the event loop, and stops when cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from frontdesk.engine.backends import GenerationParams
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.wire import ChatMessage

PROMPT = [ChatMessage("user", "Write a long story about a lighthouse keeper.")]


async def test_streaming_leaves_the_event_loop_free(llama: LlamaCppBackend) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    chunks = [
        c
        async for c in llama.stream(
            llama.render(PROMPT), GenerationParams("t-free", max_tokens=48, temperature=0)
        )
    ]
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 48
    assert "".join(c.text for c in chunks).strip()
    # a blocked loop would tick once or twice; a free one ticks every 5 ms or so
    assert ticks >= elapsed / 0.005 * 0.3


async def test_cancel_stops_generation_at_the_next_token(llama: LlamaCppBackend) -> None:
    params = GenerationParams("t-cancel", max_tokens=400, temperature=0.8)
    received = []
    started = time.perf_counter()
    async with contextlib.aclosing(llama.stream(llama.render(PROMPT), params)) as stream:
        async for chunk in stream:
            received.append(chunk)
            if len(received) == 3:
                await llama.cancel("t-cancel")
    elapsed = time.perf_counter() - started
    usage = received[-1].usage
    assert usage is not None and usage.finish_reason == "cancelled"
    assert usage.completion_tokens < 20
    assert elapsed < 5
    # and the backend serves the next request normally
    after = [
        c
        async for c in llama.stream(
            llama.render(PROMPT), GenerationParams("t-next", max_tokens=8, temperature=0)
        )
    ]
    assert after[-1].usage is not None and after[-1].usage.completion_tokens > 0


async def test_abandoned_stream_frees_the_backend(llama: LlamaCppBackend) -> None:
    """A consumer cancelled between chunks (a cancelled turn) must not leave generation running
    or the backend locked."""

    async def read_two() -> None:
        params = GenerationParams("t-abandon", max_tokens=400, temperature=0.8)
        n = 0
        async with contextlib.aclosing(llama.stream(llama.render(PROMPT), params)) as stream:
            async for _chunk in stream:
                n += 1
                if n == 2:
                    await asyncio.sleep(3600)  # cancelled here, between two chunks

    task = asyncio.create_task(read_two())
    await asyncio.sleep(0.5)
    task.cancel()
    started = time.perf_counter()
    chunks = [
        c
        async for c in llama.stream(
            llama.render(PROMPT), GenerationParams("t-after", max_tokens=4, temperature=0)
        )
    ]
    assert chunks[-1].usage is not None
    assert time.perf_counter() - started < 5  # the abandoned 400-token generation was stopped


async def test_a_stream_cancelled_again_as_it_stops_still_waits_for_its_thread(
    llama: LlamaCppBackend, monkeypatch
) -> None:
    """A stopping worker cancels a turn again while it goes on (a first cancel can be lost);
    the stream still waits for its generation thread, which reads the model that stopping the
    backend frees: a segmentation fault otherwise."""
    ended = threading.Event()
    generate = llama._generate

    def slow_to_end(*args: Any) -> None:
        try:
            generate(*args)
        finally:
            time.sleep(0.5)
            ended.set()

    monkeypatch.setattr(llama, "_generate", slow_to_end)
    first = asyncio.Event()

    async def consume() -> None:
        params = GenerationParams("t-twice", max_tokens=400, temperature=0.8)
        async for _chunk in llama.stream(llama.render(PROMPT), params):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    await asyncio.sleep(0.1)
    task.cancel()  # while the stream waits for its thread
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert ended.is_set()
