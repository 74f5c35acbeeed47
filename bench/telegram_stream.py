"""Streamed Telegram replies under load: do live edits stay inside Telegram's limits?

Fifty private chats write at once; each gets a 1,500-character reply streamed at about 50 tokens
a second (an engine that paces a fixed text, so every run streams the same way) through the
gateway, Redis, the worker and the real python-telegram-bot client, into the Bot API stand-in of
tests/fakes with its rate limits on (one message or edit a second per chat, 429 otherwise).

Prints the 429s received (target 0), the p50 and p99 time from the engine's last token to the
final edit the user sees (target p99 <= 2 s), and the edits per reply.

Usage: python bench/telegram_stream.py [--chats 50] [--edit-interval 1.5]
Needs Redis on 127.0.0.1. Run from the repository root (it imports the stand-in from tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import pct

from frontdesk.bots import Gateway
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends import Chunk, GenerationParams, Prompt, Usage
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.worker import Worker
from frontdesk.settings import Settings
from frontdesk.storage import Store
from tests.fakes.telegram_api import FakeTelegram

SENTENCE = "Our support team answers every question within one business day, on weekdays. "
REPLY = (SENTENCE * 20)[:1500]


class PacedBackend(FixedReplyBackend):
    """Streams REPLY a word at a time, one every 20 ms, and notes when each reply's last token
    left the engine (by the chat named in the prompt)."""

    def __init__(self) -> None:
        super().__init__(REPLY)
        self.last_token_at: dict[str, float] = {}

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        chat = prompt.text.rsplit("chat ", 1)[1].split()[0]
        words = REPLY.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0.02)
            yield Chunk(word if i == len(words) - 1 else word + " ")
        self.last_token_at[chat] = time.monotonic()
        yield Chunk("", Usage(prompt.n_tokens, len(words), "stop"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--edit-interval", type=float, default=1.5)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    prefix = f"fdbench-tg:{uuid.uuid4().hex[:8]}"
    backend = PacedBackend()
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeTelegram(rate_limits=True) as fake, contextlib.AsyncExitStack() as stack:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=f"sqlite+aiosqlite:///{tmp}/bench.db",
                redis_url=args.redis,
                queue_prefix=prefix,
                worker_concurrency=args.chats,
                max_new_tokens=2000,
                telegram_token=fake.token,
                telegram_api_url=fake.base_url,
                telegram_edit_interval=args.edit_interval,
            )
            store = Store(settings.database_url)
            await store.start(migrate=True)
            stack.push_async_callback(store.stop)
            queues = [RedisQueue(args.redis, consumer=n, prefix=prefix) for n in ("gw", "wk")]
            for q in queues:
                await q.start()
                stack.push_async_callback(q.stop)
            worker = Worker(settings, queues[1], store, backend)
            await worker.start()
            stack.push_async_callback(worker.stop)
            channel = TelegramChannel(settings)
            gateway = Gateway(settings, queues[0], store, [channel])
            await gateway.start()
            stack.push_async_callback(gateway.stop)

            started = time.monotonic()
            chats = [10_000 + n for n in range(args.chats)]
            for n, chat in enumerate(chats):
                fake.private_message(f"Question from chat {n} ", user_id=chat)
            await fake.wait_for(
                lambda f: len(backend.last_token_at) == len(chats) and gateway.pending == 0,
                timeout=300,
            )
            elapsed = time.monotonic() - started

    client = aioredis.from_url(args.redis)
    await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}:*")])
    await client.aclose()

    delays, edits, complete = [], [], 0
    for n, chat in enumerate(chats):
        shown = [
            c
            for c in fake.calls
            if c.status == 200
            and c.method in ("sendMessage", "editMessageText")
            and str(c.params.get("chat_id")) == str(chat)
        ]
        delays.append(shown[-1].at - backend.last_token_at[str(n)])
        edits.append(sum(c.method == "editMessageText" for c in shown))
        complete += fake.messages_in(chat)[-1]["text"] == REPLY.strip()
    print(
        f"telegram streaming: {args.chats} chats at once, a {len(REPLY)}-character reply each "
        f"streamed over ~{len(REPLY.split()) * 0.02:.0f} s, edit interval {args.edit_interval} s"
    )
    print(f"429s received:                        {fake.count_429()}  (target 0)")
    print(
        f"last token -> final edit, p50 / p99:  {pct(delays, 50):.2f} s / {pct(delays, 99):.2f} s"
        "  (target p99 <= 2 s)"
    )
    print(
        f"edits per reply, mean (min-max):      {statistics.mean(edits):.1f} "
        f"({min(edits)}-{max(edits)})"
    )
    print(f"replies complete and exact:           {complete}/{len(chats)}")
    print(f"wall time:                            {elapsed:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
