"""Many gateways, one bot, as real processes (`frontdesk gateway`, `frontdesk worker`) against
real Redis and PostgreSQL and the stand-ins: one gateway polls Telegram at a time (a lease in
Redis), another takes over within 10 s of a kill -9, and no update is lost or answered twice, even
when the poller dies between Telegram's answer to getUpdates and the store; and three gateways
keep the budgets that are the whole app's or bot's (Slack's Tier 3 updates, Telegram's 30 a
second) together, with no 429."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from frontdesk.bots.telegram.channel import POLL_LEASE_MS
from frontdesk.engine.queue import RedisQueue
from tests.e2e.processes import Processes, telegram_env
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.slack_api import FakeSlack
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram_api import Call, FakeTelegram
from tests.support import free_port, until

ANSWER = "Happy to help."
TAKEOVER_S = 10.0  # the bound on a failover
POLLING = "polls for updates now"
TERM_OVER = re.compile(r"polling term \d+ is over")


def pollers(procs: Processes) -> list[str]:
    """The processes that began polling (in the order their logs were opened, not in time)."""
    return [log.stem.rsplit("-", 1)[0] for log in procs.logs if POLLING in log.read_text()]


def answered(telegram: FakeTelegram, users: list[int]) -> bool:
    return all([m["text"] for m in telegram.messages_in(u)] == [ANSWER] for u in users)


async def gateways(procs: Processes, count: int) -> None:
    await procs.start("worker", "worker")
    for n in range(count):
        port = str(free_port())
        await procs.start(f"gw-{n}", "gateway", FRONTDESK_GATEWAY_ID=f"gw-{n}",
                          FRONTDESK_HTTP_PORT=port)  # fmt: skip
    await until(lambda: pollers(procs), within=30)


def ask(telegram: FakeTelegram, users: list[int]) -> None:
    for user in users:
        telegram.private_message("hello", user_id=user, username=f"user{user}")


def exactly_once(telegram: FakeTelegram, engine: FakeOpenAI, users: list[int]) -> None:
    assert answered(telegram, users)
    for user in users:
        assert len(telegram.calls_to("sendMessage", user)) == 1
    assert len(engine.completions()) == len(users)


async def test_three_gateways_poll_one_at_a_time_and_another_takes_over_a_killed_poller(
    env: dict[str, str], tmp_path: Path
) -> None:
    before, after = [2001, 2002, 2003], [2004, 2005, 2006]
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, failing=None) as engine:
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        try:
            await gateways(procs, 3)
            ask(telegram, before)
            await telegram.wait_for(lambda f: answered(f, before), timeout=30)
            await asyncio.sleep(3)  # two lease periods: a second poller would have begun
            [first] = pollers(procs)

            killed_at = time.monotonic()
            await procs.kill(first)
            ask(telegram, after)
            await telegram.wait_for(lambda f: answered(f, after), timeout=30)
            await asyncio.sleep(1.5)  # a second answer would show by now
            terms = pollers(procs)  # (at the stop, each gateway stopping hands on the lease)
        finally:
            codes = await procs.stop_all()
        resumed = min(c.at for c in telegram.calls_to("getUpdates") if c.at > killed_at)
        assert resumed - killed_at <= TAKEOVER_S
        assert len(terms) == 2 and first in terms  # the killed one, then one other
        assert telegram.conflicts == 0  # never two getUpdates calls at once
        exactly_once(telegram, engine, before + after)
    assert codes == [0, 0, 0]
    assert procs.tracebacks() == []


async def test_a_poller_cut_off_from_redis_stops_polling_before_its_lease_can_lapse(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The fence: a poller that cannot renew its lease (Redis gone for it alone) ends its term
    and its long poll while the lease still holds, and calls getUpdates no more; so the gateway
    that takes the lapsed lease over never meets it there (no 409), and answers."""
    url = urlsplit(env["FRONTDESK_REDIS_URL"])
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
    await proxy.start()
    cut_off = env["FRONTDESK_REDIS_URL"].replace(url.netloc, f"127.0.0.1:{proxy.port}")
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, failing=None) as engine:
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        try:
            await procs.start("worker", "worker")
            await procs.start("gw-a", "gateway", FRONTDESK_GATEWAY_ID="gw-a",
                              FRONTDESK_HTTP_PORT=str(free_port()),
                              FRONTDESK_REDIS_URL=cut_off)  # fmt: skip
            await until(lambda: pollers(procs) == ["gw-a"], within=30)
            ask(telegram, [2001])
            await telegram.wait_for(lambda f: answered(f, [2001]), timeout=30)
            cut_at = time.monotonic()
            proxy.pause()
            [log_a] = procs.logs[1:2]
            await until(lambda: TERM_OVER.search(log_a.read_text()) is not None, within=10)
            over_at = time.monotonic()
            assert over_at - cut_at < POLL_LEASE_MS / 1000  # before the lease could lapse
            await asyncio.sleep(2)  # a poller still going would call getUpdates again by now
            quiet_until = time.monotonic()
            await procs.start("gw-b", "gateway", FRONTDESK_GATEWAY_ID="gw-b",
                              FRONTDESK_HTTP_PORT=str(free_port()))  # fmt: skip
            await until(lambda: "gw-b" in pollers(procs), within=30)
            ask(telegram, [2002])
            await telegram.wait_for(lambda f: answered(f, [2002]), timeout=30)
            proxy.resume()  # Redis is back for gw-a: it finds the lease held, and waits
            await asyncio.sleep(3)
        finally:
            codes = await procs.stop_all()
            await proxy.stop()
        polled = [c.at for c in telegram.calls_to("getUpdates")]
        assert not [at for at in polled if over_at - 0.1 < at < quiet_until]  # gw-a called none
        assert telegram.conflicts == 0  # gw-a's long poll was ended before gw-b's began
        assert sorted(pollers(procs)) == ["gw-a", "gw-b"]
        assert log_a.read_text().count(POLLING) == 1  # gw-a did not poll again
        exactly_once(telegram, engine, [2001, 2002])
    assert codes == [0, 0, 0]
    assert procs.tracebacks() == []


def returned(call: Call, update_id: int) -> bool:
    result: Any = call.result_or_error
    return call.status == 200 and any(u["update_id"] == update_id for u in result)


async def test_a_poller_killed_between_telegram_answering_and_the_store_loses_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The stored copy is the only safe one: a poller that confirmed the update to Telegram
    (by asking for the next) before storing it would lose it here."""
    dsn = env["FRONTDESK_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, failing=None) as engine:
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        try:
            await gateways(procs, 2)
            [poller] = pollers(procs)
            blocker = await asyncpg.connect(dsn)
            try:
                async with blocker.transaction():  # the store waits on this lock
                    await blocker.execute("LOCK TABLE conversations, messages")
                    update = telegram.private_message("hello", user_id=2001)["update_id"]
                    await telegram.wait_for(
                        lambda f: any(returned(c, update) for c in f.calls_to("getUpdates")),
                        timeout=10,
                    )
                    await asyncio.sleep(0.5)  # the poller is at the store now
                    killed_at = time.monotonic()
                    await procs.kill(poller)
            finally:
                await blocker.close()
            await telegram.wait_for(lambda f: answered(f, [2001]), timeout=30)
            await asyncio.sleep(1.5)
            terms = pollers(procs)
        finally:
            codes = await procs.stop_all()
        [sent] = telegram.calls_to("sendMessage", 2001)
        assert killed_at < sent.at  # answered after the failover, by the next poller
        assert len(terms) == 2 and poller in terms
        exactly_once(telegram, engine, [2001])
    assert codes == [0, 0]
    assert procs.tracebacks() == []


STORY = " ".join(f"part{i}" for i in range(12))  # streams for about a second and a half
CROWD = 50


async def announced(queue: RedisQueue, platform: str, count: int) -> bool:
    live = await queue.redis.zrangebyscore(queue.gateways_prefix + platform, "-inf", "+inf")
    return len(live) == count


async def test_three_gateways_streaming_fifty_slack_replies_keep_the_app_s_update_budget(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """Tier 3 allows the app 50 chat.update calls a minute, whichever gateway makes them: each
    gateway keeping its own count of 50 would make up to three times that."""
    ports = [free_port() for _ in range(3)]
    async with (
        FakeSlack() as slack,
        FakeOpenAI(STORY, failing=None, word_delay_s=0.12) as engine,
    ):
        procs = Processes({
            **env,
            "FRONTDESK_SLACK_BOT_TOKEN": slack.bot_token,
            "FRONTDESK_SLACK_SIGNING_SECRET": slack.signing_secret,
            "FRONTDESK_SLACK_API_URL": slack.base_url,
            "FRONTDESK_OPENAI_BASE_URLS": engine.base_url,
        }, tmp_path)  # fmt: skip
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        dms = [f"D0USER{n}" for n in range(CROWD)]
        try:
            await procs.start("worker", "worker")
            for n, port in enumerate(ports):
                await procs.start(f"gw-{n}", "gateway", FRONTDESK_GATEWAY_ID=f"gw-{n}",
                                  FRONTDESK_HTTP_PORT=str(port))  # fmt: skip
            await until(lambda: announced(queue, "slack", 3), within=30)
            statuses = await asyncio.gather(*(
                slack.post_event(f"http://127.0.0.1:{ports[n % 3]}/slack/events",
                                 slack.dm("tell me", user=f"U0USER{n}", channel=dm))
                for n, dm in enumerate(dms)
            ))  # fmt: skip
            assert [status for status, _took in statuses] == [200] * CROWD

            def whole(f: FakeSlack) -> bool:
                return all([m["text"] for m in f.messages_in(dm)] == [STORY] for dm in dms)

            await slack.wait_for(whole, timeout=150)
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        assert slack.count_429() == 0
        assert len(slack.calls_to("chat.update")) >= CROWD  # each placeholder got its text
    assert codes == [0, 0, 0, 0]
    assert procs.tracebacks() == []


async def test_three_gateways_answering_fifty_telegram_chats_keep_the_bot_s_thirty_a_second(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """Webhook mode, so that each gateway answers a third of the chats: Telegram allows a bot
    30 messages a second over all its chats, whichever gateway sends them."""
    ports = [free_port() for _ in range(3)]
    users = [3001 + n for n in range(CROWD)]
    async with (
        FakeTelegram() as telegram,
        FakeOpenAI(STORY, failing=None, word_delay_s=0.12) as engine,
    ):
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        hooks = [f"http://127.0.0.1:{port}/hook" for port in ports]
        try:
            await procs.start("worker", "worker")
            for n, port in enumerate(ports):
                await procs.start(f"gw-{n}", "gateway", FRONTDESK_GATEWAY_ID=f"gw-{n}",
                                  FRONTDESK_HTTP_PORT=str(port),
                                  FRONTDESK_TELEGRAM_WEBHOOK_URL=hooks[n])  # fmt: skip
            await until(lambda: announced(queue, "telegram", 3), within=30)
            secret = hashlib.sha256(telegram.token.encode()).hexdigest()
            updates = [telegram.private_message("tell me", user_id=u, username=f"u{u}")
                       for u in users]  # fmt: skip
            statuses = await asyncio.gather(*(
                telegram.post_webhook(update, secret=secret, url=hooks[n % 3])
                for n, update in enumerate(updates)
            ))  # fmt: skip
            assert statuses == [200] * CROWD

            def whole(f: FakeTelegram) -> bool:
                return all([m["text"] for m in f.messages_in(u)] == [STORY] for u in users)

            await telegram.wait_for(whole, timeout=120)
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        assert telegram.count_429() == 0
        assert len(telegram.calls_to("editMessageText")) >= CROWD  # the replies streamed
    assert codes == [0, 0, 0, 0]
    assert procs.tracebacks() == []
