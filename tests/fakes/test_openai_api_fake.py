"""Checks FakeOpenAI's pause, which the tests that strike mid-reply rely on: a stream paused after
some words gives those and no more until the test lets it go on, then the rest."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.fakes.openai_api import FakeOpenAI


async def test_a_stream_paused_after_three_words_gives_the_rest_only_once_told_to_go_on() -> None:
    async with (
        FakeOpenAI("one two three four five", failing=None, pause_after=3) as engine,
        aiohttp.ClientSession() as http,
    ):
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        url = f"{engine.base_url}/chat/completions"
        async with http.post(url, json={**body, "stream": True}) as response:
            words: list[str] = []

            async def read() -> None:
                async for line in response.content:
                    text = line.decode().strip()
                    if not text.startswith("data: {"):
                        continue
                    for choice in json.loads(text[6:])["choices"]:
                        if piece := choice["delta"].get("content"):
                            words.append(piece)

            reading = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            assert "".join(words) == "one two three"
            assert not reading.done()
            engine.go_on()
            await asyncio.wait_for(reading, 5)
        assert "".join(words) == "one two three four five"
