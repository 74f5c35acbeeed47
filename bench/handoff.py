"""Handoff to a person under load: fifty Telegram customers handed to a Slack desk at once, then
talking with their agents, through the real python-telegram-bot and slack-bolt against the
stand-ins of tests/fakes with their rate limits on (Telegram: one message a second per chat;
Slack: one post a second per channel, and chat.update's budget).

Fifty customers send /human at once: fifty parent messages at the desk (the opening burst, paced
at Slack's one post a second per channel). Then, over ``--minutes``, each customer writes
``--messages`` messages and each agent answers as many times, each at a random moment (uniform
over the window): the customers' messages share the desk channels' one post a second each. Run
for each desk size in ``--desks`` (1,4: one channel, then FRONTDESK_DESK listing four), with the
same customers and moments. Prints, for each:
- the opening burst: how long the fifty threads took to be posted;
- customer message -> its line in the desk thread, p50 and p99 (target p99 <= 1.5 s);
- agent reply -> the customer's chat, p50 and p99 (target p99 <= 1.5 s);
- the 429s each platform answered (target 0).

Usage: python bench/handoff.py [--customers 50] [--messages 2] [--minutes 2] [--desks 1,4]
Run from the repository root (it imports the stand-ins from tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import free_port, pct

from frontdesk.bots import Gateway
from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.queue import LocalQueue
from frontdesk.settings import Settings
from frontdesk.storage import Store
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram

FIRST = 20_000  # the first customer's Telegram user (and chat) id


@dataclass
class Figures:
    burst: float  # seconds for every opening thread to be posted
    to_desk: list[float]  # customer message -> desk thread, seconds
    to_customer: list[float]  # agent reply -> customer, seconds
    telegram_429: int
    slack_429: int


async def run(args: argparse.Namespace, desks: list[str]) -> Figures:
    """Fifty handoffs at the desk channels ``desks``, as the module docstring says."""
    rng = random.Random(7)  # the same moments for every desk size
    customers = [FIRST + n for n in range(args.customers)]
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeTelegram(rate_limits=True) as telegram,
            FakeSlack(rate_limits=True) as slack,
            contextlib.AsyncExitStack() as stack,
        ):
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=f"sqlite+aiosqlite:///{tmp}/bench.db",
                telegram_token=telegram.token, telegram_api_url=telegram.base_url,
                slack_bot_token=slack.bot_token, slack_signing_secret=slack.signing_secret,
                slack_api_url=slack.base_url, http_port=free_port(),
                desk=",".join(f"slack:{desk}" for desk in desks), desk_claim_timeout_s=3600,
            )  # fmt: skip
            store = Store(settings.database_url)
            await store.start(migrate=True)
            stack.push_async_callback(store.stop)
            queue = LocalQueue()
            await queue.start()
            stack.push_async_callback(queue.stop)
            gateway = Gateway(
                settings, queue, store, [TelegramChannel(settings), SlackChannel(settings)]
            )
            await gateway.start()
            stack.push_async_callback(gateway.stop)
            events = f"http://127.0.0.1:{gateway.http.port}/slack/events"

            # the opening burst: every customer asks for a person at once
            started = time.monotonic()
            for customer in customers:
                telegram.private_command("human", user_id=customer, first_name=f"C{customer}")

            def cards() -> dict[str, tuple[str, str]]:  # customer name -> (channel, thread)
                return {
                    post["text"].split(": ", 1)[1].split(" on ")[0]: (desk, post["ts"])
                    for desk in desks
                    for post in slack.messages_in(desk)
                    if not post["thread_ts"]
                }

            await slack.wait_for(lambda f: len(cards()) == len(customers), timeout=600)
            burst = time.monotonic() - started
            threads = cards()

            # then the conversations: each message at a random moment of the window
            window = args.minutes * 60
            said: dict[str, float] = {}  # unique text -> when it was sent
            plan: list[tuple[float, str, int, int]] = []  # (at, who, customer, n)
            for customer in customers:
                for n in range(args.messages):
                    plan.append((rng.uniform(0, window), "customer", customer, n))
                    plan.append((rng.uniform(0, window), "agent", customer, n))
            plan.sort()
            began = time.monotonic()
            for at, who, customer, n in plan:
                await asyncio.sleep(max(0.0, began + at - time.monotonic()))
                text = f"{who} {customer} message {n}"
                said[text] = time.monotonic()
                if who == "customer":
                    telegram.private_message(text, user_id=customer, first_name=f"C{customer}")
                else:
                    desk, thread = threads[f"C{customer}"]
                    envelope = slack.thread_reply(text, thread_ts=thread, user="U0AGENT",
                                                  channel=desk)  # fmt: skip
                    asyncio.create_task(slack.post_event(events, envelope))  # noqa: RUF006

            def arrived() -> dict[str, float]:
                seen: dict[str, float] = {}
                for call in slack.calls_to("chat.postMessage"):
                    if call.status == 200 and call.params.get("channel") in desks:
                        seen.setdefault(str(call.params.get("text", "")).split(": ", 1)[-1],
                                        call.at)  # fmt: skip
                for call in telegram.calls:
                    if call.method == "sendMessage" and call.status == 200:
                        text = str(call.params.get("text", "")).split(": ", 1)[-1]
                        seen.setdefault(text, call.at)
                return seen

            await slack.wait_for(lambda f: set(said) <= set(arrived()), timeout=600)
            seen = arrived()
            return Figures(
                burst,
                [seen[t] - at for t, at in said.items() if t.startswith("customer")],
                [seen[t] - at for t, at in said.items() if t.startswith("agent")],
                telegram.count_429(),
                slack.count_429(),
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=2, help="each way, per handoff")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--desks", default="1,4", help="desk channels, one run per size")
    args = parser.parse_args()
    sizes = [int(n) for n in args.desks.split(",")]

    print(f"handoff: {args.customers} Telegram customers at a Slack desk, {args.messages} "
          f"messages each way per handoff over {args.minutes:g} min")  # fmt: skip
    print("| desk channels | opening burst | customer -> desk p50 / p99 | "
          "agent -> customer p50 / p99 | 429s (Telegram, Slack) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for size in sizes:
        f = await run(args, [f"C0DESK{n}" for n in range(1, size + 1)])
        print(f"| {size} | {f.burst:.1f} s | {pct(f.to_desk, 50):.2f} s / "
              f"{pct(f.to_desk, 99):.2f} s | {pct(f.to_customer, 50):.2f} s / "
              f"{pct(f.to_customer, 99):.2f} s | {f.telegram_429}, {f.slack_429} |", flush=True)  # fmt: skip
    print("targets: p99 <= 1.5 s both ways, 0 429s")


if __name__ == "__main__":
    asyncio.run(main())
