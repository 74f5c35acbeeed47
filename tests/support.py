"""Test helpers: a channel that records replies, a whole pipeline assembled in one process, and a
backend whose engine dies mid-reply."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from frontdesk.bots import Channel, Gateway, ReplyStream
from frontdesk.engine.backends import Backend, Chunk, GenerationParams, Prompt
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.queue import TurnQueue, make_queue
from frontdesk.engine.worker import Worker
from frontdesk.errors import EngineDead
from frontdesk.settings import Settings
from frontdesk.storage import ReplyFigures, Store
from frontdesk.wire import InboundMessage, ReplyDelta


async def until(condition: Callable[[], object], within: float = 30) -> None:
    """Wait for ``condition()`` (or the awaitable it returns) to be true: what a test awaits
    instead of sleeping a fixed time. Fails after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


def dashboard_queries() -> list[str]:
    """The PromQL of every panel of deploy/grafana/frontdesk.json."""
    path = Path(__file__).parents[1] / "deploy" / "grafana" / "frontdesk.json"
    dashboard = json.loads(path.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    deltas: list[ReplyDelta]

    @property
    def text(self) -> str:
        """What the user sees: the text since the last restart (see ReplyStream)."""
        start = max((i for i, d in enumerate(self.deltas) if d.restart), default=0)
        return "".join(d.text for d in self.deltas[start:])

    @property
    def error(self) -> str | None:
        return self.deltas[-1].error if self.deltas else None


class DiesMidway(FixedReplyBackend):
    """Sends its text, pauses (so it is shown), then its engine dies (as vLLM's does when its
    core process is killed)."""

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        yield Chunk(self.reply)
        await asyncio.sleep(0.05)
        raise EngineDead("the vLLM engine died: core gone")


class PausesAfterTwoWords(FixedReplyBackend):
    """Gives "Hello", then " there" ``pause_s`` later, then nothing until ``go_on`` is set (an
    engine busy with other requests, or a slow tool), then the rest."""

    def __init__(self, pause_s: float) -> None:
        super().__init__("Hello there, friend.")
        self.pause_s = pause_s
        self.go_on = asyncio.Event()

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        yield Chunk("Hello")
        await asyncio.sleep(self.pause_s)
        yield Chunk(" there")
        await self.go_on.wait()
        yield Chunk(", friend.")


class SlowBackend(FixedReplyBackend):
    """A fixed reply whose first token comes ``delay_s`` late and whose words then come
    ``gap_s`` apart: a busy engine, or a long streamed answer."""

    def __init__(self, reply: str, *, delay_s: float = 0.0, gap_s: float = 0.0) -> None:
        super().__init__(reply, words_per_chunk=1)
        self.delay_s, self.gap_s = delay_s, gap_s

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.delay_s)
        async for chunk in super().stream(prompt, params):
            yield chunk
            await asyncio.sleep(self.gap_s)


class RecordingChannel:
    """A channel whose platform is the test: ``say`` sends a message and returns the whole reply."""

    name = "test"

    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.delivered: list[Reply] = []
        self.streaming = asyncio.Event()  # set once any reply's text starts arriving
        # unique per channel: tests share one PostgreSQL database
        self.chat = f"chat-{uuid.uuid4().hex[:8]}"

    async def start(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def stop(self) -> None:
        pass

    async def deliver(self, reply: ReplyStream) -> None:
        got = Reply([])
        async for delta in reply:
            got.deltas.append(delta)
            if delta.text:
                self.streaming.set()
        self.delivered.append(got)

    def message(
        self, text: str, *, chat: str | None = None, message_id: str | None = None
    ) -> InboundMessage:
        chat = chat or self.chat
        return InboundMessage(
            platform=self.name,
            chat_id=chat,
            user_id=f"user-{chat}",
            user_name=f"User {chat}",
            message_id=message_id or uuid.uuid4().hex,
            text=text,
        )

    async def say(self, text: str, wait_s: float = 60, **kwargs: str) -> Reply | None:
        """Send a message; the reply, or None when the gateway dropped it as a duplicate."""
        return await self.send(self.message(text, **kwargs), wait_s)

    async def send(self, msg: InboundMessage, wait_s: float = 60) -> Reply | None:
        assert self.gateway is not None
        before = len(self.delivered)
        task = await self.gateway.handle(msg, self)
        if task is None:
            return None
        await asyncio.wait_for(task, wait_s)
        assert len(self.delivered) == before + 1
        return self.delivered[-1]


@dataclass
class Pipeline:
    gateway: Gateway
    channel: RecordingChannel
    worker: Worker | None
    queue: TurnQueue
    store: Store


@contextlib.asynccontextmanager
async def pipeline(
    settings: Settings,
    backend: Backend | None,
    *,
    store: Store | None = None,
    queue: TurnQueue | None = None,
    channels: Sequence[Channel] = (),
) -> AsyncIterator[Pipeline]:
    """Store, queue, worker (when a backend is given) and gateway with a RecordingChannel, started
    in order and stopped in reverse. The backend is started and stopped by the caller."""
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = Store(settings.database_url)
            await store.start(migrate=True)
            stack.push_async_callback(store.stop)
        if queue is None:
            queue = make_queue(
                settings.redis_url,
                consumer=settings.worker_id,
                prefix=settings.queue_prefix,
                claim_idle_ms=settings.queue_claim_idle_ms,
            )
            await queue.start()
            stack.push_async_callback(queue.stop)
        worker = None
        if backend is not None:
            worker = Worker(settings, queue, store, backend)
            await worker.start()
            stack.push_async_callback(worker.stop)
        channel = RecordingChannel()
        gateway = Gateway(settings, queue, store, [channel, *channels])
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        yield Pipeline(gateway, channel, worker, queue, store)


async def seed_conversation(p: Pipeline, pairs: int) -> None:
    """``pairs`` answered questions stored already in the channel's chat: a conversation under
    way, without asking the engine."""
    for n in range(pairs):
        recorded = await p.store.record_user_message(p.channel.message(f"Q{n}: a colour?"))
        assert recorded is not None
        await p.store.record_reply(
            recorded.conversation_id, recorded.message_id, f"A{n}: blue.", ReplyFigures()
        )
