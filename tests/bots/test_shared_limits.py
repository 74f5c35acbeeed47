"""Platform limits shared by every gateway: three gateways posting in one Slack channel, or sending
to one Telegram chat, keep to its one message a second among them (a slot reserved in Redis per
call), so the stand-ins, which hold each to one a second, answer no 429."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Callable

from frontdesk.bots import Channel, Gateway
from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.settings import Settings
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.support import free_port, pipeline

CHANNEL = "C0SUPPORT"
USERS = 9  # each mentions the bot once: nine placeholders posted in one channel, 1.1 s apart


async def three_gateways(
    stack: contextlib.AsyncExitStack,
    settings: Callable[[int], Settings],
    channel: Callable[[Settings], Channel],
) -> list[Gateway]:
    """Three gateways (``settings(n)``, each running ``channel``) sharing one Redis queue, one
    store and one worker, stopped with ``stack``."""
    first = settings(1)
    p = await stack.enter_async_context(
        pipeline(first, FixedReplyBackend("On it."), channels=[channel(first)])
    )
    gateways = [p.gateway]
    for n in (2, 3):
        more = settings(n)
        gateway = Gateway(more, p.queue, p.store, [channel(more)])
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        gateways.append(gateway)
    return gateways


async def test_three_gateways_posting_in_one_channel_keep_its_pace_together(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    async with FakeSlack(rate_limits=True) as slack, contextlib.AsyncExitStack() as stack:

        def settings(n: int) -> Settings:
            return make_settings(
                redis_url=redis_url, queue_prefix=queue_prefix, gateway_id=f"gw-{n}",
                slack_bot_token=slack.bot_token, slack_signing_secret=slack.signing_secret,
                slack_api_url=slack.base_url, http_port=free_port(),
            )  # fmt: skip

        gateways = await three_gateways(stack, settings, SlackChannel)
        mentions = [slack.mention(f"question {n}", user=f"U0USER{n}", channel=CHANNEL)
                    for n in range(USERS)]  # fmt: skip
        urls = [f"http://127.0.0.1:{g.http.port}/slack/events" for g in gateways]
        statuses = await asyncio.gather(*(
            slack.post_event(urls[n % 3], mention) for n, mention in enumerate(mentions)
        ))  # fmt: skip
        assert [status for status, _took in statuses] == [200] * USERS

        def answered(f: FakeSlack) -> bool:
            posts = f.messages_in(CHANNEL)
            return len(posts) == USERS and all(post["text"] == "On it." for post in posts)

        await slack.wait_for(answered, timeout=60)
        assert slack.count_429() == 0  # three gateways, one channel's pace
        posted = sorted(c.at for c in slack.calls_to("chat.postMessage", CHANNEL))
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(posted))


async def test_three_gateways_answering_one_telegram_chat_keep_its_pace_together(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    """Webhook mode, where any gateway takes an update: one chat's messages reach all three,
    and their replies keep the chat's one message a second among them."""
    async with FakeTelegram(rate_limits=True) as telegram, contextlib.AsyncExitStack() as stack:

        def settings(n: int) -> Settings:
            port = free_port()
            return make_settings(
                redis_url=redis_url, queue_prefix=queue_prefix, gateway_id=f"gw-{n}",
                telegram_token=telegram.token, telegram_api_url=telegram.base_url,
                telegram_webhook_url=f"http://127.0.0.1:{port}/hook", http_port=port,
            )  # fmt: skip

        gateways = await three_gateways(stack, settings, TelegramChannel)
        hooks = [g.settings.telegram_webhook_url for g in gateways]
        secret = hashlib.sha256(telegram.token.encode()).hexdigest()
        for n in range(USERS):  # one chat, its messages spread over the three gateways
            update = telegram.private_message(f"question {n}")
            assert await telegram.post_webhook(update, secret=secret, url=hooks[n % 3]) == 200

        await telegram.wait_for(
            lambda f: [m["text"] for m in f.messages_in(1001)] == ["On it."] * USERS, timeout=60
        )
        assert telegram.count_429() == 0
