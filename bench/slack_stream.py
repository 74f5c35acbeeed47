"""Streamed Slack replies under load: do acks stay fast and updates stay inside Slack's limits?

Fifty threads start at once: fifty users each @mention the bot, spread over a number of
channels. Each gets a 1,500-character reply streamed at about 50 tokens a second (an engine
that paces a fixed text, so every run streams the same way) through `frontdesk gateway` in its
own process (the real slack-bolt and slack_sdk), Redis, a worker and PostgreSQL, into the Web
API stand-in of tests/fakes with its limits on: one chat.postMessage a second per channel, chat.update at Tier 3 (50 a minute for
the app, one a second per message), 429 with Retry-After otherwise. Events are posted signed, as
Slack posts them, all fifty at once.

Prints, per spread of channels: the 429s received (target 0), the ack latency p50 / p99 (target
p99 <= 300 ms), the p50 / p99 time from the engine's last token to the final update the user
sees (target p99 <= 2 s), and the updates per reply.

With --gateways 1 3, each spread runs once per number of `frontdesk gateway` processes, the
events posted to them in turn (as a load balancer would), and the p99 with the most gateways is
printed as a ratio of the p99 with the fewest (target <= 1.2x, and 0 429s at each).

Usage: python bench/slack_stream.py [--threads 50] [--channels 50 10 1] [--gateways 1 3]
Needs Redis and PostgreSQL on 127.0.0.1. Run from the repository root (it imports the stand-in from tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import free_port, gateways_ratio, pct, scratch_database

from frontdesk.bots.slack.mrkdwn import to_mrkdwn
from frontdesk.engine.backends import Chunk, GenerationParams, Prompt, Usage
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.worker import Worker
from frontdesk.settings import Settings
from frontdesk.storage import Store
from tests.fakes.slack_api import FakeSlack

SENTENCE = "Our support team answers every question within one business day, on weekdays. "
REPLY = (SENTENCE * 20)[:1500].strip()


class PacedBackend(FixedReplyBackend):
    """Streams REPLY a word at a time, one every 20 ms, and notes when each reply's last token
    left the engine (by the thread number named in the prompt)."""

    def __init__(self) -> None:
        super().__init__(REPLY)
        self.last_token_at: dict[int, float] = {}

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        thread = int(prompt.text.rsplit("thread ", 1)[1].split()[0])
        words = REPLY.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0.02)
            yield Chunk(word if i == len(words) - 1 else word + " ")
        self.last_token_at[thread] = time.monotonic()
        yield Chunk("", Usage(prompt.n_tokens, len(words), "stop"))


async def start_gateway(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    """`frontdesk gateway` in its own process, as deployed; returns once it serves HTTP."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "frontdesk.cli", "gateway", env=env
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return proc
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the gateway did not start")


async def post_all(url: str, secret: str, events: list[dict]) -> list[tuple[int, float]]:
    """Post the events all at once, signed, from a process of their own (as Slack does, from
    outside): the acks' timing then does not depend on how busy this process is."""
    sender = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--send",
        url,
        secret,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await sender.communicate(json.dumps(events).encode())
    if sender.returncode != 0:
        raise RuntimeError("the event sender failed")
    return [tuple(ack) for ack in json.loads(out)]  # type: ignore[misc]


async def send(url: str, secret: str) -> None:
    """The sender process: envelopes on stdin, [(status, seconds), ...] on stdout."""
    events = json.loads(sys.stdin.read())
    signer = FakeSlack(signing_secret=secret)  # only signs; its server never starts
    bodies = [json.dumps(e).encode() for e in events]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(body: bytes) -> tuple[int, float]:
            headers = {"Content-Type": "application/json", **signer.sign(body)}
            started = time.monotonic()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status, time.monotonic() - started

        acks = await asyncio.gather(*(post(b) for b in bodies))
    print(json.dumps(acks))


async def run(
    threads: int, channels: int, gateways: int, redis_url: str, admin_dsn: str
) -> dict[str, float]:
    prefix = f"fdbench-slack:{uuid.uuid4().hex[:8]}"
    backend = PacedBackend()
    final_text = to_mrkdwn(REPLY)
    async with (
        scratch_database(admin_dsn) as database_url,
        FakeSlack(rate_limits=True) as fake,
        contextlib.AsyncExitStack() as stack,
    ):
        values = {
            "database_url": database_url,
            "redis_url": redis_url,
            "queue_prefix": prefix,
            "slack_bot_token": fake.bot_token,
            "slack_signing_secret": fake.signing_secret,
            "slack_api_url": fake.base_url,
        }
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            worker_concurrency=threads,
            max_new_tokens=2000,
            **values,  # type: ignore[arg-type]
        )
        store = Store(settings.database_url)
        await store.start(migrate=True)
        stack.push_async_callback(store.stop)
        queue = RedisQueue(redis_url, consumer="wk", prefix=prefix)
        await queue.start()
        stack.push_async_callback(queue.stop)
        worker = Worker(settings, queue, store, backend)
        await worker.start()
        stack.push_async_callback(worker.stop)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
        env.update({f"FRONTDESK_{k.upper()}": v for k, v in values.items()})
        ports = [free_port() for _ in range(gateways)]
        procs = []
        for n, port in enumerate(ports):  # gateways behind a load balancer: one app, one budget
            gateway_env = {
                **env,
                "FRONTDESK_HTTP_PORT": str(port),
                "FRONTDESK_GATEWAY_ID": f"gw{n}",
            }
            procs.append(await start_gateway(gateway_env, port))
        urls = [f"http://127.0.0.1:{port}/slack/events" for port in ports]

        events = []
        for n in range(threads):
            user = f"U{n:04d}"
            fake.add_user(user, f"user{n}", f"User {n}")
            where = f"C{n % channels:04d}"
            events.append(fake.mention(f"Question from thread {n} ", user=user, channel=where))
        started = time.monotonic()
        try:
            spread = await asyncio.gather(*(
                post_all(url, fake.signing_secret, events[n::gateways])
                for n, url in enumerate(urls)
            ))  # fmt: skip
            acks = [ack for part in spread for ack in part]

            def answered(f: FakeSlack) -> bool:
                return all(
                    any(
                        m["thread_ts"] == e["event"]["ts"] and m["text"] == final_text
                        for m in f.messages_in(e["event"]["channel"])
                    )
                    for e in events
                )

            await fake.wait_for(answered, timeout=600)
            elapsed = time.monotonic() - started
            await asyncio.sleep(1.0)  # anything more (a second reply) would show up by now
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                await asyncio.wait_for(proc.wait(), 30)

    client = aioredis.from_url(redis_url)
    await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}:*")])
    await client.aclose()

    assert all(status == 200 for status, _ in acks), acks
    delays, updates, complete = [], [], 0
    for n, event in enumerate(events):
        where, root = event["event"]["channel"], event["event"]["ts"]
        posts = [m for m in fake.messages_in(where) if m["thread_ts"] == root]
        mine = {m["ts"] for m in posts}
        shown = [
            c
            for c in fake.calls
            if c.status == 200
            and c.params.get("channel") == where
            and (
                (c.method == "chat.postMessage" and c.params.get("thread_ts") == root)
                or (c.method == "chat.update" and c.params.get("ts") in mine)
            )
        ]
        delays.append(shown[-1].at - backend.last_token_at[n])
        updates.append(sum(c.method == "chat.update" for c in shown))
        complete += len(posts) == 1 and posts[0]["text"] == final_text
    return {
        "429": fake.count_429(),
        "ack_p50": pct([took for _, took in acks], 50),
        "ack_p99": pct([took for _, took in acks], 99),
        "final_p50": pct(delays, 50),
        "final_p99": pct(delays, 99),
        "updates": statistics.mean(updates),
        "updates_max": max(updates),
        "complete": complete,
        "elapsed": elapsed,
    }


async def main() -> None:
    if sys.argv[1:2] == ["--send"]:
        await send(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--channels", type=int, nargs="+", default=[50, 10, 1])
    parser.add_argument(
        "--gateways",
        type=int,
        nargs="+",
        default=[1],
        help="gateway processes sharing the events (each count a run)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    print(
        f"slack streaming: {args.threads} threads at once, a {len(REPLY)}-character reply each "
        f"streamed over ~{len(REPLY.split()) * 0.02:.0f} s; targets: 0 429s, ack p99 <= 300 ms, "
        "last token -> final update p99 <= 2 s"
    )
    print(
        "| channels | gateways | 429s | ack p50 / p99 ms | last token -> final update p50 / p99 s "
        "| updates per reply, mean (max) | exact replies | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for channels in args.channels:
        p99s = {}
        for gateways in args.gateways:
            r = await run(args.threads, channels, gateways, args.redis, args.postgres)
            p99s[gateways] = r["final_p99"]
            print(
                f"| {channels} | {gateways} | {r['429']} "
                f"| {r['ack_p50'] * 1000:.0f} / {r['ack_p99'] * 1000:.0f} "
                f"| {r['final_p50']:.2f} / {r['final_p99']:.2f} "
                f"| {r['updates']:.1f} ({r['updates_max']}) | {r['complete']}/{args.threads} "
                f"| {r['elapsed']:.1f} |"
            )
        ratio = gateways_ratio(p99s)
        if ratio is not None:
            print(f"|   | {ratio} |||||||")


if __name__ == "__main__":
    asyncio.run(main())
