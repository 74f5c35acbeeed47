"""Streamed Telegram replies under load: do live edits stay inside Telegram's limits?

Fifty private chats write at once; each gets a 1,500-character reply streamed at about 50 tokens
a second (an engine that paces a fixed text, so every run streams the same way) through the
gateway, Redis, the worker and the real python-telegram-bot client, into the Bot API stand-in of
tests/fakes with its rate limits on (one message or edit a second per chat, 429 otherwise).

Prints the 429s received (target 0), the p50 and p99 time from the engine's last token to the
final edit the user sees (target p99 <= 2 s), and the edits per reply.

With --gateways 1 3, the run is repeated with that many gateways (in this process, each with its
own queue connection and python-telegram-bot client), in webhook mode so that each takes its share
of the chats, and the p99 with the most gateways is printed as a ratio of the p99 with the fewest
(target <= 1.2x, and 0 429s at each).

Usage: python bench/telegram_stream.py [--chats 50] [--edit-interval 1.5] [--gateways 1 3]
Needs Redis on 127.0.0.1. Run from the repository root (it imports the stand-in from tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import free_port, gateways_ratio, pct

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


async def run(args: argparse.Namespace, gateways: int, webhook: bool) -> dict[str, float]:
    prefix = f"fdbench-tg:{uuid.uuid4().hex[:8]}"
    backend = PacedBackend()
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeTelegram(rate_limits=True) as fake, contextlib.AsyncExitStack() as stack:
            ports = [free_port() for _ in range(gateways)]
            common = {
                "_env_file": None,
                "database_url": f"sqlite+aiosqlite:///{tmp}/bench.db",
                "redis_url": args.redis,
                "queue_prefix": prefix,
                "worker_concurrency": args.chats,
                "max_new_tokens": 2000,
                "telegram_token": fake.token,
                "telegram_api_url": fake.base_url,
                "telegram_edit_interval": args.edit_interval,
            }
            settings = Settings(**common)  # type: ignore[arg-type]
            store = Store(settings.database_url)
            await store.start(migrate=True)
            stack.push_async_callback(store.stop)
            worker_queue = RedisQueue(args.redis, consumer="wk", prefix=prefix)
            await worker_queue.start()
            stack.push_async_callback(worker_queue.stop)
            worker = Worker(settings, worker_queue, store, backend)
            await worker.start()
            stack.push_async_callback(worker.stop)
            running = []
            for n, port in enumerate(ports):  # in webhook mode, behind a load balancer
                hook = {"telegram_webhook_url": f"http://127.0.0.1:{port}/hook"} if webhook else {}
                own = Settings(**common, gateway_id=f"gw{n}", http_port=port, **hook)  # type: ignore[arg-type]
                queue = RedisQueue(args.redis, consumer=f"gw{n}", prefix=prefix)
                await queue.start()
                stack.push_async_callback(queue.stop)
                gateway = Gateway(own, queue, store, [TelegramChannel(own)])
                await gateway.start()
                stack.push_async_callback(gateway.stop)
                running.append(gateway)

            started = time.monotonic()
            chats = [10_000 + n for n in range(args.chats)]
            updates = [fake.private_message(f"Question from chat {n} ", user_id=chat)
                       for n, chat in enumerate(chats)]  # fmt: skip
            if webhook:
                secret = hashlib.sha256(fake.token.encode()).hexdigest()
                await asyncio.gather(*(
                    fake.post_webhook(u, secret=secret, url=f"http://127.0.0.1:{ports[n % gateways]}/hook")
                    for n, u in enumerate(updates)
                ))  # fmt: skip
            await fake.wait_for(
                lambda f: len(backend.last_token_at) == len(chats)
                and all(g.pending == 0 for g in running),
                timeout=300,
            )  # fmt: skip
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
    return {
        "429": fake.count_429(),
        "p50": pct(delays, 50),
        "p99": pct(delays, 99),
        "edits": statistics.mean(edits),
        "edits_min": min(edits),
        "edits_max": max(edits),
        "complete": complete,
        "elapsed": elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--edit-interval", type=float, default=1.5)
    parser.add_argument("--gateways", type=int, nargs="+", default=[1])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    webhook = args.gateways != [1]  # comparing counts: every run in webhook mode
    print(
        f"telegram streaming: {args.chats} chats at once, a {len(REPLY)}-character reply each "
        f"streamed over ~{len(REPLY.split()) * 0.02:.0f} s, edit interval {args.edit_interval} s, "
        f"{'webhook' if webhook else 'long polling'}; targets: 0 429s, last token -> final edit "
        "p99 <= 2 s"
    )
    print(
        "| gateways | 429s | last token -> final edit p50 / p99 s | edits per reply, mean "
        "(min-max) | exact replies | wall s |"
    )
    print("|---|---|---|---|---|---|")
    p99s = {}
    for gateways in args.gateways:
        r = await run(args, gateways, webhook)
        p99s[gateways] = r["p99"]
        print(
            f"| {gateways} | {r['429']} | {r['p50']:.2f} / {r['p99']:.2f} "
            f"| {r['edits']:.1f} ({r['edits_min']}-{r['edits_max']}) "
            f"| {r['complete']}/{args.chats} | {r['elapsed']:.1f} |"
        )
    ratio = gateways_ratio(p99s)
    if ratio is not None:
        print(ratio)


if __name__ == "__main__":
    asyncio.run(main())
