"""Whole turns through gateway → Redis → worker → llama.cpp → PostgreSQL, with the real model."""

from __future__ import annotations

from collections.abc import AsyncIterator

from frontdesk.engine.backends import Chunk, GenerationParams, Prompt
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from tests.support import pipeline


class RecordingLlama:
    """The real llama.cpp backend, with every prompt it is asked to complete kept."""

    def __init__(self, inner: LlamaCppBackend) -> None:
        self.inner = inner
        self.name, self.model = inner.name, inner.model
        self.prompts: list[Prompt] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def render(self, messages):  # type: ignore[no-untyped-def]
        return self.inner.render(messages)

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        self.prompts.append(prompt)
        async for chunk in self.inner.stream(prompt, params):
            yield chunk

    async def cancel(self, request_id: str) -> None:
        await self.inner.cancel(request_id)


async def test_turn_through_redis_and_postgres_with_the_real_model(
    make_settings, redis_url: str, queue_prefix: str, pg_database: str, llama: LlamaCppBackend
) -> None:
    settings = make_settings(
        redis_url=redis_url,
        queue_prefix=queue_prefix,
        database_url=pg_database,
        max_new_tokens=24,
        temperature=0.0,
    )
    backend = RecordingLlama(llama)
    async with pipeline(settings, backend) as p:
        first = await p.channel.say("My name is Zelda. What is the capital of France?")
        assert first is not None and first.error is None
        assert first.text.strip()
        assert len(first.deltas) >= 2  # streamed, then closed by a final delta

        second = await p.channel.say("What is my name?")
        assert second is not None and second.error is None and second.text.strip()

        [conv] = [
            c
            for c in await p.store.list_conversations(limit=50)
            if c.external_key == p.channel.chat and c.status == "active"
        ]
        _c, messages = await p.store.conversation(conv.id)
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        reply = messages[1]
        assert reply.content == first.text
        assert reply.tokens_in is not None and reply.tokens_in > 10
        assert reply.tokens_out is not None and 0 < reply.tokens_out <= 24
        assert reply.ttft_ms is not None and reply.latency_ms is not None
        assert reply.latency_ms >= reply.ttft_ms
        assert reply.model == llama.model

    # the second turn's prompt holds the whole first turn
    assert len(backend.prompts) == 2
    assert "My name is Zelda." in backend.prompts[1].text
    assert first.text.strip() in backend.prompts[1].text
    assert backend.prompts[1].text.startswith(backend.prompts[0].text)


async def test_duplicate_platform_message_gets_no_second_reply(
    make_settings, redis_url: str, queue_prefix: str, llama: LlamaCppBackend
) -> None:
    settings = make_settings(redis_url=redis_url, queue_prefix=queue_prefix, max_new_tokens=8)
    async with pipeline(settings, llama) as p:
        msg = p.channel.message("Say hi", message_id="update-77")
        first = await p.channel.send(msg)
        assert first is not None and first.text.strip()
        assert await p.channel.send(msg) is None
        assert len(p.channel.delivered) == 1
